"""Per-layer timing of a distributed model: wall seconds of every leaf layer's forward and backward, and the
communication seconds inside them by kind.

Each leaf's forward and backward are wrapped; a call records its wall time (on a GPU, up to the end of its
kernels: the probe synchronizes the stream after each call) and the difference of
its Communicator's clock (`hpcnn.parallel.mpi.Clock`; kinds halo, collective, shuffle,
gradient_allreduce) across it. A layer's compute is its wall time less its communication.
Shuffles that containers run between their children (a residual's shortcut joining the body's
grid) and the gradient-allreduce wait after backward fall outside every leaf: a whole
iteration's clock difference (`comm.clock.snapshot()` before and after) measures them.

    probe = LayerProbe(dm)               # wraps the leaves of dm in place
    ... iterations ...; probe.clear()    # drop the warm-up
    ... timed iterations ...
    table = probe.summary(comm)          # {leaf name: {...}}, the slowest rank's medians, on every rank
"""
import statistics
import time

from ..parallel.mpi import KINDS, Clock

__all__ = ["LayerProbe", "KINDS", "training_step"]


class LayerProbe:
    """Wraps every leaf of DistModel `dm` to record its calls (by the leaf's dotted name in the model).

    Per call: wall seconds, communication seconds by kind, CPU seconds of the rank's process and seconds on
    `clock` (default the CPU time; the calibration passes its kernels' clock). `summary`
    gives, per leaf name, forward_s, backward_s (wall, median over the recorded iterations) and halo_s,
    collective_s, shuffle_s (forward + backward, medians), compute_s (the rest), from the rank slowest at that
    layer, and cpu_s: forward + backward CPU seconds (medians) of the rank with the most (on a machine shared
    with other processes, the time dedicated cores would take: MPI waits by polling, which counts);
    `local_summary` adds forward_clock_s and backward_clock_s, this rank's medians on `clock`.
    """

    def __init__(self, dm, clock=time.process_time):
        leaves = dm.root.leaves()
        self.names = [m.name for m in leaves]
        self.calls = {}
        self.clock = clock
        for module in leaves:
            self._wrap(module, module.name, module.d.comm.clock)

    def _wrap(self, module, name, clock):
        own = self.clock
        calls = self.calls.setdefault(name, {"forward": [], "backward": []})
        for direction in ("forward", "backward"):
            inner = getattr(module, direction)

            def timed(t, inner=inner, record=calls[direction]):
                before = clock.snapshot()
                c0 = time.process_time()
                k0 = own()
                t0 = time.perf_counter()
                out = inner(t)
                _wait_for_device(out.local)
                wall = time.perf_counter() - t0
                record.append((wall, Clock.difference(before, clock.snapshot()), time.process_time() - c0,
                               own() - k0))
                return out
            setattr(module, direction, timed)

    def clear(self):
        for calls in self.calls.values():
            calls["forward"].clear()
            calls["backward"].clear()

    def local_summary(self):
        """This rank's medians per leaf (see the class docstring)."""
        out = {}
        for name in self.names:
            c = self.calls[name]
            fwd = statistics.median(w for w, _, _, _ in c["forward"]) if c["forward"] else 0.0
            bwd = statistics.median(w for w, _, _, _ in c["backward"]) if c["backward"] else 0.0
            entry = {"forward_s": fwd, "backward_s": bwd,
                     "cpu_s": sum(statistics.median(u for _, _, u, _ in c[direction])
                                  for direction in ("forward", "backward") if c[direction])}
            for kind in ("halo", "collective", "shuffle"):
                entry[f"{kind}_s"] = sum(statistics.median(d[kind] for _, d, _, _ in c[direction])
                                         for direction in ("forward", "backward") if c[direction])
            for direction in ("forward", "backward"):
                entry[f"{direction}_clock_s"] = (statistics.median(k for _, _, _, k in c[direction])
                                                 if c[direction] else 0.0)
            entry["compute_s"] = max(fwd + bwd - entry["halo_s"] - entry["collective_s"] - entry["shuffle_s"], 0.0)
            out[name] = entry
        return out

    def summary(self, comm):
        """(comm: the Communicator of the model's ranks.) Per leaf, the entry of the rank whose forward + backward took longest, on every rank (a collective).

        Whole entries, not field-by-field maxima: a rank waiting for a slower neighbour shows the wait as
        halo or collective time, while the slower rank shows the compute that made it wait; the layer's
        time is the slower rank's, and its parts add up to it."""
        every = comm.allgather_object(self.local_summary())
        out = {name: dict(max((r[name] for r in every), key=lambda e: e["forward_s"] + e["backward_s"]))
               for name in self.names}
        for name in self.names:
            out[name]["cpu_s"] = max(r[name]["cpu_s"] for r in every)
        return out


def _wait_for_device(array):
    """On a GPU, wait for the layer's kernels, so that its wall time is its own (a no-op on the CPU)."""
    from ..backend import array_module, is_device_array
    if is_device_array(array):
        array_module(array).cuda.get_current_stream().synchronize()


def training_step(dm, xt, momentum, lr=1e-4):
    """One iteration as the performance model counts it: forward, backward of a gradient of ones (the
    loss is left out, as in the model), the bucketed gradient allreduce, and SGD with momentum 0.9.

    momentum: {parameter name: buffer} (zeros at first), updated in place.
    """
    from ..backend import array_module
    y = dm.forward(xt)
    dm.backward(y.like(array_module(y.local).ones_like(y.local)))
    for name, p, g in dm.parameters():
        buf = momentum[name]
        buf *= 0.9
        buf += g
        p -= lr * buf
