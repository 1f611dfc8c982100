"""Batch-norm as separate reductions and applications (numba), so a distributed layer can allreduce in between.

Each loop runs over the (sample, channel) rows [r0, r1) of an (N, C, M) view; a call's rows are split
over the worker threads (`_workers.in_parallel`), the reductions' per-part sums added in part order.
"""
import numba
import numpy as np

from ..checks import check_channels_input, check_count, check_per_channel, check_same_shape
from ._workers import FLOPS_PER_ELEMENT, in_parallel, summed

__all__ = ["channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
           "batchnorm_backward_apply"]

# Reductions may be reassociated (so that LLVM vectorizes them); they still accumulate in float64.
_REDUCE_MATH = {"reassoc", "contract"}


def _channels_view(x, where):
    """x: (N, C, *S) -> a contiguous (N, C, M) view or copy."""
    check_channels_input(x, where)
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _per_channel(v, channels, name, where):
    """A (C,) float64 vector from an array-like (None -> None)."""
    if v is None:
        return None
    v = np.ascontiguousarray(v, dtype=np.float64)
    check_per_channel(v, channels, name, where)
    return v


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _channel_sum(x, r0, r1):
    N, C, M = x.shape
    out = np.zeros(C, dtype=np.float64)
    for r in range(r0, r1):
        n, c = r // C, r % C
        acc = 0.0
        for m in range(M):
            acc += x[n, c, m]
        out[c] += acc
    return out


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _channel_centered_sumsq(x, mean, r0, r1):
    N, C, M = x.shape
    out = np.zeros(C, dtype=np.float64)
    for r in range(r0, r1):
        n, c = r // C, r % C
        mu = mean[c]
        acc = 0.0
        for m in range(M):
            d = x[n, c, m] - mu
            acc += d * d
        out[c] += acc
    return out


@numba.njit(cache=True, nogil=True)
def _batchnorm_apply(x, mean, scale, shift, y, r0, r1):
    N, C, M = x.shape
    for r in range(r0, r1):
        n, c = r // C, r % C
        mu = mean[c]
        a = scale[c]
        b = shift[c]
        for m in range(M):
            y[n, c, m] = (x[n, c, m] - mu) * a + b


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _batchnorm_backward_reduce(dy, x, mean, r0, r1):
    N, C, M = x.shape
    sums = np.zeros((2, C), dtype=np.float64)
    for r in range(r0, r1):
        n, c = r // C, r % C
        mu = mean[c]
        s0 = 0.0
        s1 = 0.0
        for m in range(M):
            g = np.float64(dy[n, c, m])
            s0 += g
            s1 += g * (x[n, c, m] - mu)
        sums[0, c] += s0
        sums[1, c] += s1
    return sums


@numba.njit(cache=True, nogil=True)
def _batchnorm_backward_apply(dy, x, mean, scale, mean_dy, xc_coef, dx, r0, r1):
    N, C, M = x.shape
    for r in range(r0, r1):
        n, c = r // C, r % C
        mu = mean[c]
        a = scale[c]
        b = mean_dy[c]
        k = xc_coef[c]
        for m in range(M):
            dx[n, c, m] = a * (dy[n, c, m] - b - (x[n, c, m] - mu) * k)


def _by_rows(kernel, x, *args, passes=1):
    """[kernel(*args, r0, r1)] over the (sample, channel) rows of x (N, C, M), split over the worker threads."""
    return in_parallel(lambda r0, r1: kernel(*args, r0, r1), x.shape[0] * x.shape[1],
                       FLOPS_PER_ELEMENT * passes * x.size)


def channel_sum(x):
    """Sum over every axis but 1. x: (N, C, *S) -> (C,) float64."""
    xv = _channels_view(x, "channel_sum")
    return summed(_by_rows(_channel_sum, xv, xv))


def channel_centered_sumsq(x, mean):
    """Sum of (x - mean[c])**2 over every axis but 1. x: (N, C, *S), mean: (C,) -> (C,) float64."""
    xv = _channels_view(x, "channel_centered_sumsq")
    mean = _per_channel(mean, xv.shape[1], "mean", "channel_centered_sumsq")
    return summed(_by_rows(_channel_centered_sumsq, xv, xv, mean))


def batchnorm_apply(x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, per channel. x: (N, C, *S); mean, invstd, gamma, beta: (C,).

    gamma and beta may be None (no affine transform). y has x's dtype; the arithmetic is float64.
    """
    where = "batchnorm_apply"
    xv = _channels_view(x, where)
    C = xv.shape[1]
    mean = _per_channel(mean, C, "mean", where)
    scale = _per_channel(invstd, C, "invstd", where)
    if gamma is not None:
        scale = scale * _per_channel(gamma, C, "gamma", where)
    shift = np.zeros(C) if beta is None else _per_channel(beta, C, "beta", where)
    y = np.empty(xv.shape, dtype=x.dtype)
    _by_rows(_batchnorm_apply, xv, xv, mean, scale, shift, y, passes=2)
    return y.reshape(x.shape)


def batchnorm_backward_reduce(dy, x, mean, invstd):
    """The two per-channel sums the batch-norm gradient needs. dy, x: (N, C, *S); mean, invstd: (C,).

    Returns (sum_dy, sum_dy_xhat), each (C,) float64, with xhat = (x - mean) * invstd; they are
    also dbeta and dgamma.
    """
    where = "batchnorm_backward_reduce"
    check_same_shape(dy, "dy", x, "x", where)
    xv = _channels_view(x, where)
    dyv = _channels_view(dy, where)
    C = xv.shape[1]
    sum_dy, sum_dy_xc = summed(_by_rows(_batchnorm_backward_reduce, xv, dyv, xv, _per_channel(mean, C, "mean", where),
                                         passes=2))
    return sum_dy, sum_dy_xc * _per_channel(invstd, C, "invstd", where)


def batchnorm_backward_apply(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count):
    """Training-mode input gradient: dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count).

    dy, x: (N, C, *S); mean, invstd, gamma, sum_dy, sum_dy_xhat: (C,); count: the number of
    elements per channel over all ranks. gamma may be None (no affine transform). dx has dy's dtype.
    """
    where = "batchnorm_backward_apply"
    check_same_shape(dy, "dy", x, "x", where)
    xv = _channels_view(x, where)
    dyv = _channels_view(dy, where)
    C = xv.shape[1]
    check_count(count, where)
    invstd = _per_channel(invstd, C, "invstd", where)
    scale = invstd if gamma is None else invstd * _per_channel(gamma, C, "gamma", where)
    mean_dy = _per_channel(sum_dy, C, "sum_dy", where) / count
    xc_coef = invstd * _per_channel(sum_dy_xhat, C, "sum_dy_xhat", where) / count
    dx = np.empty(xv.shape, dtype=dy.dtype)
    _by_rows(_batchnorm_backward_apply, xv, dyv, xv, _per_channel(mean, C, "mean", where), scale, mean_dy, xc_coef,
             dx, passes=3)
    return dx.reshape(x.shape)
