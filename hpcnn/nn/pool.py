"""Pooling layers: max and average pooling over 2-D and 3-D windows, and global average pooling."""
import math

from .. import kernels
from ..backend import array_module
from ..geometry import WindowGeometry
from .conv import describe_geometry
from .module import Module
from .work import LayerSpec, param_sizes, window_spec

__all__ = ["MaxPool2d", "MaxPool3d", "AvgPool2d", "AvgPool3d", "GlobalAvgPool", "pool_work", "global_avgpool_work"]


class _PoolNd(Module):
    nd = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.geometry = WindowGeometry(self.nd, kernel_size, kernel_size if stride is None else stride, padding)
        for r, (lo, hi) in zip(self.geometry.kernel, self.geometry.padding):
            # PyTorch's rule: a window must never lie entirely in the padding.
            if 2 * max(lo, hi) > r:
                raise ValueError(f"{type(self).__name__}: padding {self.geometry.padding} must be at most half "
                                 f"the kernel size {self.geometry.kernel}")
        self.x_spatial = None

    kernel_size = property(lambda self: self.geometry.kernel)
    stride = property(lambda self: self.geometry.stride)
    padding = property(lambda self: self.geometry.padding)

    def _check(self, x):
        self.check_input(x, ndim=self.nd + 2)
        if min(self.geometry.output_shape(x.shape[2:])) < 1:
            raise ValueError(f"{self.describe()}: input spatial shape {tuple(x.shape[2:])} is smaller than the "
                             f"window after padding, received shape {tuple(x.shape)}")
        self.x_spatial = tuple(x.shape[2:])

    def describe(self):
        return f"{type(self).__name__}({describe_geometry(self.geometry, with_dilation=False)})"


class _MaxPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)
        self.argmax = None

    def forward(self, x):
        self._check(x)
        g = self.geometry
        y, self.argmax = kernels.maxpool_forward(x, g.kernel, g.stride, g.padding)
        return y

    def backward(self, dy):
        return kernels.maxpool_backward(dy, self.argmax, self.x_spatial)


class _AvgPoolNd(_PoolNd):
    def forward(self, x):
        self._check(x)
        g = self.geometry
        return kernels.avgpool_forward(x, g.kernel, g.stride, g.padding)

    def backward(self, dy):
        g = self.geometry
        return kernels.avgpool_backward(dy, self.x_spatial, g.kernel, g.stride, g.padding)


class MaxPool2d(_MaxPoolNd):
    """Max over (kH, kW) windows; padding counts as -inf. x: (N, C, H, W) -> y: (N, C, Ho, Wo)."""
    nd = 2


class MaxPool3d(_MaxPoolNd):
    """Max over (kD, kH, kW) windows; padding counts as -inf. x: (N, C, D, H, W) -> y: (N, C, Do, Ho, Wo)."""
    nd = 3


class AvgPool2d(_AvgPoolNd):
    """Mean over (kH, kW) windows, padding counted as zeros (count_include_pad=True).

    x: (N, C, H, W) -> y: (N, C, Ho, Wo)."""
    nd = 2


class AvgPool3d(_AvgPoolNd):
    """Mean over (kD, kH, kW) windows, padding counted as zeros (count_include_pad=True).

    x: (N, C, D, H, W) -> y: (N, C, Do, Ho, Wo)."""
    nd = 3


class GlobalAvgPool(Module):
    """Mean over every spatial dimension. x: (N, C, H, W) or (N, C, D, H, W) -> y: (N, C)."""

    def __init__(self):
        super().__init__()
        self.x_shape = None

    def forward(self, x):
        self.check_input(x, ndim=(4, 5))
        self.x_shape = tuple(x.shape)
        return x.mean(axis=tuple(range(2, x.ndim)))

    def backward(self, dy):
        xp = array_module(dy)
        n, c, *spatial = self.x_shape
        scaled = dy / math.prod(spatial)
        return xp.ascontiguousarray(xp.broadcast_to(scaled.reshape((n, c) + (1,) * len(spatial)), self.x_shape))

    def describe(self):
        return "GlobalAvgPool()"


def _spatial_input(layer, name, shape, nd):
    if len(shape) != nd + 2:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects a {nd + 2}-D input, receives shape "
                         f"{tuple(shape)}")


def pool_work(layer, name, shape):
    """The LayerSpec of max or average pooling `layer` on a global input `shape` (N, C, *S)."""
    _spatial_input(layer, name, shape, layer.nd)
    kind = "maxpool" if isinstance(layer, _MaxPoolNd) else "avgpool"
    return window_spec(name, kind, layer, shape, shape[1], float(math.prod(layer.geometry.kernel)))


def global_avgpool_work(layer, name, shape):
    """The LayerSpec of global average pooling on a global input `shape` (N, C, *S) -> (N, C)."""
    if len(shape) not in (4, 5):
        raise ValueError(f"layer {name!r}: GlobalAvgPool() expects a 4-D or 5-D input, receives shape {tuple(shape)}")
    return LayerSpec(name, "global_avgpool", tuple(shape), tuple(shape[:2]), None, param_sizes(layer),
                     float(math.prod(shape)))
