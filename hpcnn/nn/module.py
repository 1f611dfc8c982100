"""The layer protocol: parameters and gradients by name, forward/backward, containers, replicas, the tree walk."""
import copy

import numpy as np

from ..backend import array_module, check_float_array, to_host

__all__ = ["Module", "default_rng", "manual_seed"]

_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Seed the generator that layers draw their default initialization from."""
    global _rng
    _rng = np.random.default_rng(seed)


def default_rng():
    return _rng


class Module:
    """A layer or a container of layers.

    `params` and `grads` map the same names to arrays of the same shapes and meanings as
    PyTorch's; `backward(dy)` fills (overwrites) `grads`. Containers list their children in
    `children()`; `named_modules()` and `named_leaves()` walk the tree in forward order with
    dotted names (the prefixes of `parameters()`' names, and the names a plan gives layers).

    A gradient hook (`set_grad_hook(fn)`) is called as fn(module) by the container running a
    module, right after that module (if it owns parameters) has finished its backward step; the
    CHAOS engine's layer-by-layer step writes that layer's update there. (Distributed models
    start the gradient allreduce from their own layers, not through this hook.)
    """

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True
        self._grad_hook = None

    # --- to be provided by layers -------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def children(self):
        """[(name, module)] in forward order; leaves have none."""
        return []

    # --- shared machinery -----------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    @property
    def name(self):
        return type(self).__name__

    def _add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = array_module(value).zeros_like(value)

    def parameters(self, prefix=""):
        """Yield (dotted name, param, grad) over the whole tree, in a fixed order."""
        for key, p in self.params.items():
            yield prefix + key, p, self.grads[key]
        for cname, child in self.children():
            yield from child.parameters(prefix + cname + ".")

    def named_modules(self, prefix=""):
        """(dotted name, module) of this module ("" for the root) and every descendant, depth first, in
        forward order."""
        yield prefix.rstrip("."), self
        for cname, child in self.children():
            yield from child.named_modules(prefix + cname + ".")

    def named_leaves(self, prefix=""):
        """(dotted name, module) of every module without children, in forward order (a leaf root: ("", root))."""
        for name, m in self.named_modules(prefix):
            if not m.children():
                yield name, m

    def modules(self):
        """This module and every descendant, depth first, in forward order."""
        for _, m in self.named_modules():
            yield m

    def backward_and_notify(self, dy):
        """What containers call on a child: its backward, then the gradient hook if it owns parameters."""
        dx = self.backward(dy)
        if self.params and self._grad_hook is not None:
            self._grad_hook(self)
        return dx

    def set_grad_hook(self, fn):
        """Install fn(module) on every module of the tree (None removes it)."""
        for m in self.modules():
            m._grad_hook = fn
        return self

    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for _, _, g in self.parameters():
            g[...] = 0

    def astype(self, dtype):
        """Convert every parameter, gradient and state buffer to `dtype` in place (float64 for checks)."""
        dtype = np.dtype(dtype)
        for m in self.modules():
            for key in list(m.params):
                m.params[key] = m.params[key].astype(dtype)
                m.grads[key] = m.grads[key].astype(dtype)
            for key in m._state_names():
                setattr(m, key, getattr(m, key).astype(dtype))
        return self

    def to(self, device):
        """Move every parameter, gradient and state buffer to `device` (an hpcnn.backend.Device) in place.

        Layers are built on the host; this is the one upload of a model (or an explicit copy back to
        "cpu"). Arrays already on `device` stay as they are; moved gradients start at zero.
        """
        def move(a):
            return a if array_module(a) is device.xp else device.put(to_host(a))
        for m in self.modules():
            for key in list(m.params):
                if array_module(m.params[key]) is not device.xp:
                    m.params[key] = move(m.params[key])
                    m.grads[key] = device.xp.zeros_like(m.params[key])
            for key in m._state_names():
                setattr(m, key, move(getattr(m, key)))
        return self

    def _state_names(self):
        """Attributes holding non-trainable state that converts and checkpoints with the parameters."""
        return ()

    def state(self, prefix=""):
        """Yield (dotted name, array) of non-trainable state (e.g. batch-norm running statistics)."""
        for key in self._state_names():
            yield prefix + key, getattr(self, key)
        for cname, child in self.children():
            yield from child.state(prefix + cname + ".")

    def replicate(self):
        """A copy that shares the parameter arrays and state but has its own gradients and activation caches.

        The CHAOS engine's layer-by-layer step gives each worker thread one (threads share weights).
        """
        clone = copy.copy(self)
        clone.params = dict(self.params)
        clone.grads = {k: array_module(v).zeros_like(v) for k, v in self.grads.items()}
        clone._replicate_children(self)
        return clone

    def _replicate_children(self, original):
        """Containers override this to replace their children by replicas."""

    def check_input(self, x, ndim=None, channels=None):
        check_float_array(x, self.describe(), ndim=ndim, channels=channels)

    def describe(self):
        return self.name

    def __repr__(self):
        return self.describe()

