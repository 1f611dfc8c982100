"""The trainer: one job on one process, on MPI ranks (hpcnn.parallel), or on CHAOS threads.

The trainer does what every engine needs, on every rank, before any work: it validates the job,
opens the data, builds the model, the loss, the optimizer and the schedule, and loads or refuses
checkpoints, with errors agreed over ranks (one message, every rank). It then hands the loop to
the job's engine (hpcnn.train.engine: "spatial", "chaos" or "auto"), and owns what engines share:
checkpoints, the metrics log and progress line, stop signals, and the divergence stop.

Checkpoints record the step; the order of any epoch can be drawn again from (training.seed,
epoch), so --resume continues exactly, also on another grid or rank count. A checkpoint is loaded
only when complete: every parameter, state and optimizer entry, with the model's shapes and dtypes.
A fresh run never overwrites an earlier run's checkpoints or metrics (--resume appends, --restart
deletes the checkpoints and keeps the earlier metrics beside the new file).

The divergence stop: a non-finite loss, or a loss above training.divergence_factor times the
run's first loss for training.divergence_steps consecutive steps, stops the run with exit status
3, keeping the checkpoints written before it.
"""
import math
import os
import signal
import sys

import numpy as np

from .. import data as hdata
from .. import nn
from ..backend import DeviceUnavailable, array_module, open_device, to_host
from . import checkpoint as ckpt
from .config import JobError, load_job
from .engine import choose_engine, engine_class, job_communicator, launched_ranks
from .launch import resume_command
from .metrics import MetricsLog, Progress, format_duration
from .optim import build_optimizer
from .paths import outputs
from .schedule import build_schedule
from ..threads import apply_threads, blas_kernels, choose_threads
from .setup import agree, build_model, model_label, open_data

__all__ = ["Trainer", "TrainingDiverged", "train", "command"]

_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class TrainingDiverged(RuntimeError):
    """The loss became nan or infinite; the last good checkpoint is kept."""


class Trainer:
    """One training run of a validated Job (hpcnn.train.config.Job).

    trainer = Trainer(job, resume=None | "latest" | PATH, comm=None); summary = trainer.run()
    comm: an mpi4py communicator or an hpcnn.parallel.mpi.Communicator (default: every rank under an
    MPI launcher, else this process alone, without MPI).
    """

    def __init__(self, job, resume=None, comm=None, stream=None, restart=False, launch_args=None, overrides=()):
        self.job = job
        self.launch_args, self.overrides = launch_args, tuple(overrides)
        self.header_extra = {}      # engine-specific fields of the next checkpoint's header
        self.resumed_header = None
        self.first_loss, self._above = None, 0
        self.resume = resume
        self.restart = restart
        self.comm = job_communicator(comm)
        self.stream = stream or sys.stdout
        self.stop_signal = None
        self.history = []

    # --- setup (every rank, before any work) -------------------------------------------------
    def _setup(self):
        job = self.job
        tr = job["training"]
        try:
            self.device = open_device(tr["device"])
        except (DeviceUnavailable, ValueError) as e:
            raise JobError(f"job file {job.path}: training.device: {e}") from None
        self.dtype = np.dtype(tr["dtype"])
        self.engine_name = choose_engine(job, self.comm.size)
        self.engine = engine_class(self.engine_name)()
        self.train_set, self.val_set = open_data(job)
        self.task = self.train_set.task
        self.batch = tr["batch"]
        self.steps_per_epoch = max(len(self.train_set) // self.batch, 1)
        self.total_steps = tr["steps"] or tr["epochs"] * self.steps_per_epoch
        try:
            self.threads = choose_threads(self.comm.node_size(), tr["threads"] or None, "training.threads")
        except ValueError as e:
            raise JobError(f"job file {job.path}: {e}") from None
        apply_threads(self.threads.threads)
        # more ranks than cores: a rank waiting in MPI sleeps between polls instead of taking a busy core
        type(self.comm).yield_when_idle(self.threads.oversubscribed)
        self.model_label = model_label(job)
        self.model = build_model(job, self.train_set, self.dtype)
        if job["model"]["init"] and not self.resume:  # a resumed run continues from its checkpoint instead
            self._load_init()
        self.model = self.model.to(self.device)
        self.loss = nn.MSELoss() if self.task == "regress" else nn.CrossEntropyLoss()
        self.distribution = None
        self.net = self.model
        self.engine.setup(self)
        try:
            self.optimizer = build_optimizer(self.net, tr["optimizer"])
        except ValueError as e:
            raise JobError(f"job file {job.path}: training.optimizer: {e}") from None
        spec = dict(tr["schedule"])
        if spec.get("name") == "cosine":
            spec.setdefault("total_steps", self.total_steps)
        try:
            self.schedule = build_schedule(spec)
        except (ValueError, TypeError) as e:
            raise JobError(f"job file {job.path}: training.schedule: {e}") from None
        self.optimizer = self.engine.optimizer(self)
        self.step = 0
        if self.resume:
            self._load_checkpoint()
        elif not self.restart:
            earlier = ckpt.list_checkpoints(job["checkpoint"]["dir"])
            if earlier:
                raise JobError(f"job file {job.path}: checkpoint.dir {job['checkpoint']['dir']} holds checkpoints "
                               f"of an earlier run (newest: step {earlier[-1][0]}); continue that run with --resume, "
                               "or start over with --restart (which deletes them)")
            metrics = job["logging"]["metrics"]
            if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
                raise JobError(f"job file {job.path}: logging.metrics {metrics} holds the metrics of an earlier run; "
                               "continue that run with --resume, start over with --restart (which keeps them "
                               "beside the new file), or choose another logging.dir")

    def _load_init(self):
        from ..nn.weights import WeightsError, load_weights
        path = os.path.join(os.path.dirname(os.path.abspath(self.job.path)), self.job["model"]["init"])
        try:
            load_weights(self.model, path)
        except WeightsError as e:
            raise JobError(f"job file {self.job.path}: model.init: {e}") from None
        self.init_from = path

    def _check_same_weights(self):
        """Refuse an own network whose ranks built different weights (a generator not seeded from `seed`)."""
        import hashlib
        digest = hashlib.sha256()
        for name, p, _ in self.model.parameters():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(to_host(p)).tobytes())
        digests = self.comm.allgather_object(digest.hexdigest())
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise JobError(f"job file {self.job.path}: model.factory {self.job['model']['factory']} built other "
                           f"weights on rank {differ[0]} than on rank 0: draw them from hpcnn.nn's default "
                           "generator (seeded from training.seed) or from the function's `seed` argument")

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
            "order_seed": self.job["training"]["seed"], "ranks": self.comm.size,
            "grid": list(self.distribution.grid) if self.distribution is not None else None,
            "model": self.model_label, "job": self.job.to_dict(), "job_path": self.job.path,
            "engine": self.engine_name, "first_loss": self.first_loss, **self.header_extra,
        }

    def save_checkpoint(self):
        """Write a checkpoint of the current step (rank 0 writes; parameters are global)."""
        params = list(self.net.parameters())
        xp = array_module(*(p for _, p, _ in params))
        finite = to_host(xp.stack([xp.isfinite(p).all() for _, p, _ in params])) if params else []
        bad = [name for (name, _, _), ok in zip(params, finite) if not ok]
        if bad:
            raise TrainingDiverged(f"parameter {bad[0]} is not finite at step {self.step}; no checkpoint written")
        path = None
        if self.comm.rank == 0:
            c = self.job["checkpoint"]
            path = ckpt.save(c["dir"], self.step, self._arrays(), self._header(), keep=c["keep"])
            self.log.write("checkpoint", step=self.step, path=path)
        self.comm.barrier()
        return path or ckpt.checkpoint_path(self.job["checkpoint"]["dir"], self.step)

    def _load_checkpoint(self):
        folder = self.job["checkpoint"]["dir"]
        path = ckpt.latest(folder) if self.resume in (True, "latest") else self.resume
        if path is None:
            raise JobError(f"job file {self.job.path}: --resume: no checkpoint in {folder}")
        arrays, header = ckpt.load(path)
        where = f"checkpoint {path}"
        if header.get("model") != self.model_label:
            raise ckpt.CheckpointError(f"{where} holds model {header.get('model')!r}, the job trains "
                                       f"{self.model_label!r}")
        params = list(self.net.parameters())
        targets = [(f"param/{n}", p) for n, p, _ in params] + [(f"state/{n}", s) for n, s in self.model.state()]
        ckpt.check_complete(where, arrays, targets, {n: p for n, p, _ in params},
                            counters=getattr(self.optimizer, "COUNTERS", ()))
        for key, target in targets:
            target[...] = self.device.put(arrays[key])
        try:
            self.optimizer.load_state_dict({k[6:]: self.device.put(v) for k, v in arrays.items()
                                            if k.startswith("optim/")})
        except ValueError as e:
            raise ckpt.CheckpointError(f"{where}: optimizer state: {e}") from None
        if header.get("steps_per_epoch") != self.steps_per_epoch or header.get("order_seed") != \
                self.job["training"]["seed"]:
            raise ckpt.CheckpointError(
                f"{where} was written with {header.get('steps_per_epoch')} steps per epoch and seed "
                f"{header.get('order_seed')}; this job has {self.steps_per_epoch} and {self.job['training']['seed']} "
                "(training.batch, data or training.seed changed): it cannot continue the same run")
        self.step = int(header["step"])
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                m.step = self.step  # one training forward per step: the masks continue where the run stopped
        self.first_loss = header.get("first_loss")
        self.resumed_from, self.resumed_header = path, header

    # --- signals -------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self.stop_signal = signal.Signals(signum).name

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
        agree(self.comm, self._setup)
        if self.job["model"]["factory"] and self.comm.size > 1:
            self._check_same_weights()  # every rank sees every digest, so all refuse alike
        kept = None
        if self.restart and not self.resume and self.comm.rank == 0:
            for _, path in ckpt.list_checkpoints(self.job["checkpoint"]["dir"]):
                os.unlink(path)
            kept = _keep_beside(self.job["logging"]["metrics"])
        self.comm.barrier()
        job = self.job
        rank0 = self.comm.rank == 0
        lg = job["logging"]
        self.log = MetricsLog(lg["metrics"], enabled=rank0, append=bool(self.resume))
        self.progress = Progress(self.total_steps, self.steps_per_epoch, self.batch, every=lg["every"],
                                 enabled=rank0 and lg["progress"], stream=self.stream, first_step=self.step)
        n_params = sum(int(p.size) for _, p, _ in self.model.parameters())
        grid = list(self.distribution.grid) if self.distribution is not None else None
        size = self.comm.size
        devices = self.comm.allgather_object(self.device.label)
        self._install_signals()     # before the start line: a stop from then on writes a checkpoint
        self.log.write("start", job=job.to_dict(), job_path=job.path, engine=self.engine_name, ranks=size,
                       threads=self.threads.threads, threads_reason=self.threads.reason,
                       grid=grid, devices=devices, parameters=n_params, train=self.train_set.describe(),
                       val=self.val_set.describe(), resumed_from=getattr(self, "resumed_from", None),
                       first_step=self.step)
        where = f"on {size} rank{'s' if size > 1 else ''}" + (f", grid {grid}" if grid else "") + \
            f", {_describe_devices(devices)}"
        self.progress.say(f"hpcnn train {job.path}: {self.model_label} ({n_params:,} parameters) on "
                          f"{self.train_set.describe()}; engine {self.engine_name} {where}; "
                          f"{self.total_steps} steps of batch {self.batch}; {self.threads.describe()}"
                          + ("; MPI waits sleep between polls" if self.threads.oversubscribed else "")
                          + ("" if self.device.name == "gpu" else f"; BLAS: {blas_kernels()}")
                          + (f"; resumed at step {self.step} from {self.resumed_from}" if self.resume else "")
                          + (f"; initial weights from {self.init_from}" if getattr(self, "init_from", None) else ""))
        self.progress.say("writes " + ", ".join(f"{what} to {path}" for what, path in outputs(job))
                          + (f" (the earlier run's metrics kept as {kept})" if kept else ""))
        try:
            summary = self.engine.run(self)
            self.log.write("summary", **summary)
            self._say_summary(summary)
            self.summary = summary
            return summary
        finally:
            self._restore_signals()
            self.log.close()

    def due(self, every, epoch_end):
        """True when something done every `every` steps (0: at epoch ends) is due now."""
        return (every and self.step % every == 0) or (not every and epoch_end)

    def check_loss(self, loss, steps=1):
        """The divergence stop (see the module docstring) after `steps` steps whose loss is `loss` (CHAOS: an
        epoch's mean); raises TrainingDiverged."""
        if not math.isfinite(loss):
            self.diverged(loss)
        tr = self.job["training"]
        if self.first_loss is None:
            self.first_loss = float(loss)
            return
        factor = tr["divergence_factor"]
        self._above = self._above + steps if factor and loss > factor * self.first_loss else 0
        if self._above >= tr["divergence_steps"]:
            self.diverged(loss, f"the loss has stayed above {factor:g} times its first value "
                                f"({self.first_loss:.4g}) for {self._above} steps (training.divergence_factor, "
                                "training.divergence_steps)", before=self.step - self._above)

    def diverged(self, loss, why=None, before=None):
        """Stop the run (raises TrainingDiverged) keeping the last checkpoint written before step `before`."""
        found = [(s, p) for s, p in ckpt.list_checkpoints(self.job["checkpoint"]["dir"])
                 if before is None or s <= before]
        last = found[-1][1] if found else None
        message = (f"training stopped: the loss is {loss} at step {self.step} (epoch "
                   f"{(self.step - 1) // self.steps_per_epoch + 1})" + (f": {why}" if why else "") + "; "
                   + (f"the last good checkpoint is {last}: continue from it with --resume {last}" if last
                      else "no checkpoint was written before it")
                   + ", perhaps with a lower training.optimizer.lr")
        self.log.write("stop", step=self.step, reason="diverging loss" if why else "nonfinite loss", loss=loss,
                       checkpoint=last)
        raise TrainingDiverged(message)

    def announce_stop(self, stopped, path):
        """Log and print a stop by signal: where the checkpoint is and the command that continues the run."""
        self.log.write("stop", step=self.step, reason=stopped, checkpoint=path)
        hint = resume_command(self.comm.size, self.launch_args, self.job.path, self.overrides)
        self.progress.say(f"received {stopped}: checkpoint written at step {self.step} to {path}; "
                          f"continue with: {hint}")

    def _say_summary(self, s):
        scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in s.items() if k.startswith("val_"))
        self.progress.say(f"done: {s['steps']} steps ({s['epochs']:.2f} epochs) in {format_duration(s['seconds'])}, "
                          f"{s['images_per_s']:,.1f} img/s" + (f"; validation: {scores}" if scores else "")
                          + f"; metrics in {self.log.path}")


def _keep_beside(path):
    """Rename an earlier run's metrics file to the first free PATH.N; returns the new name (None: none there)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    os.replace(path, f"{path}.{n}")
    return f"{path}.{n}"


def _describe_devices(labels):
    """'device cpu', or which ranks compute on which device ('GPU 0 (NVIDIA H200): ranks 0, 2; ...')."""
    if len(set(labels)) == 1:
        return f"device {labels[0]}"
    ranks = {}
    for rank, label in enumerate(labels):
        ranks.setdefault(label, []).append(str(rank))
    return "devices " + "; ".join(f"{label}: rank{'s' if len(r) > 1 else ''} {', '.join(r)}"
                                  for label, r in ranks.items())


def train(job, overrides=(), resume=None, comm=None, stream=None, restart=False, launch_args=None):
    """Run a job (a path or a Job); returns the summary dict."""
    if not isinstance(job, dict):
        job = load_job(job, overrides)
    return Trainer(job, resume=resume, comm=comm, stream=stream, restart=restart, launch_args=launch_args,
                   overrides=overrides).run()


def command(job_path, overrides=(), resume=None, stream=None, restart=False, launch_args=None):
    """`hpcnn train`: run a job file; returns the exit status (0: done or stopped by a signal with a
    checkpoint written, 2: the job, its data or its checkpoint cannot work, 3: the loss diverged).
    launch_args: the arguments `hpcnn train` received, repeated in the command that resumes a stopped run.

    Errors found before training are the same on every rank (or agreed over ranks) and printed
    once, by rank 0; any other error on any rank aborts the whole job with that rank's message.
    """
    rank = int(next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if v in os.environ), 0))
    if launched_ranks():
        rank = job_communicator().rank
    try:
        job = load_job(job_path, overrides)
        if resume and restart:
            raise JobError("--resume and --restart exclude each other")
        train(job, overrides=overrides, resume=resume, stream=stream, restart=restart, launch_args=launch_args)
    except (JobError, hdata.DataError, ckpt.CheckpointError) as e:
        if rank == 0:
            sys.stderr.write(f"hpcnn train: error: {e}\n")
        return 2
    except TrainingDiverged as e:
        if rank == 0:
            sys.stderr.write(f"hpcnn train: {e}\n")
        return 3
    return 0
