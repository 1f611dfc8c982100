"""The CHAOS engine's optimizer state and its pauses: the shared momentum buffers, in hpcnn.train.optim.SGD's
state_dict format, and the points where the workers stop so that weights and state can be written.

The workers share one momentum buffer per parameter, as they share the weights: SGD's state dict
({name: {"momentum_buffer": array}}) for the layer-by-layer step, one flat `velocity` array (with a `started` flag per parameter) in
the fused layout for the fused step. Both are read and written here as
{"momentum_buffer.<parameter name>": array in PyTorch's layout}, the keys and layout SGD uses, so
a checkpoint holds the same entries whichever engine or step wrote it.
"""
import numpy as np

__all__ = ["PREFIX", "momentum_state", "load_momentum_state", "apply_pending_momentum", "average_momentum",
           "Pauses"]

PREFIX = "momentum_buffer."


def momentum_state(engine):
    """{"momentum_buffer.<name>": a copy of the buffer} of every parameter that has one (none before the first
    update, or without momentum)."""
    if not engine.momentum:
        return {}
    if engine.step is None:                     # not trained yet in this process: what load_momentum_state kept
        return {PREFIX + name: buf.copy() for name, buf in engine.pending_momentum.items()}
    if engine.step == "fused":
        net = engine.net
        return {PREFIX + name: net.velocity_to(name) for j, name in enumerate(net.names) if net.started[j]}
    return {PREFIX + name: st["momentum_buffer"].copy() for name, st in engine.optimizer_state.items()
            if "momentum_buffer" in st}


def load_momentum_state(engine, state):
    """Restore buffers saved by momentum_state(); names, shapes and dtypes must be the model's (ValueError)."""
    params = {name: p for name, p, _ in engine.model.parameters()}
    buffers = {}
    for key, value in state.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else None
        if name not in params:
            raise ValueError(f"chaos: optimizer state {key!r} names no parameter of this model")
        value = np.asarray(value)
        if value.shape != params[name].shape:
            raise ValueError(f"chaos: optimizer state {key!r} has shape {value.shape}, the parameter has "
                             f"{params[name].shape}")
        buffers[name] = value.astype(params[name].dtype, copy=True)
    if not engine.momentum:
        buffers = {}        # as SGD: a run continued without momentum has no use for the buffers
    engine.pending_momentum = buffers
    if engine.step is not None:
        apply_pending_momentum(engine)


def apply_pending_momentum(engine):
    """Copy the loaded buffers into the running engine's shared ones (once the step is chosen)."""
    buffers, engine.pending_momentum = engine.pending_momentum, {}
    if not buffers:
        return
    if engine.step == "fused":
        net = engine.net
        net.velocity[...] = 0
        net.started[...] = 0
        for j, name in enumerate(net.names):
            if name in buffers:
                net.param_view(j, net.velocity)[...] = net.to_fused(j, buffers[name])
                net.started[j] = 1
    else:
        # the workers' optimizers hold this very dict ({name: {"momentum_buffer": array}}): update it in place
        engine.optimizer_state.clear()
        engine.optimizer_state.update({name: {"momentum_buffer": buf} for name, buf in buffers.items()})


def average_momentum(engine):
    """Under MPI: every rank's momentum buffers become the mean over the ranks (with the weights, at a checkpoint)."""
    comm = engine.comm
    arrays = [engine.net.velocity] if engine.step == "fused" else \
        [st["momentum_buffer"] for st in engine.optimizer_state.values() if "momentum_buffer" in st]
    for a in arrays:
        comm.allreduce_(a, "sum")
        a *= a.dtype.type(1.0 / comm.size)


class Pauses:
    """Where a ChaosEngine.fit() pauses (see its docstring): every `every` steps, at epoch ends, on `poll()`."""

    def __init__(self, engine, every, poll, on_pause):
        self.engine = engine
        self.every = int(every) if every else None
        self._poll = poll
        self.on_pause = on_pause
        # under MPI the ranks agree on a stop at the segment ends only: workers do not stop mid-segment
        self.poll = poll if engine.comm is None else None

    def segments(self, start, spe):
        """[(last, average)]: the ends of the segments of an epoch run from mini-batch `start` (of `spe`, the same
        on every rank), at every weight average (MPI, `average_every`) and every pause point (a multiple of
        `self.every` in the schedule's step); `average`: the weights are averaged there (under MPI)."""
        e = self.engine
        ends = {spe: True}
        if e.comm is not None and e.average_every is not None:
            ends.update((j, True) for j in range(int(e.average_every), spe, int(e.average_every)))
        if self.every:
            base = e.epoch * spe
            first = base + start + (-(base + start)) % self.every
            ends.update((g - base, ends.get(g - base, False)) for g in range(first, base + spe, self.every)
                        if g - base > start)
        return sorted((j, avg) for j, avg in ends.items() if j > start)

    def at(self, epoch_end, averaged):
        """Called at every segment end (mid-epoch) and epoch end; returns True when fit() stops here."""
        e = self.engine
        stopping = bool(self._poll()) if self._poll is not None else False
        if e.comm is not None:
            stopping = bool(e.comm.allreduce_scalar(int(stopping), "max"))
        due = epoch_end or stopping or (self.every is not None and e.global_step % self.every == 0)
        if not due:
            return False
        if e.comm is not None:
            if not averaged:
                e._average_weights()
            average_momentum(e)
        elif e.step == "fused" and not epoch_end:
            e.net.store_to(e.model)
        if self.on_pause is not None:
            self.on_pause(stopping)
        e.stopped = stopping
        return stopping
