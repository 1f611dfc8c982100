"""The CHAOS engine: worker threads sharing one copy of the weights, each updating it layer by layer without a lock.

The scheme (Viebke et al., J. Supercomputing 2019)
---------------------------------------------------
* T workers share the weights; each has its own activations, error terms and gradients
  (`Module.replicate()` for the layer-by-layer step, private buffers for the fused step).
* Each worker takes the next mini-batch (default: one sample) from a shared counter over this
  epoch's sample order, runs forward and backward, and right after each layer's backward step
  writes that layer's SGD update into the shared weights, with no lock ("controlled Hogwild").
* No barrier between workers inside an epoch ("arbitrary order of synchronization"); the epoch
  ends with a barrier (the workers are joined), then validation on the main thread.
* Options: bounded staleness (a worker waits when it is more than `staleness` updates ahead of
  the slowest: stale synchronous parallel), a deterministic mode (one worker, the layer-by-layer
  step: bit for bit the sequential loop `forward; backward; SGD.step()` over `epoch_order`), and
  under MPI parallel SGD by averaging (Zinkevich et al., NIPS 2010): each rank trains on its share
  of every epoch and the ranks average their weights every `average_every` steps and at the end of
  every epoch.

Two ways to run one step
------------------------
"layers": the model's own layers with a gradient hook that calls `SGD.step_param` for the layer
  that just finished backward. Works for every model and loss; the GIL is held in the Python glue
  between kernel calls, which limits the speedup when the kernels are short.
"fused": a Sequential of Conv2d / Linear / ReLU / LeakyReLU / Max- and AvgPool2d / GlobalAvgPool /
  Flatten with CrossEntropyLoss, compiled to one nogil numba call per chunk of mini-batches
  (`hpcnn.chaos.fused`); the GIL is held only to take the next chunk. "auto" picks "fused" when the
  model allows it and the run is not deterministic.
"""
import copy
import math
import time

import numpy as np

from ..backend import is_device_array
from ..data.dataset import epoch_order
from ..parallel.mpi import Communicator
from . import fused as _fused
from .kernels import train_chunk
from .clock import StalenessClock
from .threads import available_cores, worker_thread_limits
from .evaluate import evaluate, is_classification
from .state import Pauses, apply_pending_momentum, load_momentum_state, momentum_state
from .workers import ChaosWorkerError, Worker, run_workers

__all__ = ["ChaosEngine", "ChaosWorkerError", "fit", "epoch_order", "STEPS"]

STEPS = ("auto", "fused", "layers")


class ChaosEngine:
    """Thread-parallel SGD on one process (and, with `comm`, weight averaging across MPI ranks).

    model: an hpcnn.nn module; loss: nn.CrossEntropyLoss or nn.MSELoss (or any object with
    forward(out, target) -> float and backward() -> dout); see `fit` for the options.
    """

    def __init__(self, model, loss, *, threads=None, batch=1, schedule=None, lr=0.01, momentum=0.0,
                 weight_decay=0.0, nesterov=False, staleness=None, deterministic=False, average_every=None, comm=None, seed=0,
                 step="auto", chunk=64, blas_threads=1):
        if step not in STEPS:
            raise ValueError(f"chaos: step must be one of {', '.join(STEPS)}, received {step!r}")
        if int(batch) != batch or batch < 1:
            raise ValueError(f"chaos: batch must be a positive integer, received {batch!r}")
        if average_every is not None and (int(average_every) != average_every or average_every < 1):
            raise ValueError(f"chaos: average_every must be a positive integer or None, received {average_every!r}")
        if int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chaos: chunk must be a positive integer, received {chunk!r}")
        if any(is_device_array(p) for _, p, _ in model.parameters()):
            raise ValueError("chaos: the CHAOS engine trains on the CPU; the model's parameters are device arrays")
        if comm is not None:
            comm = Communicator.of(comm)
            if comm.size == 1:
                comm = None
        ranks = 1 if comm is None else comm.size
        if deterministic:
            if threads not in (None, 1):
                raise ValueError(f"chaos: the deterministic mode runs one worker thread, received threads={threads}")
            if step == "fused":
                raise ValueError("chaos: the deterministic mode runs the layer-by-layer step, received step='fused'")
            threads, step = 1, "layers"
        if threads is None:
            threads = max(1, available_cores() // ranks)
        if int(threads) != threads or threads < 1:
            raise ValueError(f"chaos: threads must be a positive integer, received {threads!r}")
        StalenessClock(1, staleness)  # validates the bound
        for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0:
                raise ValueError(f"chaos: {key} must be non-negative, received {value!r}")
        if nesterov and not momentum > 0:
            raise ValueError(f"chaos: nesterov needs momentum > 0, received momentum={momentum}")
        self.model, self.loss = model, loss
        self.threads, self.batch = int(threads), int(batch)
        self.schedule, self.lr = schedule, float(lr)
        self.momentum, self.weight_decay, self.nesterov = float(momentum), float(weight_decay), bool(nesterov)
        self.staleness, self.deterministic = staleness, bool(deterministic)
        self.average_every, self.comm, self.seed = average_every, comm, int(seed)
        self.chunk, self.blas_threads = int(chunk), int(blas_threads)
        self.requested_step = step
        self.step = None            # "fused" or "layers", decided in fit() once the sample shape is known
        self.fused_reason = None    # why "auto" fell back to "layers"
        self.epoch = 0              # epochs finished
        self.position = 0           # mini-batches of the current epoch finished (a resume starts mid-epoch)
        self.epoch_stats = None     # (loss sum, correct, samples) of the current epoch before `position`
        self.steps_per_epoch = None  # mini-batches per epoch on the rank with most (set once the data is seen)
        self.pending_momentum = {}  # momentum buffers loaded before the step was chosen (hpcnn.chaos.state)
        self.stopped = False
        self.history = []

    @property
    def global_step(self):
        """Mini-batches done per rank over all epochs: the schedule's step."""
        return self.epoch * (self.steps_per_epoch or 0) + self.position

    def resume_at(self, epoch, position, epoch_stats=None):
        """Continue at mini-batch `position` of epoch `epoch` (a checkpoint's place); epoch_stats: the
        (loss sum, correct, samples) of that epoch's mini-batches before it, for the epoch's metrics."""
        self.epoch, self.position = int(epoch), int(position)
        self.epoch_stats = tuple(epoch_stats) if epoch_stats and position else None

    def state_dict(self):
        """The shared momentum buffers as SGD.state_dict() names them (hpcnn.chaos.state)."""
        return momentum_state(self)

    def load_state_dict(self, state):
        load_momentum_state(self, state)

    def current_stats(self):
        """(loss sum, correct, samples) of the current epoch so far, summed over workers (this rank)."""
        return (float(sum(w.loss_sum for w in self.workers)), int(sum(w.correct for w in self.workers)),
                int(sum(w.samples for w in self.workers)))

    # --- public -------------------------------------------------------------------------------------------
    def fit(self, train, val=None, *, epochs, on_epoch=None, pause_every=None, pause=None, on_pause=None):
        """Train for `epochs` epochs; returns one metrics dict per epoch (also kept in self.history).

        train, val: (x, y) numpy arrays, x: (N, C, ...) in the model's dtype (converted if not), y: the
        loss's targets. With `comm`, every rank passes the whole training set and trains on its share
        (every size-th sample of each epoch's order, starting at its rank). A run continued with
        resume_at() counts the epoch it continues as one of `epochs`.

        Pauses (the workers joined, the model's arrays holding the weights): every `pause_every`
        mini-batches of the schedule's step, at every epoch's end, and when `pause()` (polled by the
        workers; under MPI agreed over ranks at the next weight average) returns True, after which
        fit() stops and sets self.stopped. At each one, on_pause(stopping) is called on this thread;
        under MPI the weights and momentum buffers are averaged over the ranks first.
        """
        if int(epochs) != epochs or epochs < 0:
            raise ValueError(f"chaos: epochs must be a non-negative integer, received {epochs!r}")
        x, y = self._arrays(train, "train")
        val = None if val is None else self._arrays(val, "val")
        self._prepare(x, y)
        if self.step == "fused":
            y = self._fused_labels(y)
            self.net.load_from(self.model)      # the model may have been changed since the last fit()
        apply_pending_momentum(self)
        pauses = Pauses(self, pause_every, pause, on_pause)
        self.stopped = False
        done = []
        with worker_thread_limits(self.blas_threads):
            if self.comm is not None:
                self._average_weights()
            for _ in range(int(epochs)):
                metrics = self._epoch(x, y, val, pauses)
                if metrics is None:         # stopped mid-epoch
                    break
                self.history.append(metrics)
                done.append(metrics)
                if on_epoch is not None:
                    on_epoch(metrics["epoch"], metrics)
                if pauses.at(epoch_end=True, averaged=True):
                    break
        return done

    def evaluate(self, x, y):
        """(mean loss, accuracy or None) of the model on (x, y), in batches on the calling thread."""
        return evaluate(self.model, self.loss, x, y)

    # --- setup --------------------------------------------------------------------------------------------
    def _arrays(self, data, what):
        try:
            x, y = data
        except (TypeError, ValueError):
            raise ValueError(f"chaos: {what} must be a pair (x, y) of arrays, received {type(data).__name__}")
        dtype = next((p.dtype for _, p, _ in self.model.parameters()), np.dtype(np.float32))
        x = np.ascontiguousarray(x, dtype=dtype)
        y = np.ascontiguousarray(y)
        if len(x) != len(y):
            raise ValueError(f"chaos: {what} has {len(x)} inputs but {len(y)} targets")
        if what == "train" and len(x) == 0:
            raise ValueError("chaos: the training set is empty")
        return x, y

    def _prepare(self, x, y):
        if self.step is not None:
            return
        want = self.requested_step
        self.net = None
        if want in ("auto", "fused"):
            try:
                if y.ndim != 1 or y.dtype.kind not in "iu":
                    raise _fused.NotFusable("the fused step takes one integer class label per sample")
                if np.any(y == getattr(self.loss, "ignore_index", None)):
                    raise _fused.NotFusable("the fused step has no ignore_index: every sample needs a class")
                self.net = _fused.FusedNetwork.from_model(self.model, self.loss, x.shape[1:], self.batch)
            except _fused.NotFusable as exc:
                if want == "fused":
                    raise
                self.fused_reason = str(exc)
        self.step = "fused" if self.net is not None else "layers"
        n = math.ceil(math.ceil(len(x) / (1 if self.comm is None else self.comm.size)) / self.batch)
        self.steps_per_epoch = n if self.comm is None else self.comm.allreduce_scalar(int(n), "max")
        self.workers = [Worker(i) for i in range(self.threads)]
        self.optimizer_state = {}
        if self.step == "fused":
            for w in self.workers:
                w.buffers = self.net.workspace()
            self._x_fused_source = None
            # compile (or load from the cache) on this thread, before any worker needs it
            self._fused_call(self.workers[0], x[:0], y[:0], np.zeros(0, np.int64), 0, 0, np.zeros(0))
        else:
            for w in self.workers:
                self._attach_replica(w)

    def _attach_replica(self, worker):
        """Own activations and gradients for one worker; its hook updates the shared weights layer by layer."""
        from ..train.optim import SGD
        replica = self.model.replicate()
        worker.model = replica
        worker.loss = copy.copy(self.loss)
        worker.optimizer = SGD(list(replica.parameters()), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov)
        # one momentum buffer per parameter, shared by the workers as the weights are
        worker.optimizer.state = self.optimizer_state
        names = {}
        for name, module in replica.named_modules():
            if module.params:
                names[id(module)] = [(name + "." if name else "") + key for key in module.params]
        worker.lr = self.lr

        def write_update(module, names=names, worker=worker):
            for name in names[id(module)]:
                worker.optimizer.step_param(name, lr=worker.lr)

        replica.set_grad_hook(write_update)

    def _lr_table(self, start, n_batches):
        if self.schedule is None:
            return np.full(n_batches, self.lr)
        return np.array([self.schedule.lr_at(start + j) for j in range(n_batches)], dtype=np.float64)

    # --- one epoch ----------------------------------------------------------------------------------------
    def _epoch(self, x, y, val, pauses):
        """One epoch from self.position; its metrics, or None when a stop ended it early."""
        epoch, spe = self.epoch, self.steps_per_epoch
        t0 = time.perf_counter()
        order = epoch_order(len(x), epoch, self.seed)
        if self.comm is not None:
            order = order[self.comm.rank::self.comm.size]
        n_batches = math.ceil(len(order) / self.batch)
        lrs = self._lr_table(epoch * spe, n_batches)
        for w in self.workers:
            w.reset()
        if self.epoch_stats:
            w = self.workers[0]
            w.loss_sum, w.correct, w.samples = self.epoch_stats
            self.epoch_stats = None
        train_seconds = 0.0
        max_lead, waits = 0, 0
        for last, average in pauses.segments(self.position, spe):
            first, end = min(self.position, n_batches), min(last, n_batches)
            seconds, clock, reached = self._run_segment(x, y, order, lrs, first, end, pauses.poll)
            train_seconds += seconds
            max_lead, waits = max(max_lead, clock.max_lead), waits + clock.waits
            self.position = last if reached >= end else reached
            if self.comm is not None and average:
                self._average_weights()
            if self.position < spe and pauses.at(epoch_end=False, averaged=average):
                return None
        self.epoch, self.position = epoch + 1, 0
        if self.step == "fused":
            self.net.store_to(self.model)
        loss_sum = sum(w.loss_sum for w in self.workers)
        correct = sum(w.correct for w in self.workers)
        samples = sum(w.samples for w in self.workers)
        if self.comm is not None:
            loss_sum = self.comm.allreduce_scalar(float(loss_sum))
            correct = self.comm.allreduce_scalar(int(correct))
            samples = self.comm.allreduce_scalar(int(samples))
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / samples if samples else float("nan"),
            "train_accuracy": correct / samples if samples and self._classifies(y) else None,
            "samples": samples,
            "train_seconds": train_seconds,
            "images_per_second": samples / train_seconds if train_seconds > 0 else float("nan"),
            "lr": float(lrs[-1]) if len(lrs) else self.lr,
            "threads": self.threads,
            "ranks": 1 if self.comm is None else self.comm.size,
            "step": self.step,
            "updates_per_worker": [w.updates for w in self.workers],
            "kernel_seconds": sum(w.kernel_seconds for w in self.workers),
            "busy_seconds": sum(w.busy_seconds for w in self.workers),
            "cpu_seconds": sum(w.cpu_seconds for w in self.workers),
            "max_lead": max_lead,
            "staleness_waits": waits,
        }
        if val is not None:
            metrics["val_loss"], metrics["val_accuracy"] = self.evaluate(*val)
        metrics["seconds"] = time.perf_counter() - t0
        return metrics

    def _average_weights(self):
        """Parallel SGD by averaging: every rank's weights become the mean over the ranks."""
        size = self.comm.size
        arrays = [self.net.params] if self.step == "fused" else [p for _, p, _ in self.model.parameters()]
        for a in arrays:
            self.comm.allreduce_(a, "sum")
            a *= a.dtype.type(1.0 / size)
        if self.step == "fused":
            self.net.store_to(self.model)

    def _run_segment(self, x, y, order, lrs, first, last, pause=None):
        """Run the workers over mini-batches [first, last) of this epoch; returns (wall seconds, clock, reached)."""
        per_take = self.chunk if self.step == "fused" else 1
        if self.staleness is not None:
            per_take = min(per_take, self.staleness + 1)
        xs = self._fused_inputs(x) if self.step == "fused" else x

        def one(worker, j, count):
            if self.step == "fused":
                self._fused_call(worker, xs, y, order, j, count, lrs[j:j + count])
            else:
                self._layers_call(worker, xs, y, order, j, lrs[j])

        return run_workers(self.workers, self.staleness, per_take, first, last, one, pause)

    def _fused_labels(self, y):
        # the fused step indexes with the labels and has no bounds checks: refuse bad ones here
        classes = self.net.classes
        y = np.ascontiguousarray(y, dtype=np.int64)
        if len(y) and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)][0]
            raise ValueError(f"chaos: label {bad} is outside [0, {classes}) (the model has {classes} outputs)")
        return y

    def _fused_inputs(self, x):
        # the channels-last copy is made once per training set, not once per epoch
        if self._x_fused_source is not x:
            self._x_fused = self.net.prepare_inputs(x)
            self._x_fused_source = x
        return self._x_fused

    def _fused_call(self, worker, xs, y, order, first, count, lrs):
        net = self.net
        act, dact, grad, argmax, seen = worker.buffers
        t = time.perf_counter()
        loss_sum, correct, samples = train_chunk(
            net.layers, net.slopes, net.params, net.velocity, net.started, net.p_span, net.p_shape, act, dact,
            grad, argmax, seen, xs, y, order, self.batch, first, count, lrs, self.momentum, 0.0, self.weight_decay,
            self.nesterov)
        worker.kernel_seconds += time.perf_counter() - t
        worker.loss_sum += loss_sum
        worker.correct += correct
        worker.samples += samples

    def _layers_call(self, worker, x, y, order, j, lr):
        idx = order[j * self.batch:(j + 1) * self.batch]
        xb, yb = x[idx], y[idx]
        worker.lr = lr
        out = worker.model.forward(xb)
        worker.loss_sum += worker.loss.forward(out, yb) * len(idx)
        # fires the gradient hook of every layer with parameters as its backward step ends
        worker.model.backward_and_notify(worker.loss.backward())
        if is_classification(out, yb):
            worker.correct += int(np.sum(out.argmax(axis=1) == yb))
        worker.samples += len(idx)

    def _classifies(self, y):
        return y.ndim == 1 and y.dtype.kind in "iu"


def fit(model, loss, train, val=None, *, epochs, threads=None, batch=1, schedule=None, lr=0.01, momentum=0.0,
        weight_decay=0.0, nesterov=False, staleness=None, deterministic=False, average_every=None, comm=None, seed=0,
        on_epoch=None, step="auto", chunk=64, blas_threads=1):
    """Train `model` with CHAOS worker threads; returns a list of per-epoch metrics dicts.

    model: hpcnn.nn module (its parameter arrays are trained in place); loss: e.g. nn.CrossEntropyLoss();
    train, val: (x, y) numpy arrays. Options:
      threads       workers (default: this process's cores, divided by the ranks of `comm`)
      batch         mini-batch per worker step (1, as in CHAOS)
      schedule      an object with lr_at(step) (hpcnn.train.schedule); step counts this rank's
                    mini-batches over all epochs; otherwise the constant `lr`
      momentum, weight_decay, nesterov   PyTorch's SGD; momentum buffers are shared like the weights
      staleness     None (Hogwild) or s >= 0: a worker never starts an update more than s ahead of
                    the slowest worker's completed count (stale synchronous parallel)
      deterministic one worker, the layer-by-layer step: bit for bit sequential SGD over epoch_order
      comm, average_every   an mpi4py communicator: average weights every k steps and after each epoch
      seed          the sample orders (epoch_order(n, epoch, seed))
      on_epoch      on_epoch(epoch, metrics), called on the calling thread after each epoch's barrier
      step          "auto", "fused" or "layers" (see the module docstring); chunk: the most mini-batches a
                    fused worker takes at a time (takes shrink to one towards the end of a segment, see
                    hpcnn.chaos.workers); blas_threads: the BLAS cap while training (process-wide)
    Metrics per epoch: epoch, train_loss, train_accuracy, samples, train_seconds, images_per_second, lr,
    threads, ranks, step, updates_per_worker, kernel_seconds, busy_seconds, cpu_seconds, max_lead, staleness_waits,
    seconds, and val_loss, val_accuracy when `val` is given.
    """
    engine = ChaosEngine(model, loss, threads=threads, batch=batch, schedule=schedule, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov, staleness=staleness,
                         deterministic=deterministic,
                         average_every=average_every, comm=comm, seed=seed, step=step, chunk=chunk,
                         blas_threads=blas_threads)
    return engine.fit(train, val, epochs=epochs, on_epoch=on_epoch)
