"""Optimizers with PyTorch's exact update rules (SGD, Adam, AdamW), per step or one parameter at a time.

Every optimizer keeps its state as a dict of named arrays per parameter, `state[param][key]`,
on the parameters' device; state_dict() flattens it to {"<key>.<param>": array} (what a
checkpoint stores under `optim/`), and load_state_dict() checks every name, shape and device.
"""
import math

import numpy as np

from ..backend import array_module, to_host

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "build_optimizer"]


class Optimizer:
    """The part every optimizer shares: the parameter source, step / step_param, and the state dict.

    `parameters` is a module (or anything with .parameters(), read afresh at every step so that a later
    astype() or re-binding of arrays is seen) or an iterable of (name, param, grad). A subclass names its
    per-parameter state arrays in STATE and implements _update(name, p, g, lr, state).
    """

    STATE = ()
    # state keys held as host integers (a step count), stored in a checkpoint as 0-d int64 arrays
    COUNTERS = ()

    def __init__(self, parameters, lr):
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be non-negative, received {lr}")
        self.lr = float(lr)
        if hasattr(parameters, "parameters"):
            self._source = parameters.parameters
        else:
            triples = list(parameters)
            self._source = lambda: iter(triples)
        self.state = {}
        names = [name for name, _, _ in self._source()]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: parameter names must be unique")

    def _find(self, name):
        for n, p, g in self._source():
            if n == name:
                return p, g
        raise ValueError(f"{type(self).__name__}: no parameter named {name!r}")

    def step(self, lr=None):
        """Update every parameter from its gradient; `lr` overrides self.lr for this step (a schedule's value)."""
        for name, p, g in self._source():
            self._step_one(name, p, g, lr)

    def step_param(self, name, lr=None):
        """Update the one parameter `name` (the CHAOS engine writes each layer as soon as its gradient is ready)."""
        p, g = self._find(name)
        self._step_one(name, p, g, lr)

    def _step_one(self, name, p, g, lr):
        self._update(name, p, g, self.lr if lr is None else float(lr), self.state.setdefault(name, {}))

    def _update(self, name, p, g, lr, state):
        raise NotImplementedError

    def reset_state(self):
        self.state.clear()

    def state_dict(self):
        """{"<key>.<param name>": a copy of that state array, on the parameters' device} (empty before the first
        step; a checkpoint copies it to the host). Counters are 0-d int64 host arrays."""
        out = {}
        for name, entries in self.state.items():
            for key, value in entries.items():
                out[f"{key}.{name}"] = np.asarray(value, np.int64) if key in self.COUNTERS else value.copy()
        return out

    def load_state_dict(self, state):
        """Restore the state saved by state_dict(); every key must name one of this optimizer's state arrays and
        one of the model's parameters, with that parameter's shape, on its device (a checkpoint's arrays are
        uploaded by the trainer). A parameter's state is complete or absent."""
        who = f"{type(self).__name__}.load_state_dict"
        params = {name: p for name, p, _ in self._source()}
        known = self.STATE + self.COUNTERS
        loaded = {}
        for key, value in state.items():
            kind, _, name = key.partition(".")
            if kind not in known:
                raise ValueError(f"{who}: {key!r} is not state of {type(self).__name__} (its state: "
                                 f"{', '.join(known)})")
            if name not in params:
                raise ValueError(f"{who}: {key!r} names no parameter of this model")
            p = params[name]
            if kind in self.COUNTERS:
                count = to_host(value)
                if count.size != 1 or count.dtype.kind not in "iu" or int(count.reshape(())) < 0:
                    raise ValueError(f"{who}: {key!r} must be a non-negative integer count, got {count!r}")
                loaded.setdefault(name, {})[kind] = int(count.reshape(()))
                continue
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{who}: {key!r} has shape {tuple(value.shape)}, the parameter has "
                                 f"{tuple(p.shape)}")
            if array_module(value) is not array_module(p):
                raise ValueError(f"{who}: {key!r} is a {type(value).__module__} array, the parameter "
                                 f"a {type(p).__module__} one: upload it first")
            loaded.setdefault(name, {})[kind] = value.astype(p.dtype)
        for name, entries in loaded.items():
            missing = [k for k in self._required(name) if k not in entries]
            if missing:
                raise ValueError(f"{who}: the state of {name!r} lacks {', '.join(missing)}")
        self.state = loaded

    def _required(self, name):
        """The state keys a parameter that has state must have all of."""
        return self.STATE + self.COUNTERS


class SGD(Optimizer):
    """torch.optim.SGD on (name, param, grad) triples, updating the parameter arrays in place.

    One step, per parameter p with gradient g:

        g = g + weight_decay * p
        buf = g                                        (first step)
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        g = g + momentum * buf if nesterov else buf    (when momentum != 0)
        p -= lr * g

    State: momentum_buffer (with momentum only).
    """

    STATE = ("momentum_buffer",)

    def __init__(self, parameters, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be non-negative, received {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be non-negative, received {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0, received "
                             f"momentum={momentum}, dampening={dampening}")
        super().__init__(parameters, lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.dampening = float(dampening)

    def _update(self, name, p, g, lr, state):
        d = g
        if self.weight_decay:
            d = g + p.dtype.type(self.weight_decay) * p
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = d.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= p.dtype.type(self.momentum)
                buf += p.dtype.type(1.0 - self.dampening) * d
            d = d + p.dtype.type(self.momentum) * buf if self.nesterov else buf
        p -= p.dtype.type(lr) * d


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad too): bias-corrected first and second moments; weight_decay is L2 added to the
    gradient. AdamW differs only in decoupling the decay. One step t (from 1) per parameter p, gradient g:

        g = g + weight_decay * p                       (Adam)   p *= 1 - lr * weight_decay   (AdamW)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                            (amsgrad; v below reads vmax)
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State: exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad), each parameter's step count.
    """

    STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    COUNTERS = ("step",)
    decoupled = False

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        who = type(self).__name__
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{who}: betas must be two numbers in [0, 1), received {betas}")
        if not eps >= 0:
            raise ValueError(f"{who}: eps must be non-negative, received {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"{who}: weight_decay must be non-negative, received {weight_decay}")
        super().__init__(parameters, lr)
        self.betas = betas
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.amsgrad = bool(amsgrad)

    def _required(self, name):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ()) + self.COUNTERS

    def _update(self, name, p, g, lr, state):
        xp = array_module(p)
        t = p.dtype.type
        beta1, beta2 = self.betas
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
            if self.amsgrad:
                state["max_exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        step = state["step"]
        if self.weight_decay:
            if self.decoupled:
                p *= t(1.0 - lr * self.weight_decay)
            else:
                g = g + t(self.weight_decay) * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (g - m) * t(1.0 - beta1)   # torch's lerp_
        v *= t(beta2)
        v += t(1.0 - beta2) * g * g
        if self.amsgrad:
            vmax = state["max_exp_avg_sq"]
            vmax[...] = xp.maximum(vmax, v)
            v = vmax
        step_size = lr / (1.0 - beta1 ** step)
        denom = xp.sqrt(v) / t(math.sqrt(1.0 - beta2 ** step))
        denom += t(self.eps)
        p -= t(step_size) * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay before the moment step);
    torch's default weight_decay is 0.01."""

    decoupled = True

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(parameters, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def build_optimizer(parameters, spec):
    """The optimizer of a job's [training.optimizer] table: {"name": "sgd" | "adam" | "adamw", its options}."""
    spec = dict(spec)
    name = spec.pop("name", "sgd")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    return OPTIMIZERS[name](parameters, **spec)
