"""Learning-rate schedules: lr_at(step) for constant, step decay, cosine annealing and linear warmup."""
import math

__all__ = ["ConstantLR", "StepLR", "CosineLR", "WarmupLR", "build_schedule"]


class _Schedule:
    def lr_at(self, step):
        raise NotImplementedError

    def __call__(self, step):
        return self.lr_at(step)


def _check_step(step):
    if step < 0:
        raise ValueError(f"learning-rate schedule: step must be non-negative, received {step}")


class ConstantLR(_Schedule):
    """lr_at(step) = base_lr."""

    def __init__(self, base_lr):
        self.base_lr = float(base_lr)

    def lr_at(self, step):
        _check_step(step)
        return self.base_lr


class StepLR(_Schedule):
    """lr_at(step) = base_lr * gamma ** (step // step_size) (torch.optim.lr_scheduler.StepLR)."""

    def __init__(self, base_lr, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be at least 1, received {step_size}")
        self.base_lr = float(base_lr)
        self.step_size = int(step_size)
        self.gamma = float(gamma)

    def lr_at(self, step):
        _check_step(step)
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineLR(_Schedule):
    """lr_at(step) = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2, then min_lr from
    total_steps on (torch's CosineAnnealingLR over one half period)."""

    def __init__(self, base_lr, total_steps, min_lr=0.0):
        if total_steps < 1:
            raise ValueError(f"CosineLR: total_steps must be at least 1, received {total_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)

    def lr_at(self, step):
        _check_step(step)
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2


class WarmupLR(_Schedule):
    """Linear warmup in front of another schedule.

    For step < warmup_steps: lr = schedule.lr_at(0) * (start_factor + (1 - start_factor) * step / warmup_steps);
    afterwards schedule.lr_at(step - warmup_steps), so the wrapped schedule starts where the warmup ends
    (torch's SequentialLR of LinearLR and the schedule).
    """

    def __init__(self, schedule, warmup_steps, start_factor=0.0):
        if warmup_steps < 0:
            raise ValueError(f"WarmupLR: warmup_steps must be non-negative, received {warmup_steps}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"WarmupLR: start_factor must lie in [0, 1], received {start_factor}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def lr_at(self, step):
        _check_step(step)
        if step < self.warmup_steps:
            factor = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
            return self.schedule.lr_at(0) * factor
        return self.schedule.lr_at(step - self.warmup_steps)


_KINDS = {
    "constant": (ConstantLR, ("base_lr",), ()),
    "step": (StepLR, ("base_lr", "step_size"), ("gamma",)),
    "cosine": (CosineLR, ("base_lr", "total_steps"), ("min_lr",)),
}
_WARMUP_KEYS = ("warmup_steps", "warmup_start_factor")


def build_schedule(spec):
    """A schedule from a job file's table, e.g.

        {"name": "cosine", "base_lr": 0.1, "total_steps": 1000, "min_lr": 0.0, "warmup_steps": 50}

    name: constant (base_lr) | step (base_lr, step_size, gamma=0.1) | cosine (base_lr, total_steps,
    min_lr=0); optional warmup_steps and warmup_start_factor (default 0) wrap it in WarmupLR.
    A missing or unknown key is a ValueError naming it.
    """
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in _KINDS:
        raise ValueError(f"schedule: 'name' must be one of {', '.join(_KINDS)}, received {name!r}")
    cls, required, optional = _KINDS[name]
    allowed = set(required) | set(optional) | set(_WARMUP_KEYS)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"schedule {name!r}: unknown key(s) {', '.join(unknown)}; valid keys: "
                         f"{', '.join(required + optional + _WARMUP_KEYS)}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"schedule {name!r}: missing key(s) {', '.join(missing)}")
    schedule = cls(**{k: spec[k] for k in required + optional if k in spec})
    if "warmup_steps" in spec:
        schedule = WarmupLR(schedule, spec["warmup_steps"], spec.get("warmup_start_factor", 0.0))
    elif "warmup_start_factor" in spec:
        raise ValueError(f"schedule {name!r}: warmup_start_factor needs warmup_steps")
    return schedule
