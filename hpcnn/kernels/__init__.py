"""Array math for CNN layers: no MPI, no layers, no state. One signature, CPU (numpy + numba) and GPU (cupy).

Every function takes and returns arrays of the module that owns its first array argument
(numpy -> `hpcnn.kernels.cpu`, cupy -> `hpcnn.kernels.gpu`, an emulated-gpu array -> the CPU kernel
behind an explicit host round trip: its device arguments copied to the host, its results copied
back, so the emulated device sees exactly what a GPU returns; a host array among a device kernel's
arguments is refused, as it would be a hidden upload on a GPU). Spatial operations work on
2-D (N, C, H, W) and 3-D (N, C, D, H, W) data alike; `nd` below is 2 or 3.

Geometry arguments (`stride`, `dilation`, `kernel`) are ints or tuples of `nd` ints; `padding`
is an int, 'same', 'valid', `nd` ints, or `nd` (lo, hi) pairs (see `hpcnn.geometry.normalize_padding`):
per-side padding is what lets a distributed layer pad only at the global edges of the image.

Reductions that a distributed layer must sum over ranks (batch-norm statistics, loss sums) are
separate functions returning float64 partial sums, so that the caller can allreduce between them.

Functions
---------
conv_forward(x, w, bias=None, stride=1, padding=0, dilation=1) -> y
    x: (N, C, *S), w: (K, C, *R), bias: (K,) or None -> y: (N, K, *O)
conv_backward_data(dy, w, x_spatial, stride=1, padding=0, dilation=1) -> dx
    dy: (N, K, *O), w: (K, C, *R), x_spatial: S -> dx: (N, C, *S)
conv_backward_filter(x, dy, kernel, stride=1, padding=0, dilation=1) -> dw
    x: (N, C, *S), dy: (N, K, *O), kernel: R -> dw: (K, C, *R)
conv_backward_bias(dy) -> db: (K,)

maxpool_forward(x, kernel, stride=None, padding=0) -> (y, argmax)
    x: (N, C, *S) -> y: (N, C, *O); argmax: (N, C, *O) int64, the flat index into x's spatial
    block of the chosen element (padding is -inf; ties go to the first element in scan order)
maxpool_backward(dy, argmax, x_spatial) -> dx: (N, C, *S)
avgpool_forward(x, kernel, stride=None, padding=0) -> y
    divisor is the full window size (PyTorch's count_include_pad=True)
avgpool_backward(dy, x_spatial, kernel, stride=None, padding=0) -> dx

channel_sum(x) -> (C,) float64                       sum over every axis but 1
channel_centered_sumsq(x, mean) -> (C,) float64      sum of (x - mean[c])**2
batchnorm_apply(x, mean, invstd, gamma, beta) -> y   y = (x - mean) * invstd * gamma + beta
batchnorm_backward_reduce(dy, x, mean, invstd) -> (sum_dy, sum_dy_xhat), each (C,) float64
batchnorm_backward_apply(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count) -> dx
    training mode: dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count)

relu_forward(x) -> y;  relu_backward(dy, y) -> dx
leaky_relu_forward(x, slope) -> y;  leaky_relu_backward(dy, x, slope) -> dx

softmax_cross_entropy(logits, labels, ignore_index=-100) -> (loss_sum, dlogits, count)
    logits: (N, C) or (N, C, *S); labels: (N,) or (N, *S) integers. loss_sum is the float64
    sum of per-element losses over non-ignored elements, dlogits its gradient (same shape and
    dtype as logits), count the number of non-ignored elements. On the CPU loss_sum is a float
    and count an int; on a device they are 0-d device arrays (float64, int64), so that no host
    synchronisation happens inside the loss.
squared_error(pred, target) -> (loss_sum, dpred)     sum of (pred - target)**2 and its gradient
    (loss_sum as above: a float on the CPU, a 0-d float64 device array on a device)

upsample_nearest_forward(x, scale) -> y              scale: int or nd ints; y: (N, C, *(S*scale))
upsample_nearest_backward(dy, scale) -> dx           sums each scale-block of dy

Composed of array-module operations, the same code on every device (hpcnn.kernels.groupnorm):
group_moments(x, groups) -> (count, sums, m2)        per (sample, group) float64 partial sums, (N, G)
group_norm_apply(x, groups, mean, invstd, weight, bias) -> y
group_norm_backward_reduce(dy, x, groups, mean, invstd, weight) -> (sum_g, sum_g_xhat, dweight, dbias)
group_norm_backward_apply(dy, x, groups, mean, invstd, weight, sum_g, sum_g_xhat, count) -> dx
and (hpcnn.kernels.resample):
upsample_linear_forward(x, scale, edges=None) -> y   bilinear / trilinear, align_corners=False
upsample_linear_backward(dy, scale, in_spatial, edges=None) -> dx
"""
import numpy as np

from .. import emulated
from ..backend import is_device_array
from . import cpu

__all__ = [
    "conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
    "batchnorm_backward_apply", "relu_forward", "relu_backward", "leaky_relu_forward",
    "leaky_relu_backward", "softmax_cross_entropy", "squared_error", "upsample_nearest_forward",
    "upsample_nearest_backward",
]


def _to_host(value):
    if type(value) is emulated.ndarray:
        return value.get()
    if isinstance(value, np.ndarray):
        raise TypeError("a host (numpy) array was passed to a kernel on emulated-gpu arrays: move it to the "
                        "device explicitly")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


def _to_device(value):
    if isinstance(value, np.ndarray):
        return emulated.asarray(value)
    if isinstance(value, (float, int, np.generic)) and not isinstance(value, bool):
        # a GPU kernel's scalar results (loss sums, counts) are 0-d device arrays
        return emulated.asarray(np.asarray(value, np.float64 if isinstance(value, (float, np.floating)) else np.int64))
    if isinstance(value, tuple):
        return tuple(_to_device(v) for v in value)
    return value


def _emulated(name):
    """The CPU kernel `name` behind the explicit host round trip of the emulated GPU."""
    kernel = getattr(cpu, name)

    def call(*args, **kwargs):
        return _to_device(kernel(*_to_host(args), **{k: _to_host(v) for k, v in kwargs.items()}))
    return call


def _dispatched(name):
    host, round_trip = getattr(cpu, name), _emulated(name)

    def call(x, *args, **kwargs):
        if type(x) is np.ndarray:
            return host(x, *args, **kwargs)
        if type(x) is emulated.ndarray:
            return round_trip(x, *args, **kwargs)
        if is_device_array(x):
            from . import gpu
            return getattr(gpu, name)(x, *args, **kwargs)
        return host(x, *args, **kwargs)
    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = getattr(cpu, name).__doc__
    return call


for _name in __all__:
    globals()[_name] = _dispatched(_name)
del _name

from .groupnorm import (group_moments, group_norm_apply, group_norm_backward_apply,  # noqa: E402
                        group_norm_backward_reduce)

from .resample import upsample_linear_backward, upsample_linear_forward  # noqa: E402

__all__ += ["upsample_linear_forward", "upsample_linear_backward"]
__all__ += ["group_moments", "group_norm_apply", "group_norm_backward_reduce", "group_norm_backward_apply"]
