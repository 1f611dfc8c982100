"""Stochastic gradient descent with PyTorch's exact update rule, per step or one parameter at a time."""
from ..backend import array_module

__all__ = ["SGD"]


class SGD:
    """torch.optim.SGD on (name, param, grad) triples, updating the parameter arrays in place.

    `parameters` is a module (or anything with .parameters(), read afresh at every step so that a later
    astype() or re-binding of arrays is seen) or an iterable of (name, param, grad). One step, per
    parameter p with gradient g:

        g = g + weight_decay * p
        buf = g                                        (first step)
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        g = g + momentum * buf if nesterov else buf    (when momentum != 0)
        p -= lr * g
    """

    def __init__(self, parameters, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
        if lr < 0:
            raise ValueError(f"SGD: lr must be non-negative, received {lr}")
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be non-negative, received {momentum}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be non-negative, received {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0, received "
                             f"momentum={momentum}, dampening={dampening}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.dampening = float(dampening)
        if hasattr(parameters, "parameters"):
            self._source = parameters.parameters
        else:
            triples = list(parameters)
            self._source = lambda: iter(triples)
        self.momentum_buffers = {}
        names = [name for name, _, _ in self._source()]
        if len(set(names)) != len(names):
            raise ValueError("SGD: parameter names must be unique")

    def _find(self, name):
        for n, p, g in self._source():
            if n == name:
                return p, g
        raise ValueError(f"SGD: no parameter named {name!r}")

    def step(self, lr=None):
        """Update every parameter from its gradient; `lr` overrides self.lr for this step (a schedule's value)."""
        for name, p, g in self._source():
            self._update(name, p, g, lr)

    def step_param(self, name, lr=None):
        """Update the one parameter `name` (the CHAOS engine writes each layer as soon as its gradient is ready)."""
        p, g = self._find(name)
        self._update(name, p, g, lr)

    def _update(self, name, p, g, lr):
        lr = self.lr if lr is None else float(lr)
        d = g
        if self.weight_decay:
            d = g + p.dtype.type(self.weight_decay) * p
        if self.momentum:
            buf = self.momentum_buffers.get(name)
            if buf is None:
                buf = d.copy()
                self.momentum_buffers[name] = buf
            else:
                buf *= p.dtype.type(self.momentum)
                buf += p.dtype.type(1.0 - self.dampening) * d
            d = d + p.dtype.type(self.momentum) * buf if self.nesterov else buf
        p -= p.dtype.type(lr) * d

    def zero_momentum(self):
        self.momentum_buffers.clear()

    def state_dict(self):
        """{"momentum_buffer.<param name>": a copy of the buffer, on the parameters' device} (empty before the
        first step; a checkpoint copies it to the host)."""
        return {f"momentum_buffer.{name}": buf.copy() for name, buf in self.momentum_buffers.items()}

    def load_state_dict(self, state):
        """Restore momentum buffers saved by state_dict(); names and shapes must match this model's, and the
        arrays must be on the parameters' device (a checkpoint's are uploaded by the trainer)."""
        params = {name: p for name, p, _ in self._source()}
        buffers = {}
        for key, value in state.items():
            prefix = "momentum_buffer."
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name not in params:
                raise ValueError(f"SGD.load_state_dict: {key!r} names no parameter of this model")
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"SGD.load_state_dict: {key!r} has shape {tuple(value.shape)}, the parameter has "
                                 f"{tuple(params[name].shape)}")
            if array_module(value) is not array_module(params[name]):
                raise ValueError(f"SGD.load_state_dict: {key!r} is a {type(value).__module__} array, the parameter "
                                 f"a {type(params[name]).__module__} one: upload it first")
            buffers[name] = value.astype(params[name].dtype)
        self.momentum_buffers = buffers
