"""GPU kernels (CuPy + CUDA C + cuBLAS): see `hpcnn.kernels` for the signatures.

hpcnn.kernels imports this package only when a cupy array shows up. Importing it without CuPy
is an ImportError that says what to install (unless HPCNN_GPU_EMULATE=1, which the tests set to
run these kernels' host code and CUDA source on the CPU: see tests/gpu/emulator.py).
"""
import os

if os.environ.get("HPCNN_GPU_EMULATE") != "1":
    try:
        import cupy  # noqa: F401
    except ImportError:
        from ._cuda import _missing_cupy
        raise _missing_cupy() from None

from .conv import conv_forward, conv_backward_data, conv_backward_filter, conv_backward_bias  # noqa: E402
from .pool import maxpool_forward, maxpool_backward, avgpool_forward, avgpool_backward  # noqa: E402
from .norm import (channel_sum, channel_centered_sumsq, batchnorm_apply, batchnorm_backward_reduce,  # noqa: E402
                   batchnorm_backward_apply)
from .activation import relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward  # noqa: E402
from .loss import softmax_cross_entropy, squared_error  # noqa: E402
from .upsample import upsample_nearest_forward, upsample_nearest_backward  # noqa: E402
from ._cuda import set_tf32, tf32_enabled  # noqa: E402

__all__ = [
    "conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
    "batchnorm_backward_apply", "relu_forward", "relu_backward", "leaky_relu_forward",
    "leaky_relu_backward", "softmax_cross_entropy", "squared_error", "upsample_nearest_forward",
    "upsample_nearest_backward", "set_tf32", "tf32_enabled",
]
