"""The engine interface: what runs a job's training loop once the trainer has built its data and model.

Engines (distribution.engine in a job file):
- "spatial" (default; `hpcnn.train.spatial.SpatialEngine`): a single process trains the plain
  model; with a grid, a plan, or more than one rank, the model is wrapped by hpcnn.parallel and
  every rank reads only its block of each batch (its samples, its spatial block).
- "chaos" (`hpcnn.chaos.job.ChaosJobEngine`): CHAOS threads sharing one copy of the weights
  (CPU only; whole samples).
- "auto": "chaos" when the job trains on the CPU (training.device = "cpu"), no grid or plan is asked
  for, the job runs on one rank with plain SGD (momentum, weight decay) and the task is classification; "spatial" otherwise.

An engine is a class with `name`, `setup(trainer)` (every rank, before any work: may refuse the
job with a JobError, including fields that do not apply to it: `refuse_fields`),
`optimizer(trainer)` (the object whose state_dict() the checkpoints hold) and
`run(trainer) -> summary dict`. Engines above this package (CHAOS)
implement the interface and are found by the module path in `ENGINES`, so train never imports
them.
"""
import importlib
import os

__all__ = ["Engine", "ENGINES", "engine_class", "choose_engine", "launched_ranks", "job_communicator",
           "refuse_fields", "CHAOS_ONLY"]

ENGINES = {"spatial": "hpcnn.train.spatial:SpatialEngine", "chaos": "hpcnn.chaos.job:ChaosJobEngine"}

# (section, field) -> default of the fields only the CHAOS engine reads
CHAOS_ONLY = {("distribution", "threads"): 0, ("distribution", "staleness"): -1,
              ("distribution", "average_every"): 0, ("distribution", "deterministic"): False}

# Environment variables that MPI launchers (MPICH/Hydra, Open MPI, SLURM's PMI/PMIx) set in every rank.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


class Engine:
    """A training loop for the Trainer (see the module docstring)."""

    name = None

    def setup(self, trainer):
        """Check and prepare what this engine needs, on every rank, before any work."""

    def optimizer(self, trainer):
        """The optimizer whose state_dict()/load_state_dict() checkpoints hold (default: the trainer's)."""
        return trainer.optimizer

    def run(self, trainer):
        """Train from trainer.step to the end (or to a stop); return the summary dict."""
        raise NotImplementedError(f"{type(self).__name__}.run")


def refuse_fields(job, engine, fields, why):
    """Refuse (JobError) a job that sets one of `fields` ({(section, field): default}) to anything but its default:
    the `engine` engine does not read it. `why`: what the engine does instead."""
    from .config import JobError
    for (section, field), default in fields.items():
        value = job[section][field]
        if value != default or type(value) is not type(default):
            raise JobError(f"job file {job.path}: {section}.{field} = {value!r} does not apply to the {engine} "
                           f"engine ({why}); remove it or choose another distribution.engine")


def engine_class(name):
    """The Engine class called `name` ("spatial" or "chaos")."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")
    module, _, attr = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def launched_ranks():
    """True when this process was started by an MPI launcher (mpiexec, srun)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def job_communicator(comm=None):
    """The ranks of a job: `comm` (an mpi4py communicator or a Communicator), else every rank when an MPI
    launcher started this process, else this process alone without MPI."""
    from ..parallel.abort import install_abort_on_error
    from ..parallel.mpi import Communicator
    if comm is not None:
        return Communicator.of(comm)
    if launched_ranks():
        install_abort_on_error()
        return Communicator.world()
    return Communicator.local()


def choose_engine(job, ranks):
    """The engine that runs `job` on `ranks` ranks ("spatial" or "chaos"); see the module docstring."""
    dist = job["distribution"]
    engine = dist["engine"]
    if engine != "auto":
        return engine
    spatial_asked = dist["plan"] or dist["grid"] not in (None, "auto")
    opt = job["training"]["optimizer"]
    sgd = opt["name"] == "sgd" and not opt["nesterov"] and not opt["dampening"]  # what CHAOS runs
    if job["training"]["device"] != "cpu" or spatial_asked or ranks > 1 or not sgd:
        return "spatial"
    return "chaos" if _task_of(job) == "classify" else "spatial"


def _task_of(job):
    d = job["data"]
    if d["dataset"] in ("digits",):
        return "classify"
    if d["dataset"] == "textures":
        return d["options"]["task"]
    if d["dataset"] == "fields3d":
        return "regress"
    return d["options"].get("task") or "unknown"
