"""Transposed convolutions: ConvTranspose2d and ConvTranspose3d (the adjoint of a convolution), on the conv kernels.

A transposed convolution's forward is a convolution's data gradient and its data gradient is a
convolution's forward (`hpcnn.geometry.transposed_geometry` gives that convolution); its filter
gradient is the convolution's filter gradient with the roles of input and output exchanged.
"""
import math

from .. import kernels
from ..backend import array_module
from ..geometry import as_tuple, transposed_geometry, transposed_output_shape, window_input_range
from .init import check_dtype, resolve_dtype, resolve_rng, uniform_fan_in
from .module import Module
from .work import LayerSpec, param_sizes

__all__ = ["ConvTranspose2d", "ConvTranspose3d", "conv_transpose_work"]


class _ConvTransposeNd(Module):
    nd = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, rng=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{name}: channel counts must be positive, received in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        if groups != 1:
            raise ValueError(f"{name}: only groups=1 is implemented, received groups={groups}")
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be an int or {self.nd} ints (as in PyTorch), received {padding!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        nd = self.nd
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size")
        self.stride = as_tuple(stride, nd, "stride")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.padding = (padding,) * nd if isinstance(padding, int) else tuple(int(p) for p in padding)
        self.output_padding = (output_padding,) * nd if isinstance(output_padding, int) else \
            tuple(int(p) for p in output_padding)
        try:
            # the convolution this layer is the adjoint of (maps this layer's output back to its input)
            self.geometry = transposed_geometry(nd, self.kernel_size, self.stride, self.padding,
                                                self.output_padding, self.dilation)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        dtype = resolve_dtype(dtype)
        rng = resolve_rng(rng)
        # PyTorch's init: kaiming-uniform(a=sqrt(5)) over fan_in = weight.size(1) * prod(kernel)
        fan_in = self.out_channels * math.prod(self.kernel_size)
        self._add_param("weight", uniform_fan_in(rng, (self.in_channels, self.out_channels) + self.kernel_size,
                                                 fan_in, dtype))
        if bias:
            self._add_param("bias", uniform_fan_in(rng, (self.out_channels,), fan_in, dtype))
        self.x = None

    def output_shape(self, spatial):
        """The output spatial shape for an input spatial shape."""
        return transposed_output_shape(spatial, self.kernel_size, self.stride, self.padding, self.output_padding,
                                       self.dilation)

    def _reach(self, in_spatial, out_spatial):
        """(rows, pads): the output rows [0, rows) that some window writes, per dimension, and the adjoint
        convolution's per-side padding over them (rows past them, output_padding's, hold the bias only)."""
        g = self.geometry
        rows, pads = [], []
        for k, (i, o) in enumerate(zip(in_spatial, out_spatial)):
            kernel, stride, dilation, pad_lo, _ = g.along(k)
            a, b, plo, phi = window_input_range(0, i, o, kernel, stride, dilation, pad_lo)
            rows.append(b)
            pads.append((plo, phi))
        return tuple(rows), tuple(pads)

    def forward(self, x):
        self.check_input(x, ndim=self.nd + 2, channels=self.in_channels)
        check_dtype(self.describe(), x, self.params["weight"].dtype)
        out = self.output_shape(x.shape[2:])
        if min(out) < 1:
            raise ValueError(f"{self.describe()}: input shape {tuple(x.shape)} gives an empty output {out}")
        g = self.geometry
        self.x = x
        rows, pads = self._reach(x.shape[2:], out)
        core = kernels.conv_backward_data(x, self.params["weight"], rows, g.stride, pads, g.dilation)
        if rows != out:
            y = array_module(x).zeros(x.shape[:1] + (self.out_channels,) + out, x.dtype)
            y[(slice(None), slice(None)) + tuple(slice(0, r) for r in rows)] = core
        else:
            y = core
        if "bias" in self.params:
            y += self.params["bias"].reshape((1, -1) + (1,) * self.nd)
        return y

    def backward(self, dy):
        g = self.geometry
        x = self.x
        w = self.params["weight"]
        rows, pads = self._reach(x.shape[2:], dy.shape[2:])
        if rows != tuple(dy.shape[2:]):
            xp = array_module(dy)
            dy_core = xp.ascontiguousarray(dy[(slice(None), slice(None)) + tuple(slice(0, r) for r in rows)])
        else:
            dy_core = dy
        self.grads["weight"][...] = kernels.conv_backward_filter(dy_core, x, g.kernel, g.stride, pads, g.dilation)
        if "bias" in self.params:
            self.grads["bias"][...] = kernels.conv_backward_bias(dy)
        return kernels.conv_forward(dy_core, w, None, g.stride, pads, g.dilation)

    def describe(self):
        def c(v):
            return str(v[0]) if len(set(v)) == 1 else str(tuple(v))
        parts = [f"kernel_size={c(self.kernel_size)}"]
        for key, default in (("stride", 1), ("padding", 0), ("output_padding", 0), ("dilation", 1)):
            value = getattr(self, key)
            if any(v != default for v in value):
                parts.append(f"{key}={c(value)}")
        extra = "" if "bias" in self.params else ", bias=False"
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, {', '.join(parts)}{extra})"


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution, as PyTorch's (groups=1).

    Parameters: weight (in_channels, out_channels, kH, kW), bias (out_channels,) when bias=True.
    x: (N, in_channels, H, W) -> y: (N, out_channels, Ho, Wo), Ho = (H - 1) * sH - 2 * pH + dH * (kH - 1)
    + output_padding + 1 (likewise Wo).
    """
    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution, as PyTorch's (groups=1); weight (in_channels, out_channels, kD, kH, kW)."""
    nd = 3


def conv_transpose_work(layer, name, shape):
    """The LayerSpec of a transposed convolution on a global input `shape` (N, C, *S); its geometry is the
    adjoint convolution's (from the output back to the input)."""
    if len(shape) != layer.nd + 2 or shape[1] != layer.in_channels:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects {layer.in_channels} channels on a "
                         f"{layer.nd + 2}-D input, receives shape {tuple(shape)}")
    out = (shape[0], layer.out_channels) + layer.output_shape(shape[2:])
    if min(out[2:]) < 1:
        raise ValueError(f"layer {name!r} ({layer.describe()}): input {tuple(shape)} gives an empty output")
    # each input element scatters into out_channels * prod(kernel) outputs: 2 flops per multiply-add
    flops = 2.0 * math.prod(shape) * layer.out_channels * math.prod(layer.kernel_size)
    spec = LayerSpec(name, "conv_transpose", tuple(shape), out, layer.geometry, param_sizes(layer), flops)
    spec.options["bias"] = "bias" in layer.params
    return spec
