"""Array math for CNN layers: no MPI, no layers, no state. One signature, CPU (numpy + numba) and GPU (cupy).

Every function takes and returns arrays of the module that owns its first array argument
(numpy -> `hpcnn.kernels.cpu`, cupy -> `hpcnn.kernels.gpu`). Spatial operations work on
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
    dtype as logits), count the number of non-ignored elements (int).
squared_error(pred, target) -> (loss_sum, dpred)     sum of (pred - target)**2 and its gradient

upsample_nearest_forward(x, scale) -> y              scale: int or nd ints; y: (N, C, *(S*scale))
upsample_nearest_backward(dy, scale) -> dx           sums each scale-block of dy
"""
from ..backend import is_gpu_array
from . import cpu

__all__ = [
    "conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
    "batchnorm_backward_apply", "relu_forward", "relu_backward", "leaky_relu_forward",
    "leaky_relu_backward", "softmax_cross_entropy", "squared_error", "upsample_nearest_forward",
    "upsample_nearest_backward",
]


def _implementation(x):
    if is_gpu_array(x):
        from . import gpu
        return gpu
    return cpu


def _dispatched(name):
    def call(x, *args, **kwargs):
        return getattr(_implementation(x), name)(x, *args, **kwargs)
    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = getattr(cpu, name).__doc__
    return call


for _name in __all__:
    globals()[_name] = _dispatched(_name)
del _name
