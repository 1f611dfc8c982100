"""Batch-norm as separate reductions and applications on the GPU (CuPy), as hpcnn.kernels.cpu.norm.

The per-channel reductions accumulate in float64 with a block reduction in shared memory: each block
of `HP_BLOCK` threads takes one part of one channel's N*M elements (consecutive threads read
consecutive elements), reduces its threads' sums in shared memory and writes one partial per
(channel, part); a second, small reduction sums the parts. No global atomics, and the result does not
depend on the order blocks run in. The same reduction gives the convolution's bias gradient.
"""
from ..checks import check_channels_input, check_count, check_per_channel, check_same_shape
from ._cuda import Program, array_module

__all__ = ["channel_sum", "channel_centered_sumsq", "batchnorm_apply", "batchnorm_backward_reduce",
           "batchnorm_backward_apply"]

_PROGRAM = Program("norm", r"""
// x, dy: (N, C, M). Task t = part * C + c reduces elements j = part*B + tid, j += parts*B of channel c,
// j = n*M + m. mode 0: out0 = sum x; 1: out0 = sum (x - mean[c])^2; 2: out0 = sum dy, out1 = sum dy*(x - mean[c]).
// out0, out1: (C, parts) partial sums.
extern "C" __global__ void channel_reduce(const T* __restrict__ x, const T* __restrict__ dy,
                                          const double* __restrict__ mean, double* __restrict__ out0,
                                          double* __restrict__ out1, i64 N, int C, i64 M, int parts, int mode)
{
    __shared__ double s0[HP_BLOCK];
    __shared__ double s1[HP_BLOCK];
    const i64 per = N * M;
    for (i64 task = blockIdx.x; task < (i64)C * parts; task += gridDim.x) {
        const int c = task % C;
        const int part = task / C;
        const double mu = mode == 0 ? 0.0 : mean[c];
        double a0 = 0.0, a1 = 0.0;
        for (i64 j = (i64)part * blockDim.x + threadIdx.x; j < per; j += (i64)parts * blockDim.x) {
            const i64 n = j / M;
            const i64 at = (n * C + c) * M + (j - n * M);
            if (mode == 0) {
                a0 += (double)x[at];
            } else if (mode == 1) {
                const double d = (double)x[at] - mu;
                a0 += d * d;
            } else {
                const double g = (double)dy[at];
                a0 += g;
                a1 += g * ((double)x[at] - mu);
            }
        }
        s0[threadIdx.x] = a0;
        s1[threadIdx.x] = a1;
        __syncthreads();
        // a tree over any block size: the upper half (rounded down) adds into the lower half
        for (unsigned int width = blockDim.x; width > 1;) {
            const unsigned int half = (width + 1) / 2;
            if (threadIdx.x < width - half) {
                s0[threadIdx.x] += s0[threadIdx.x + half];
                s1[threadIdx.x] += s1[threadIdx.x + half];
            }
            __syncthreads();
            width = half;
        }
        if (threadIdx.x == 0) {
            out0[(i64)c * parts + part] = s0[0];
            if (mode == 2) out1[(i64)c * parts + part] = s1[0];
        }
        __syncthreads();  // s0, s1 are reused by the block's next task
    }
}

// y = (x - mean[c]) * scale[c] + shift[c] in double; x, y: (N, C, M).
extern "C" __global__ void batchnorm_apply(const T* __restrict__ x, const double* __restrict__ mean,
                                           const double* __restrict__ scale, const double* __restrict__ shift,
                                           T* __restrict__ y, i64 total, int C, i64 M)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const int c = (e / M) % C;
        y[e] = (T)(((double)x[e] - mean[c]) * scale[c] + shift[c]);
    }
}

// dx = scale[c] * (dy - mean_dy[c] - (x - mean[c]) * xc_coef[c]) in double.
extern "C" __global__ void batchnorm_backward_apply(const T* __restrict__ dy, const T* __restrict__ x,
                                                    const double* __restrict__ mean,
                                                    const double* __restrict__ scale,
                                                    const double* __restrict__ mean_dy,
                                                    const double* __restrict__ xc_coef, T* __restrict__ dx,
                                                    i64 total, int C, i64 M)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const int c = (e / M) % C;
        dx[e] = (T)(scale[c] * ((double)dy[e] - mean_dy[c] - ((double)x[e] - mean[c]) * xc_coef[c]));
    }
}
""")

# Parts per channel: enough blocks to fill a large GPU (a few thousand in all), each thread summing at
# least _PER_THREAD elements.
_TARGET_BLOCKS = 4096
_PER_THREAD = 8


def _parts(channels, per_channel, threads):
    by_work = -(-per_channel // (threads * _PER_THREAD))
    return int(max(1, min(by_work, max(_TARGET_BLOCKS // max(channels, 1), 1))))


def _channels_view(x, where):
    """x: (N, C, *S) -> a contiguous (N, C, M) view or copy."""
    check_channels_input(x, where)
    return array_module().ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _per_channel(v, channels, name, where):
    """A (C,) float64 device vector from an array-like (None -> None)."""
    if v is None:
        return None
    xp = array_module()
    v = xp.ascontiguousarray(xp.asarray(v, dtype=xp.float64))
    check_per_channel(v, channels, name, where)
    return v


def _reduce(mode, xv, dyv=None, mean=None):
    xp = array_module()
    n, c, m = xv.shape
    parts = _parts(c, n * m, _PROGRAM.threads_per_block)
    out0 = xp.empty((c, parts), dtype=xp.float64)
    out1 = xp.empty((c, parts), dtype=xp.float64) if mode == 2 else out0
    if n * m == 0:
        out0[...] = 0
        out1[...] = 0
    else:
        _PROGRAM.launch_blocks("channel_reduce", xv.dtype, c * parts, xv, xv if dyv is None else dyv,
                               out0 if mean is None else mean, out0, out1, n, c, m, parts, mode)
    return out0.sum(axis=1), out1.sum(axis=1)


def channel_sum(x):
    """Sum over every axis but 1. x: (N, C, *S) -> (C,) float64."""
    return _reduce(0, _channels_view(x, "channel_sum"))[0]


def channel_centered_sumsq(x, mean):
    """Sum of (x - mean[c])**2 over every axis but 1. x: (N, C, *S), mean: (C,) -> (C,) float64."""
    xv = _channels_view(x, "channel_centered_sumsq")
    return _reduce(1, xv, mean=_per_channel(mean, xv.shape[1], "mean", "channel_centered_sumsq"))[0]


def batchnorm_apply(x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, per channel. x: (N, C, *S); mean, invstd, gamma, beta: (C,).

    gamma and beta may be None (no affine transform). y has x's dtype; the arithmetic is float64.
    """
    xp = array_module()
    where = "batchnorm_apply"
    xv = _channels_view(x, where)
    c = xv.shape[1]
    mean = _per_channel(mean, c, "mean", where)
    scale = _per_channel(invstd, c, "invstd", where)
    if gamma is not None:
        scale = scale * _per_channel(gamma, c, "gamma", where)
    shift = xp.zeros(c, dtype=xp.float64) if beta is None else _per_channel(beta, c, "beta", where)
    y = xp.empty(xv.shape, dtype=x.dtype)
    _PROGRAM.launch("batchnorm_apply", x.dtype, y.size, xv, mean, scale, shift, y, y.size, c, xv.shape[2])
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
    if dyv.dtype != xv.dtype:
        dyv = dyv.astype(xv.dtype)
    c = xv.shape[1]
    sum_dy, sum_dy_xc = _reduce(2, xv, dyv, _per_channel(mean, c, "mean", where))
    return sum_dy, sum_dy_xc * _per_channel(invstd, c, "invstd", where)


def batchnorm_backward_apply(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count):
    """Training-mode input gradient: dx = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count).

    dy, x: (N, C, *S); mean, invstd, gamma, sum_dy, sum_dy_xhat: (C,); count: the number of
    elements per channel over all ranks. gamma may be None (no affine transform). dx has dy's dtype.
    """
    xp = array_module()
    where = "batchnorm_backward_apply"
    check_same_shape(dy, "dy", x, "x", where)
    xv = _channels_view(x, where)
    dyv = _channels_view(dy, where)
    if xv.dtype != dyv.dtype:
        xv = xv.astype(dyv.dtype)
    c = xv.shape[1]
    check_count(count, where)
    invstd = _per_channel(invstd, c, "invstd", where)
    scale = invstd if gamma is None else invstd * _per_channel(gamma, c, "gamma", where)
    mean_dy = _per_channel(sum_dy, c, "sum_dy", where) / count
    xc_coef = invstd * _per_channel(sum_dy_xhat, c, "sum_dy_xhat", where) / count
    dx = xp.empty(dyv.shape, dtype=dy.dtype)
    _PROGRAM.launch("batchnorm_backward_apply", dy.dtype, dx.size, dyv, xv, _per_channel(mean, c, "mean", where),
                    scale, mean_dy, xc_coef, dx, dx.size, c, xv.shape[2])
    return dx.reshape(x.shape)
