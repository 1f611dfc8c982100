"""Fully connected layers: Linear (PyTorch's weight layout) and Flatten."""
import math

from ..backend import array_module
from .init import check_dtype, resolve_dtype, resolve_rng, uniform_fan_in
from .module import Module
from .work import LayerSpec, param_sizes

__all__ = ["Linear", "Flatten", "linear_work", "flatten_work"]


class Linear(Module):
    """y = x @ weight.T + bias.

    Parameters: weight (out_features, in_features), bias (out_features,) when bias=True.
    x: (N, in_features) -> y: (N, out_features).
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: feature counts must be positive, received in_features={in_features}, "
                             f"out_features={out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        dtype = resolve_dtype(dtype)
        rng = resolve_rng(rng)
        self._add_param("weight", uniform_fan_in(rng, (self.out_features, self.in_features), self.in_features,
                                                 dtype))
        if bias:
            self._add_param("bias", uniform_fan_in(rng, (self.out_features,), self.in_features, dtype))
        self.x = None

    def forward(self, x):
        self.check_input(x, ndim=2, channels=self.in_features)
        check_dtype(self.describe(), x, self.params["weight"].dtype)
        self.x = x
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, dy):
        """dy: (N, out_features) -> dx: (N, in_features); grads weight (out, in), bias (out,)."""
        self.grads["weight"][...] = dy.T @ self.x
        if "bias" in self.params:
            self.grads["bias"][...] = dy.sum(axis=0)
        return dy @ self.params["weight"]

    def describe(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}{extra})"


class Flatten(Module):
    """x: (N, *rest) -> y: (N, prod(rest)), C order (as torch.flatten(x, 1))."""

    def __init__(self):
        super().__init__()
        self.x_shape = None

    def forward(self, x):
        self.check_input(x, ndim=tuple(range(2, 9)))
        self.x_shape = tuple(x.shape)
        return array_module(x).ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        return dy.reshape(self.x_shape)

    def describe(self):
        return "Flatten()"


def linear_work(layer, name, shape):
    """The LayerSpec of Linear `layer` on a global input `shape` (N, F)."""
    if len(shape) != 2 or shape[1] != layer.in_features:
        raise ValueError(f"layer {name!r}: Linear({layer.in_features}, {layer.out_features}) receives shape "
                         f"{tuple(shape)}")
    return LayerSpec(name, "linear", tuple(shape), (shape[0], layer.out_features), None, param_sizes(layer),
                     2.0 * shape[0] * layer.in_features * layer.out_features)


def flatten_work(layer, name, shape):
    """The LayerSpec of Flatten on a global input `shape` (N, *rest) -> (N, prod(rest))."""
    return LayerSpec(name, "flatten", tuple(shape), (shape[0], math.prod(shape[1:])), None, param_sizes(layer), 0.0)
