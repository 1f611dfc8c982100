"""Group normalization (PyTorch's GroupNorm) as array math on any device: composed of array-module operations
(numpy, cupy or the emulated GPU), no MPI.

x: (N, C, *S) with C = G * (C // G); a group is C // G channels of one sample over all of *S. The
statistics are float64 partial sums per (sample, group), so that a distributed layer can merge them over
the ranks that hold the other spatial blocks of its samples before normalizing.
"""
import math

import numpy as np

__all__ = ["group_moments", "group_norm_apply", "group_norm_backward_reduce", "group_norm_backward_apply"]


def _grouped(x, groups):
    """x as (N, G, C // G, S) (a view)."""
    return x.reshape(x.shape[0], groups, x.shape[1] // groups, math.prod(x.shape[2:]))


def _per_channel(v, groups, c):
    """A (C,) array as (1, G, C // G, 1)."""
    return v.reshape(1, groups, c // groups, 1)


def _per_group(v):
    """A (N, G) array as (N, G, 1, 1)."""
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


def group_moments(x, groups):
    """(count, sums, m2): the elements per group in this block, and per (sample, group) float64 sums and
    sums of squares about this block's own group means, each (N, G)."""
    xg = _grouped(x, groups)
    count = xg.shape[2] * xg.shape[3]
    sums = xg.sum(axis=(2, 3), dtype=np.float64)
    if count == 0:
        return 0, sums, sums.copy()
    centered = xg.astype(np.float64) - _per_group(sums / count)
    return count, sums, (centered * centered).sum(axis=(2, 3))


def group_norm_apply(x, groups, mean, invstd, weight, bias):
    """y = (x - mean[n, g]) * invstd[n, g] * weight[c] + bias[c]; mean, invstd (N, G) in x's dtype; weight and
    bias (C,) or None (affine=False)."""
    xg = _grouped(x, groups)
    y = (xg - _per_group(mean)) * _per_group(invstd)
    if weight is not None:
        y = y * _per_channel(weight, groups, x.shape[1]) + _per_channel(bias, groups, x.shape[1])
    return y.reshape(x.shape)


def group_norm_backward_reduce(dy, x, groups, mean, invstd, weight):
    """(sum_g, sum_g_xhat, dweight, dbias) of this block: per (sample, group) float64 sums of g = dy * weight and
    of g * xhat, each (N, G); and the affine parameters' gradients over this block, (C,) in dy's dtype (None
    without weight)."""
    c = x.shape[1]
    dyg = _grouped(dy, groups)
    xhat = (_grouped(x, groups) - _per_group(mean)) * _per_group(invstd)
    g = dyg * _per_channel(weight, groups, c) if weight is not None else dyg
    sum_g = g.sum(axis=(2, 3), dtype=np.float64)
    sum_g_xhat = (g * xhat).sum(axis=(2, 3), dtype=np.float64)
    if weight is None:
        return sum_g, sum_g_xhat, None, None
    dweight = (dyg * xhat).sum(axis=(0, 3)).reshape(c).astype(dy.dtype)
    dbias = dyg.sum(axis=(0, 3)).reshape(c).astype(dy.dtype)
    return sum_g, sum_g_xhat, dweight, dbias


def group_norm_backward_apply(dy, x, groups, mean, invstd, weight, sum_g, sum_g_xhat, count):
    """dx = invstd * (g - sum_g / count - xhat * sum_g_xhat / count), g = dy * weight; sums over a whole group
    (every block of it), count its elements."""
    c = x.shape[1]
    dyg = _grouped(dy, groups)
    xhat = (_grouped(x, groups) - _per_group(mean)) * _per_group(invstd)
    g = dyg * _per_channel(weight, groups, c) if weight is not None else dyg
    m1 = _per_group((sum_g / count).astype(dy.dtype))
    m2 = _per_group((sum_g_xhat / count).astype(dy.dtype))
    return ((g - m1 - xhat * m2) * _per_group(invstd)).reshape(dy.shape)
