"""The CHAOS engine: thread-parallel CPU training with shared weights and lock-free layer-wise updates.

Entry point: `fit(model, loss, train, val, epochs=..., threads=..., ...)` (see engine.fit), or the
`ChaosEngine` class it wraps. For jobs, `ChaosJobEngine` (job.py) implements the trainer's engine
interface (hpcnn.train.engine): `engine = "chaos"` under [distribution] in a job file, or
`hpcnn train JOB.toml --engine chaos`; `engine = "auto"` picks CHAOS when no GPU is available, no
spatial split (grid or plan) is asked for, the job runs on one rank and the task is per-sample
classification (hpcnn.train.engine.choose_engine); otherwise the spatial engine. Under `mpiexec` with `engine = "chaos"` every rank runs CHAOS workers on its share
of each epoch and the ranks average their weights every `average_every` steps.

Thread settings (hpcnn.chaos.threads): BLAS is capped at one thread per worker while training,
the numba kernels are serial and nogil, and the numba threading layer is set to a thread-safe one.
`hpcnn bench chaos` measures images/s, speedup and accuracy and checks perfmodel.chaos.
"""
from .clock import StalenessClock
from .engine import STEPS, ChaosEngine, ChaosWorkerError, epoch_order, fit
from .fused import FusedNetwork, NotFusable
from .job import ChaosJobEngine
from .threads import available_cores, describe_thread_settings, worker_thread_limits

__all__ = ["fit", "ChaosEngine", "ChaosJobEngine", "ChaosWorkerError", "epoch_order", "STEPS", "StalenessClock", "FusedNetwork",
           "NotFusable", "available_cores", "describe_thread_settings", "worker_thread_limits"]
