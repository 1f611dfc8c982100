"""Elementwise activations: ReLU and LeakyReLU (any shape, float32 or float64)."""
from .. import kernels
from .module import Module
from .work import pointwise_spec

__all__ = ["ReLU", "LeakyReLU", "relu_work", "leaky_relu_work"]


class ReLU(Module):
    """y = max(x, 0). x: any shape -> y: same shape. Keeps y for backward."""

    def __init__(self):
        super().__init__()
        self.y = None

    def forward(self, x):
        self.check_input(x)
        self.y = kernels.relu_forward(x)
        return self.y

    def backward(self, dy):
        return kernels.relu_backward(dy, self.y)

    def describe(self):
        return "ReLU()"


class LeakyReLU(Module):
    """y = x for x > 0, negative_slope * x otherwise. x: any shape -> y: same shape. Keeps x for backward."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.x = None

    def forward(self, x):
        self.check_input(x)
        self.x = x
        return kernels.leaky_relu_forward(x, self.negative_slope)

    def backward(self, dy):
        return kernels.leaky_relu_backward(dy, self.x, self.negative_slope)

    def describe(self):
        return f"LeakyReLU(negative_slope={self.negative_slope:g})"


def relu_work(layer, name, shape):
    """The LayerSpec of ReLU on a global input `shape`."""
    return pointwise_spec(name, "relu", layer, shape, 1.0)


def leaky_relu_work(layer, name, shape):
    """The LayerSpec of LeakyReLU on a global input `shape`."""
    return pointwise_spec(name, "leaky_relu", layer, shape, 2.0)
