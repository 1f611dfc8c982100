"""Training: the optimizer and learning-rate schedules."""
from .optim import SGD, Adam, AdamW, build_optimizer
from .schedule import ConstantLR, CosineLR, StepLR, WarmupLR, build_schedule

__all__ = ["SGD", "Adam", "AdamW", "build_optimizer", "ConstantLR", "StepLR", "CosineLR", "WarmupLR", "build_schedule"]

# The job runner (job files, the training loop, checkpoints, metrics).
from .config import JobError, load_job  # noqa: E402
from .trainer import Trainer, train  # noqa: E402

__all__ += ["JobError", "load_job", "Trainer", "train"]
