"""CPU kernels (numpy + numba): see `hpcnn.kernels` for the signatures."""
from .conv import conv_backward_bias
from .layout import conv_forward, conv_backward_data, conv_backward_filter
from .pool import maxpool_forward, maxpool_backward, avgpool_forward, avgpool_backward
from .norm import (channel_sum, channel_centered_sumsq, batchnorm_apply, batchnorm_backward_reduce,
                   batchnorm_backward_apply)
from .activation import relu_forward, relu_backward, leaky_relu_forward, leaky_relu_backward
from .loss import softmax_cross_entropy, squared_error
from .upsample import upsample_nearest_forward, upsample_nearest_backward

__all__ = [
    "conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias",
    "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
    "channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
    "batchnorm_backward_apply", "relu_forward", "relu_backward", "leaky_relu_forward",
    "leaky_relu_backward", "softmax_cross_entropy", "squared_error", "upsample_nearest_forward",
    "upsample_nearest_backward",
]
