"""The training loop: one job on one process, on MPI ranks (hpcnn.dist), or on CHAOS threads.

Engines (distribution.engine):
- "spatial" (default): a single process trains the plain model; with a grid, a plan, or more
  than one rank, the model is wrapped by hpcnn.dist and every rank reads only its block of
  each batch (its samples, its spatial block).
- "chaos": hpcnn.chaos.fit, threads sharing one copy of the weights (CPU only; whole samples).
- "auto": "chaos" when there is no GPU, no grid or plan is asked for, the job runs on one rank
  and the task is classification; "spatial" otherwise.

What makes a run on P ranks follow the run on one process, step for step: the epoch's sample
order is a permutation drawn from (training.seed, epoch) alone, identical on every rank; a
step's global batch is the same B samples whatever the grid; the loss is the mean over the
global batch, and the gradients are summed over ranks by hpcnn.dist. The same rule makes
--resume exact: a checkpoint records the step, and the order of any epoch can be drawn again.

Stops: SIGTERM or SIGUSR1 (SLURM's warning before the time limit) set a flag that is checked
between steps (agreed over ranks), then a checkpoint is written and the run exits cleanly;
a non-finite loss stops the run with a message and writes no checkpoint, so the last good one
is kept. The chaos engine checkpoints at its end; --resume restores its weights and optimizer
state and runs the epochs that are left (its threads' sample order is its own), and it does
not stop on signals mid-run.
"""
import math
import os
import signal
import sys
import time

import numpy as np

from .. import data as hdata
from .. import nn
from ..backend import gpu_available
from ..data.dataset import epoch_order
from ..nn import models
from . import checkpoint as ckpt
from .config import JobError, load_job
from .metrics import ConfusionCounts, MetricsLog, Progress, format_duration
from .optim import SGD
from .schedule import build_schedule

__all__ = ["Trainer", "TrainingDiverged", "train", "command", "choose_engine", "launched_ranks"]

_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# Environment variables that MPI launchers (MPICH/Hydra, Open MPI, SLURM's PMI/PMIx) set in every rank.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class TrainingDiverged(RuntimeError):
    """The loss became nan or infinite; the last good checkpoint is kept."""


def launched_ranks():
    """True when this process was started by an MPI launcher (mpiexec, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def choose_engine(job, ranks):
    """The engine that runs `job` on `ranks` ranks ("spatial" or "chaos"); see the module docstring."""
    dist = job["distribution"]
    engine = dist["engine"]
    if engine != "auto":
        return engine
    spatial_asked = dist["plan"] or dist["grid"] not in (None, "auto")
    if gpu_available() or spatial_asked or ranks > 1:
        return "spatial"
    task = _task_of(job)
    return "chaos" if task == "classify" else "spatial"


def _task_of(job):
    d = job["data"]
    if d["dataset"] in ("digits",):
        return "classify"
    if d["dataset"] == "textures":
        return d["options"]["task"]
    if d["dataset"] == "fields3d":
        return "regress"
    return d["options"].get("task") or "unknown"


def auto_grid(ranks, batch, spatial_shape):
    """The grid of `grid = "auto"`: split the batch when every rank gets whole samples of a small image;
    split space (as square as possible, over the last axes) when samples are large (>= 256^2 pixels
    or 64^3 voxels) or the batch is smaller than the ranks."""
    nd = len(spatial_shape)
    pixels = int(np.prod(spatial_shape))
    large = pixels >= (256 * 256 if nd == 2 else 64 ** 3)
    if ranks == 1:
        return (1,) * (nd + 1)
    if not large and batch % ranks == 0:
        return (ranks,) + (1,) * nd
    # split the spatial axes: give factors of `ranks` to the currently least split longest axis
    grid = [1] * nd
    rest = ranks
    for f in _prime_factors(rest):
        k = max(range(nd), key=lambda a: (spatial_shape[a] / grid[a], a))
        grid[k] *= f
    return (1,) + tuple(grid)


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return sorted(out, reverse=True)


class _World:
    """The ranks of this job: an MPI communicator via hpcnn.dist.comm, or one process without MPI."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None and launched_ranks():
            from ..dist import comm as dcomm
            dcomm.install_abort_on_error()
            self.comm = dcomm.world()
        self.rank = self.comm.Get_rank() if self.comm is not None else 0
        self.size = self.comm.Get_size() if self.comm is not None else 1

    @property
    def _c(self):
        from ..dist import comm as dcomm
        return dcomm

    def sum(self, value):
        return self._c.allreduce_scalar(self.comm, value, "sum") if self.size > 1 else value

    def max(self, value):
        return self._c.allreduce_scalar(self.comm, value, "max") if self.size > 1 else value

    def sum_array(self, array):
        if self.size > 1:
            self._c.allreduce_(self.comm, array, "sum")
        return array

    def barrier(self):
        if self.size > 1:
            self._c.barrier(self.comm)

    def agree(self, fn):
        """Run fn() on every rank; if it raises a JobError-like error on any rank, raise it on all.

        Setup errors (a bad field, a missing file on one node) are reported once, by every rank
        alike, instead of leaving the healthy ranks waiting in a collective.
        """
        try:
            result, error = fn(), None
        except (JobError, hdata.DataError, ckpt.CheckpointError) as e:
            result, error = None, e
        if self.size > 1:
            errors = self._c.allgather_object(self.comm, None if error is None else (type(error).__name__, str(error)))
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                rank = errors.index(first)
                raise JobError(first[1] if error is not None or rank == 0 else f"rank {rank}: {first[1]}")
        elif error is not None:
            raise error
        return result

    def abort(self, message):
        if self.size > 1:
            self._c.abort(message, comm=self.comm)
        raise RuntimeError(message)


class Trainer:
    """One training run of a validated Job (hpcnn.train.config.Job).

    trainer = Trainer(job, resume=None | "latest" | PATH, comm=None); summary = trainer.run()
    """

    def __init__(self, job, resume=None, comm=None, stream=None, restart=False):
        self.job = job
        self.resume = resume
        self.restart = restart
        self.world = _World(comm)
        self.stream = stream or sys.stdout
        self._stop_signal = None
        self.history = []

    # --- setup (every rank, before any work) -------------------------------------------------
    def _setup(self):
        job = self.job
        tr = job["training"]
        self.dtype = np.dtype(tr["dtype"])
        self.engine = choose_engine(job, self.world.size)
        d = job["data"]
        try:
            self.train_set = hdata.open_dataset(d["dataset"], "train", seed=d["seed"], **d["options"])
            self.val_set = hdata.open_dataset(d["dataset"], "val", seed=d["seed"], **d["options"])
        except hdata.DataError as e:
            raise JobError(f"job file {job.path}: data: {e}") from None
        if self.val_set.sample_shape != self.train_set.sample_shape:
            raise JobError(f"job file {job.path}: data: training samples {self.train_set.sample_shape} and "
                           f"validation samples {self.val_set.sample_shape} differ in shape")
        self.task = self.train_set.task
        self.batch = tr["batch"]
        if self.engine != "chaos" and self.batch > len(self.train_set):
            raise JobError(f"job file {job.path}: training.batch = {self.batch} exceeds the "
                           f"{len(self.train_set)} training samples")
        self.steps_per_epoch = max(len(self.train_set) // self.batch, 1)
        self.total_steps = tr["steps"] or tr["epochs"] * self.steps_per_epoch
        self.model = self._build_model()
        self.loss = nn.MSELoss() if self.task == "regress" else nn.CrossEntropyLoss()
        self.distribution = None
        self.net = self.model
        if self.engine == "spatial":
            self._setup_distribution()
        opt = tr["optimizer"]
        self.optimizer = SGD(self.net, lr=opt["lr"], momentum=opt["momentum"], nesterov=opt["nesterov"],
                             weight_decay=opt["weight_decay"])
        spec = dict(tr["schedule"])
        if spec.get("name") == "cosine":
            spec.setdefault("total_steps", self.total_steps)
        try:
            self.schedule = build_schedule(spec)
        except (ValueError, TypeError) as e:
            raise JobError(f"job file {job.path}: training.schedule: {e}") from None
        self.step = 0
        if self.resume:
            self._load_checkpoint()
        else:
            earlier = ckpt.list_checkpoints(job["checkpoint"]["dir"])
            if earlier and not self.restart:
                raise JobError(f"job file {job.path}: checkpoint.dir {job['checkpoint']['dir']} holds checkpoints "
                               f"of an earlier run (newest: step {earlier[-1][0]}); continue that run with --resume, "
                               "or start over with --restart (which deletes them)")

    def _build_model(self):
        job, ds = self.job, self.train_set
        name = job["model"]["name"]
        given = dict(job["model"]["options"])
        known = models.options(name)
        derived = {"in_channels": ds.in_channels, "seed": job["training"]["seed"], "dtype": self.dtype}
        if self.task == "regress":
            derived["num_outputs"] = ds.num_classes
        else:
            derived["num_classes"] = ds.num_classes
        if "input_size" in known and len(set(ds.spatial_shape)) == 1:
            derived["input_size"] = ds.spatial_shape[0]
        for key, value in derived.items():
            if key not in known:
                continue
            if key in given and key not in ("seed",) and given[key] != value:
                what = {"in_channels": "channels", "num_classes": "classes", "num_outputs": "targets",
                        "input_size": "pixels per side"}[key]
                raise JobError(f"job file {job.path}: model.{key} = {given[key]!r}, but dataset "
                               f"{job['data']['dataset']} has {value} {what}")
            given.setdefault(key, value)
        try:
            return models.build(name, **given)
        except (ValueError, TypeError) as e:
            raise JobError(f"job file {job.path}: model: {e}") from None

    def _setup_distribution(self):
        dist_cfg = self.job["distribution"]
        grid, plan = dist_cfg["grid"], dist_cfg["plan"]
        trivial = grid in (None, "auto") or all(g == 1 for g in grid)
        if self.world.size == 1 and not plan and trivial:
            return  # one process: the plain model
        if self.world.comm is None:
            from ..dist import comm as dcomm
            self.world = _World(dcomm.world())
        from .. import dist
        nd = len(self.train_set.spatial_shape)
        comm = self.world.comm
        try:
            if plan:
                self.plan = dist.Plan.load(plan)
                self.net = dist.distribute(self.model, plan=self.plan, comm=comm)
                first = dist.leaf_layers(self.model)[0][0]
                self.distribution = dist.Distribution(comm, self.plan.grid_for(first))
                self.dist_loss = dist.distribute(self.loss, plan=self.plan, comm=comm)
            else:
                if grid in (None, "auto"):
                    grid = auto_grid(self.world.size, self.batch, self.train_set.spatial_shape)
                if len(grid) != nd + 1:
                    raise JobError(f"job file {self.job.path}: distribution.grid {list(grid)} has {len(grid)} "
                                   f"entries; {nd}-D samples need {nd + 1} (N, {'D, ' if nd == 3 else ''}H, W)")
                places = int(np.prod(grid))
                if places != self.world.size:
                    raise JobError(f"job file {self.job.path}: distribution.grid {list(grid)} needs {places} ranks, "
                                   f"the job runs on {self.world.size}: start it with mpiexec -n {places}, or choose "
                                   "another grid (--grid, --set distribution.grid=...)")
                self.distribution = dist.Distribution(comm, tuple(grid))
                self.net = dist.distribute(self.model, self.distribution)
                self.dist_loss = dist.distribute(self.loss, self.distribution)
        except JobError:
            raise
        except (ValueError, OSError) as e:
            raise JobError(f"job file {self.job.path}: distribution: {e}") from None
        if self.batch < self.distribution.grid[0]:
            raise JobError(f"job file {self.job.path}: training.batch = {self.batch} is smaller than the "
                           f"{self.distribution.grid[0]} parts the grid splits the batch into")

    # --- checkpoints --------------------------------------------------------------------------
    def _arrays(self):
        out = {f"param/{name}": p for name, p, _ in self.net.parameters()}
        out.update({f"state/{name}": s for name, s in self.model.state()})
        out.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        return out

    def _header(self):
        return {
            "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "step_in_epoch": self.step % self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch,
            "order_seed": self.job["training"]["seed"], "ranks": self.world.size,
            "grid": list(self.distribution.grid) if self.distribution is not None else None,
            "model": self.job["model"]["name"], "job": self.job.to_dict(), "job_path": self.job.path,
        }

    def save_checkpoint(self):
        """Write a checkpoint of the current step (rank 0 writes; parameters are global)."""
        bad = [name for name, p, _ in self.net.parameters() if not np.all(np.isfinite(p))]
        if bad:
            raise TrainingDiverged(f"parameter {bad[0]} is not finite at step {self.step}; no checkpoint written")
        path = None
        if self.world.rank == 0:
            c = self.job["checkpoint"]
            path = ckpt.save(c["dir"], self.step, self._arrays(), self._header(), keep=c["keep"])
            self.log.write("checkpoint", step=self.step, path=path)
        self.world.barrier()
        return path or ckpt.checkpoint_path(self.job["checkpoint"]["dir"], self.step)

    def _load_checkpoint(self):
        folder = self.job["checkpoint"]["dir"]
        path = ckpt.latest(folder) if self.resume in (True, "latest") else self.resume
        if path is None:
            raise JobError(f"job file {self.job.path}: --resume: no checkpoint in {folder}")
        arrays, header = ckpt.load(path)
        where = f"checkpoint {path}"
        if header.get("model") != self.job["model"]["name"]:
            raise ckpt.CheckpointError(f"{where} holds model {header.get('model')!r}, the job trains "
                                       f"{self.job['model']['name']!r}")
        targets = [(f"param/{n}", p) for n, p, _ in self.net.parameters()] + \
                  [(f"state/{n}", s) for n, s in self.model.state()]
        for key, target in targets:
            if key not in arrays:
                raise ckpt.CheckpointError(f"{where} has no {key}: it was written for another model")
            if arrays[key].shape != tuple(target.shape):
                raise ckpt.CheckpointError(f"{where}: {key} has shape {arrays[key].shape}, the model's is "
                                           f"{tuple(target.shape)}")
            target[...] = arrays[key]
        try:
            self.optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        except ValueError as e:
            raise ckpt.CheckpointError(f"{where}: optimizer state: {e}") from None
        if header.get("steps_per_epoch") != self.steps_per_epoch or header.get("order_seed") != \
                self.job["training"]["seed"]:
            raise ckpt.CheckpointError(
                f"{where} was written with {header.get('steps_per_epoch')} steps per epoch and seed "
                f"{header.get('order_seed')}; this job has {self.steps_per_epoch} and {self.job['training']['seed']} "
                "(training.batch, data or training.seed changed): it cannot continue the same run")
        self.step = int(header["step"])
        self.resumed_from = path

    # --- one step -------------------------------------------------------------------------------
    def _inputs(self, dataset, idx):
        """The inputs of samples idx: the whole array, or this rank's block as a DistTensor."""
        if self.distribution is None:
            return dataset.inputs(idx).astype(self.dtype, copy=False)
        from .. import dist
        d = self.distribution
        shape = (len(idx), dataset.in_channels) + dataset.spatial_shape
        sl = d.local_slices(shape)
        x = dataset.inputs(idx[sl[0]], sl[2:]).astype(self.dtype, copy=False)
        return dist.DistTensor(x, d, shape)

    def _labels(self, dataset, idx, d=None):
        """The labels of samples idx: the whole array, or the block of them that distribution d gives this rank."""
        if d is None:
            return self._cast_labels(dataset.labels(idx))
        from .. import dist
        shape = (len(idx),) + dataset.label_shape()
        sl = d.local_slices(shape)
        spatial = sl[1:] if self.task == "segment" else None
        y = self._cast_labels(dataset.labels(idx[sl[0]], spatial))
        if self.task == "regress":
            y = np.ascontiguousarray(y[(slice(None),) + sl[1:]])
        return dist.DistTensor(y, d, shape)

    def _cast_labels(self, y):
        return y.astype(self.dtype, copy=False) if self.task == "regress" else y

    def _train_step(self, idx, lr):
        x = self._inputs(self.train_set, idx)
        out = self.net.forward(x)
        if self.distribution is None:
            loss = self.loss.forward(out, self._labels(self.train_set, idx))
            self.net.backward(self.loss.backward())
        else:
            loss = self.dist_loss.forward(out, self._labels(self.train_set, idx, self.dist_loss.d))
            self.net.backward(self.dist_loss.backward())
        self.optimizer.step(lr=lr)
        return loss

    # --- validation -----------------------------------------------------------------------------
    def validate(self):
        """Validation scores over the whole validation set: loss and accuracy / pixel accuracy and
        mean IoU / mse, each over every sample (and pixel) exactly once."""
        ds = self.val_set
        B = self.job["training"]["val_batch"] or self.batch
        if self.distribution is not None:
            B = max(B, self.distribution.grid[0])
        self.model.eval()
        counts = ConfusionCounts(ds.num_classes) if self.task != "regress" else None
        sums = np.zeros(2, np.float64)  # loss sum, element count
        from .. import kernels
        for start in range(0, len(ds), B):
            idx = np.arange(start, min(start + B, len(ds)))
            real = len(idx)
            if self.distribution is not None and real < self.distribution.grid[0]:
                idx = np.concatenate([idx, np.full(self.distribution.grid[0] - real, idx[-1])])
            out = self.net.forward(self._inputs(ds, idx))
            rows = np.arange(len(idx))
            if self.distribution is None:
                y = self._labels(ds, idx)
            else:
                d = out.distribution
                y = self._labels(ds, idx, d).local
                rows = rows[d.local_slices(out.global_shape)[0]]
                out = out.local
                if d.is_replicated(out.ndim) and any(c != 0 for c in d.coords[1:]):
                    rows, out, y = rows[:0], out[:0], y[:0]  # replicated rows count once, on each spatial group's first rank
            keep = rows < real
            out, y = out[keep], y[keep]
            if self.task == "regress":
                sums += (float(np.sum((out.astype(np.float64) - y) ** 2)), out.size)
            elif len(y):
                loss_sum, _, count = kernels.softmax_cross_entropy(np.ascontiguousarray(out), np.ascontiguousarray(y))
                sums += (float(loss_sum), count)
                counts.add(out, y)
        self.model.train()
        self.world.sum_array(sums)
        result = {"loss": float(sums[0] / sums[1]) if sums[1] else float("nan")}
        if self.task == "regress":
            result["mse"] = result["loss"]
        else:
            self.world.sum_array(counts.counts)
            if self.task == "segment":
                result["pixel_accuracy"] = counts.accuracy()
                result["mean_iou"] = counts.mean_iou()
            else:
                result["accuracy"] = counts.accuracy()
        return result

    # --- signals -------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._stop_signal = signal.Signals(signum).name

    def _install_signals(self):
        self._previous = {}
        for name in _STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._previous[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread: signals stay with the caller
                    pass

    def _restore_signals(self):
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    # --- the run --------------------------------------------------------------------------------
    def run(self):
        """Train to the end (or to a stop signal); returns the summary dict."""
        self.world.agree(self._setup)
        if self.restart and not self.resume and self.world.rank == 0:
            for _, path in ckpt.list_checkpoints(self.job["checkpoint"]["dir"]):
                os.unlink(path)
        self.world.barrier()
        job = self.job
        rank0 = self.world.rank == 0
        lg = job["logging"]
        self.log = MetricsLog(os.path.join(lg["dir"], lg["metrics"]), enabled=rank0, append=bool(self.resume))
        self.progress = Progress(self.total_steps, self.steps_per_epoch, self.batch, every=lg["every"],
                                 enabled=rank0 and lg["progress"], stream=self.stream, first_step=self.step)
        n_params = sum(int(p.size) for _, p, _ in self.model.parameters())
        grid = list(self.distribution.grid) if self.distribution is not None else None
        self.log.write("start", job=job.to_dict(), job_path=job.path, engine=self.engine, ranks=self.world.size,
                       grid=grid, parameters=n_params, train=self.train_set.describe(), val=self.val_set.describe(),
                       resumed_from=getattr(self, "resumed_from", None), first_step=self.step)
        where = f"on {self.world.size} rank{'s' if self.world.size > 1 else ''}" + (f", grid {grid}" if grid else "")
        self.progress.say(f"hpcnn train {job.path}: {job['model']['name']} ({n_params:,} parameters) on "
                          f"{self.train_set.describe()}; engine {self.engine} {where}; "
                          f"{self.total_steps} steps of batch {self.batch}"
                          + (f"; resumed at step {self.step} from {self.resumed_from}" if self.step else ""))
        self._install_signals()
        try:
            if self.engine == "chaos":
                return self._run_chaos()
            return self._run_spatial()
        finally:
            self._restore_signals()
            self.log.close()

    def _due(self, every, epoch_end):
        return (every and self.step % every == 0) or (not every and epoch_end)

    def _run_spatial(self):
        tr, ck = self.job["training"], self.job["checkpoint"]
        t0 = time.perf_counter()
        images = 0
        order, order_epoch = None, None
        val = {}
        stopped = None
        self.model.train()
        while self.step < self.total_steps:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            if order_epoch != epoch:
                order, order_epoch = epoch_order(len(self.train_set), epoch, tr["seed"]), epoch
            idx = order[k * self.batch:(k + 1) * self.batch]
            lr = self.schedule.lr_at(self.step)
            try:
                loss = self._train_step(idx, lr)
            except Exception as e:
                if self.world.size > 1:
                    self.world.abort(f"step {self.step + 1}: {type(e).__name__}: {e}")
                raise
            self.step += 1
            images += len(idx)
            if not math.isfinite(loss):
                self._diverged(loss)
            rate = self.progress.update(self.step, loss, lr)
            if rate is not None:
                self.log.write("train", step=self.step, epoch=epoch + 1, loss=loss, lr=lr, images_per_s=rate)
            epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
            if self._due(tr["val_every"], epoch_end):
                val = self.validate()
                self.history.append({"step": self.step, "epoch": epoch + 1, "train_loss": loss, **val})
                self.log.write("val", step=self.step, epoch=epoch + 1, **val)
                self.progress.say(f"validation at step {self.step} (epoch {epoch + 1}): "
                                  + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if self.step < self.total_steps and self._due(ck["every"], epoch_end):
                self.save_checkpoint()
            stop = self.world.max(1 if self._stop_signal else 0)
            if stop:
                stopped = self._stop_signal or "a stop signal on another rank"
                break
        path = self.save_checkpoint()
        seconds = time.perf_counter() - t0
        if stopped:
            self.log.write("stop", step=self.step, reason=stopped, checkpoint=path)
            self.progress.say(f"received {stopped}: checkpoint written at step {self.step} to {path}; "
                              f"continue with: hpcnn train {self.job.path} --resume")
        summary = {"steps": self.step, "epochs": self.step / self.steps_per_epoch, "seconds": seconds,
                   "images_per_s": images / seconds if seconds > 0 else float("nan"),
                   "stopped": stopped, "checkpoint": path, **{f"val_{k}": v for k, v in val.items()}}
        self.log.write("summary", **summary)
        self._say_summary(summary)
        self.summary = summary
        return summary

    def _diverged(self, loss):
        last = ckpt.latest(self.job["checkpoint"]["dir"])
        message = (f"training stopped: the loss is {loss} at step {self.step} (epoch "
                   f"{(self.step - 1) // self.steps_per_epoch + 1}); "
                   + (f"the last good checkpoint is {last}: continue from it with --resume" if last
                      else "no checkpoint was written before it")
                   + ", perhaps with a lower training.optimizer.lr")
        self.log.write("stop", step=self.step, reason="nonfinite loss", loss=loss, checkpoint=last)
        raise TrainingDiverged(message)

    def _say_summary(self, s):
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in s.items() if k.startswith("val_"))
        self.progress.say(f"done: {s['steps']} steps ({s['epochs']:.2f} epochs) in {format_duration(s['seconds'])}, "
                          f"{s['images_per_s']:,.1f} img/s" + (f"; validation: {scores}" if scores else "")
                          + f"; metrics in {self.log.path}")

    def _run_chaos(self):
        from .. import chaos
        tr, dist_cfg = self.job["training"], self.job["distribution"]
        if tr["steps"]:
            raise JobError(f"job file {self.job.path}: training.steps: the chaos engine trains by epochs; "
                           "give training.epochs")
        t0 = time.perf_counter()
        train = self.train_set.read(np.arange(len(self.train_set)))
        val = self.val_set.read(np.arange(len(self.val_set)))
        train = (train[0].astype(self.dtype, copy=False), self._cast_labels(train[1]))
        val = (val[0].astype(self.dtype, copy=False), self._cast_labels(val[1]))
        opt = tr["optimizer"]

        def on_epoch(epoch, metrics):
            metrics = dict(metrics)
            self.history.append({"epoch": epoch, **metrics})
            self.log.write("val", epoch=epoch, **{k: v for k, v in metrics.items()
                                                  if k != "epoch" and isinstance(v, (int, float, str))})
            shown = ("train_loss", "val_loss", "val_accuracy", "images_per_second", "lr")
            self.progress.say(f"epoch {epoch}/{tr['epochs']}: " + ", ".join(
                f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                for k in shown if k in metrics))

        done = self.step // self.steps_per_epoch  # epochs finished before a --resume
        results = chaos.fit(self.model, self.loss, train, val, epochs=max(tr["epochs"] - done, 0),
                            threads=dist_cfg["threads"] or None, batch=self.batch, schedule=self.schedule,
                            lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"],
                            staleness=None if dist_cfg["staleness"] < 0 else dist_cfg["staleness"],
                            deterministic=dist_cfg["deterministic"],
                            average_every=dist_cfg["average_every"] or None,
                            comm=self.world.comm if self.world.size > 1 else None,
                            seed=tr["seed"], on_epoch=on_epoch)
        seconds = time.perf_counter() - t0
        self.step = tr["epochs"] * self.steps_per_epoch
        path = self.save_checkpoint()
        last = dict(results[-1]) if results else {}
        summary = {"steps": self.step, "epochs": tr["epochs"], "seconds": seconds,
                   "images_per_s": tr["epochs"] * len(self.train_set) / seconds, "stopped": None, "checkpoint": path,
                   **{k: v for k, v in last.items() if k.startswith("val_")}}
        self.log.write("summary", **summary)
        self._say_summary(summary)
        self.summary = summary
        return summary


def train(job, overrides=(), resume=None, comm=None, stream=None, restart=False):
    """Run a job (a path or a Job); returns the summary dict."""
    if not isinstance(job, dict):
        job = load_job(job, overrides)
    return Trainer(job, resume=resume, comm=comm, stream=stream, restart=restart).run()


def command(job_path, overrides=(), resume=None, stream=None, restart=False):
    """`hpcnn train`: run a job file; returns the exit status (0: done or stopped by a signal with a
    checkpoint written, 2: the job, its data or its checkpoint cannot work, 3: the loss diverged).

    Errors found before training are the same on every rank (or agreed over ranks) and printed
    once, by rank 0; any other error on any rank aborts the whole job with that rank's message.
    """
    rank = int(next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if v in os.environ), 0))
    if launched_ranks():
        from ..dist import comm as dcomm
        dcomm.install_abort_on_error()
        rank = dcomm.world().Get_rank()
    try:
        job = load_job(job_path, overrides)
        if resume and restart:
            raise JobError("--resume and --restart exclude each other")
        train(job, resume=resume, stream=stream, restart=restart)
    except (JobError, hdata.DataError, ckpt.CheckpointError) as e:
        if rank == 0:
            sys.stderr.write(f"hpcnn train: error: {e}\n")
        return 2
    except TrainingDiverged as e:
        if rank == 0:
            sys.stderr.write(f"hpcnn train: {e}\n")
        return 3
    return 0
