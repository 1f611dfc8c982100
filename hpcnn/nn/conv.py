"""Convolution layers: Conv2d and Conv3d on the conv kernels, with PyTorch's constructor and parameters."""
import math

from .. import kernels
from ..geometry import WindowGeometry
from .init import check_dtype, resolve_dtype, resolve_rng, uniform_fan_in
from .module import Module
from .work import window_spec

__all__ = ["Conv2d", "Conv3d", "describe_geometry", "conv_work"]


def _compact(values):
    """(3, 3) -> '3', (1, 2) -> '(1, 2)': the way a reader would have typed it."""
    values = tuple(values)
    return str(values[0]) if len(set(values)) == 1 else str(values)


def describe_geometry(geometry, with_dilation=True):
    """The non-default geometry arguments as they would appear in a constructor call."""
    parts = [f"kernel_size={_compact(geometry.kernel)}"]
    if any(s != 1 for s in geometry.stride):
        parts.append(f"stride={_compact(geometry.stride)}")
    if any(lo or hi for lo, hi in geometry.padding):
        symmetric = all(lo == hi for lo, hi in geometry.padding)
        parts.append("padding=" + (_compact(lo for lo, _ in geometry.padding) if symmetric
                                   else str(geometry.padding)))
    if with_dilation and any(d != 1 for d in geometry.dilation):
        parts.append(f"dilation={_compact(geometry.dilation)}")
    return ", ".join(parts)


class _ConvNd(Module):
    nd = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 rng=None, dtype=None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{type(self).__name__}: channel counts must be positive, received "
                             f"in_channels={in_channels}, out_channels={out_channels}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.geometry = WindowGeometry(self.nd, kernel_size, stride, padding, dilation)
        dtype = resolve_dtype(dtype)
        rng = resolve_rng(rng)
        fan_in = self.in_channels * math.prod(self.geometry.kernel)
        self._add_param("weight", uniform_fan_in(rng, (self.out_channels, self.in_channels) + self.kernel_size,
                                                 fan_in, dtype))
        if bias:
            self._add_param("bias", uniform_fan_in(rng, (self.out_channels,), fan_in, dtype))
        self.x = None

    # The geometry is the one source of truth; these mirror torch's attribute names.
    kernel_size = property(lambda self: self.geometry.kernel)
    stride = property(lambda self: self.geometry.stride)
    padding = property(lambda self: self.geometry.padding)
    dilation = property(lambda self: self.geometry.dilation)

    def forward(self, x):
        self.check_input(x, ndim=self.nd + 2, channels=self.in_channels)
        check_dtype(self.describe(), x, self.params["weight"].dtype)
        g = self.geometry
        out = g.output_shape(x.shape[2:])
        if min(out) < 1:
            raise ValueError(f"{self.describe()}: input spatial shape {tuple(x.shape[2:])} is smaller than "
                             f"the (dilated) kernel after padding, received shape {tuple(x.shape)}")
        self.x = x
        return kernels.conv_forward(x, self.params["weight"], self.params.get("bias"), g.stride, g.padding,
                                    g.dilation)

    def backward(self, dy):
        g = self.geometry
        x = self.x
        self.grads["weight"][...] = kernels.conv_backward_filter(x, dy, g.kernel, g.stride, g.padding, g.dilation)
        if "bias" in self.params:
            self.grads["bias"][...] = kernels.conv_backward_bias(dy)
        return kernels.conv_backward_data(dy, self.params["weight"], x.shape[2:], g.stride, g.padding, g.dilation)

    def describe(self):
        extra = "" if "bias" in self.params else ", bias=False"
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"{describe_geometry(self.geometry)}{extra})")


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation, as PyTorch's).

    Parameters: weight (out_channels, in_channels, kH, kW), bias (out_channels,) when bias=True.
    x: (N, in_channels, H, W) -> y: (N, out_channels, Ho, Wo) with Ho, Wo from `self.geometry`.
    padding: an int, 'same' (stride 1), 'valid', 2 ints, or 2 (lo, hi) pairs.
    """
    nd = 2


class Conv3d(_ConvNd):
    """3-D convolution (cross-correlation, as PyTorch's).

    Parameters: weight (out_channels, in_channels, kD, kH, kW), bias (out_channels,) when bias=True.
    x: (N, in_channels, D, H, W) -> y: (N, out_channels, Do, Ho, Wo) with the sizes from `self.geometry`.
    padding: an int, 'same' (stride 1), 'valid', 3 ints, or 3 (lo, hi) pairs.
    """
    nd = 3


def conv_work(layer, name, shape):
    """The LayerSpec of convolution `layer` on a global input `shape` (N, C, *S)."""
    if len(shape) != layer.nd + 2 or shape[1] != layer.in_channels:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects {layer.in_channels} channels on a "
                         f"{layer.nd + 2}-D input, receives shape {tuple(shape)}")
    taps = math.prod(layer.geometry.kernel)
    spec = window_spec(name, "conv", layer, shape, layer.out_channels, 2.0 * layer.in_channels * taps)
    spec.options["bias"] = "bias" in layer.params
    return spec
