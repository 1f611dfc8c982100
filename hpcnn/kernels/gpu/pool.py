"""Max and average pooling over 2-D and 3-D data on the GPU (CuPy), with PyTorch's semantics.

Same semantics as hpcnn.kernels.cpu.pool: argmax is the flat index into the input's spatial
block, padding is -inf, ties keep the first element in scan order, NaN wins; average pooling
divides by the full window size. Every kernel works on a (B, D, H, W) volume with B = N*C
(2-D data has D = 1). Max-pool backward scatters with atomicAdd (windows may overlap); average
pooling backward gathers, so it needs no atomics. An argmax entry outside the input block (which
maxpool_forward never writes) makes its image-channel's dx NaN rather than stopping the stream to
check the argmax on the host.
"""
from math import prod

from ..checks import check_argmax, check_dy_shape, pool_backward_spatial, pool_geometry, spatial_dims
from ._cuda import Program, array_module

__all__ = ["maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"]

_PROGRAM = Program("pool", r"""
// y, argmax: (B, OD, OH, OW); x: (B, D, H, W). Output index o reads input o*s - lo + r*d.
extern "C" __global__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ y, i64* __restrict__ argmax,
                                           i64 total, int D, int H, int W, int OD, int OH, int OW,
                                           int RD, int RH, int RW, int sd, int sh, int sw,
                                           int lod, int loh, int low, int dd, int dh, int dw)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const int ow = e % OW; i64 t = e / OW;
        const int oh = t % OH; t /= OH;
        const int od = t % OD; const i64 b = t / OD;
        const T* xb = x + b * ((i64)D * H * W);
        // PyTorch: start at -inf with the first in-bounds element's index; a later element wins
        // only when strictly greater (or NaN), so ties keep the first.
        T best = (T)hp_neg_inf();
        i64 best_index = -1;
        for (int rd = 0; rd < RD; ++rd) {
            const int id = od * sd - lod + rd * dd;
            if (id < 0 || id >= D) continue;
            for (int rh = 0; rh < RH; ++rh) {
                const int ih = oh * sh - loh + rh * dh;
                if (ih < 0 || ih >= H) continue;
                for (int rw = 0; rw < RW; ++rw) {
                    const int iw = ow * sw - low + rw * dw;
                    if (iw < 0 || iw >= W) continue;
                    const i64 index = ((i64)id * H + ih) * W + iw;
                    if (best_index < 0) best_index = index;
                    const T v = xb[index];
                    if (v > best || v != v) { best = v; best_index = index; }
                }
            }
        }
        y[e] = best;
        argmax[e] = best_index;
    }
}

// dx: (B, size) zero-filled; dy, argmax: (B, per). An out-of-range argmax entry (other than -1)
// poisons its block's first element with NaN.
extern "C" __global__ void maxpool_backward(const T* __restrict__ dy, const i64* __restrict__ argmax,
                                            T* __restrict__ dx, i64 total, i64 per, i64 size)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const i64 index = argmax[e];
        if (index >= 0 && index < size) atomicAdd(dx + (e / per) * size + index, dy[e]);
        else if (index != -1) atomicAdd(dx + (e / per) * size, (T)hp_nan());
    }
}

extern "C" __global__ void avgpool_forward(const T* __restrict__ x, T* __restrict__ y, i64 total,
                                           int D, int H, int W, int OD, int OH, int OW, int RD, int RH, int RW,
                                           int sd, int sh, int sw, int lod, int loh, int low, double inv_count)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const int ow = e % OW; i64 t = e / OW;
        const int oh = t % OH; t /= OH;
        const int od = t % OD; const i64 b = t / OD;
        const T* xb = x + b * ((i64)D * H * W);
        double acc = 0.0;
        for (int rd = 0; rd < RD; ++rd) {
            const int id = od * sd - lod + rd;
            if (id < 0 || id >= D) continue;
            for (int rh = 0; rh < RH; ++rh) {
                const int ih = oh * sh - loh + rh;
                if (ih < 0 || ih >= H) continue;
                for (int rw = 0; rw < RW; ++rw) {
                    const int iw = ow * sw - low + rw;
                    if (iw < 0 || iw >= W) continue;
                    acc += (double)xb[((i64)id * H + ih) * W + iw];
                }
            }
        }
        y[e] = (T)(acc * inv_count);
    }
}

// The output index whose window tap r reads input index i along one dimension, or -1.
__device__ __forceinline__ int hp_window_of(int i, int r, int s, int lo, int O)
{
    const int t = i + lo - r;
    if (t < 0 || t % s != 0) return -1;
    const int o = t / s;
    return o < O ? o : -1;
}

// Gathers, per input element, dy of every window that contains it.
extern "C" __global__ void avgpool_backward(const T* __restrict__ dy, T* __restrict__ dx, i64 total,
                                            int D, int H, int W, int OD, int OH, int OW, int RD, int RH, int RW,
                                            int sd, int sh, int sw, int lod, int loh, int low, double inv_count)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const int iw = e % W; i64 t = e / W;
        const int ih = t % H; t /= H;
        const int id = t % D; const i64 b = t / D;
        const T* dyb = dy + b * ((i64)OD * OH * OW);
        double acc = 0.0;
        for (int rd = 0; rd < RD; ++rd) {
            const int od = hp_window_of(id, rd, sd, lod, OD);
            if (od < 0) continue;
            for (int rh = 0; rh < RH; ++rh) {
                const int oh = hp_window_of(ih, rh, sh, loh, OH);
                if (oh < 0) continue;
                for (int rw = 0; rw < RW; ++rw) {
                    const int ow = hp_window_of(iw, rw, sw, low, OW);
                    if (ow < 0) continue;
                    acc += (double)dyb[((i64)od * OH + oh) * OW + ow];
                }
            }
        }
        dx[e] = (T)(acc * inv_count);
    }
}
""")


def _volume(shape):
    """A spatial shape as (D, H, W) (D = 1 for 2-D)."""
    return (1,) * (3 - len(shape)) + tuple(shape)


def _window_args(geom):
    fill = 3 - geom.nd
    return ((1,) * fill + geom.kernel, (1,) * fill + geom.stride, (0,) * fill + tuple(lo for lo, _ in geom.padding),
            (1,) * fill + geom.dilation)


def maxpool_forward(x, kernel, stride=None, padding=0, dilation=1):
    """Max pooling. x: (N, C, *S) -> (y: (N, C, *O), argmax: (N, C, *O) int64).

    argmax is the flat index into x's spatial block (row-major over S) of the chosen element.
    Padding is -inf; ties go to the first element in scan order and NaN wins (as PyTorch).
    A window that lies wholly in padding gives -inf with argmax -1.
    """
    xp = array_module()
    nd = spatial_dims(x, "maxpool_forward")
    geom = pool_geometry(nd, kernel, stride, padding, dilation)
    spatial = tuple(x.shape[2:])
    out_spatial = geom.output_shape(spatial)
    shape = tuple(x.shape[:2]) + out_spatial
    y = xp.empty(shape, dtype=x.dtype)
    argmax = xp.empty(shape, dtype=xp.int64)
    k, s, lo, d = _window_args(geom)
    _PROGRAM.launch("maxpool_forward", x.dtype, y.size, xp.ascontiguousarray(x), y, argmax, y.size,
                    *_volume(spatial), *_volume(out_spatial), *k, *s, *lo, *d)
    return y, argmax


def maxpool_backward(dy, argmax, x_spatial):
    """Gradient of max pooling: dy: (N, C, *O), argmax: (N, C, *O) -> dx: (N, C, *x_spatial).

    Each dy element is added at its argmax; overlapping windows accumulate. An argmax entry outside
    the block makes that image-channel's dx NaN (no host check: see the module docstring).
    """
    xp = array_module()
    _, x_spatial = pool_backward_spatial(dy, x_spatial, "maxpool_backward")
    check_argmax(argmax, dy, "maxpool_backward")
    n, c = dy.shape[:2]
    dx = xp.zeros((n, c) + x_spatial, dtype=dy.dtype)
    per = prod(dy.shape[2:])
    _PROGRAM.launch("maxpool_backward", dy.dtype, dy.size, xp.ascontiguousarray(dy),
                    xp.ascontiguousarray(xp.asarray(argmax, dtype=xp.int64)), dx, dy.size, per, prod(x_spatial))
    return dx


def avgpool_forward(x, kernel, stride=None, padding=0):
    """Average pooling. x: (N, C, *S) -> y: (N, C, *O).

    The divisor is the full window size, padding included (PyTorch's count_include_pad=True).
    """
    xp = array_module()
    nd = spatial_dims(x, "avgpool_forward")
    geom = pool_geometry(nd, kernel, stride, padding)
    spatial = tuple(x.shape[2:])
    out_spatial = geom.output_shape(spatial)
    y = xp.empty(tuple(x.shape[:2]) + out_spatial, dtype=x.dtype)
    k, s, lo, _ = _window_args(geom)
    _PROGRAM.launch("avgpool_forward", x.dtype, y.size, xp.ascontiguousarray(x), y, y.size,
                    *_volume(spatial), *_volume(out_spatial), *k, *s, *lo, 1.0 / float(prod(geom.kernel)))
    return y


def avgpool_backward(dy, x_spatial, kernel, stride=None, padding=0):
    """Gradient of average pooling: dy: (N, C, *O) -> dx: (N, C, *x_spatial)."""
    xp = array_module()
    nd, x_spatial = pool_backward_spatial(dy, x_spatial, "avgpool_backward")
    geom = pool_geometry(nd, kernel, stride, padding)
    out_spatial = geom.output_shape(x_spatial)
    check_dy_shape(dy, out_spatial, "avgpool_backward")
    dx = xp.empty(tuple(dy.shape[:2]) + x_spatial, dtype=dy.dtype)
    k, s, lo, _ = _window_args(geom)
    _PROGRAM.launch("avgpool_backward", dy.dtype, dx.size, xp.ascontiguousarray(dy), dx, dx.size,
                    *_volume(x_spatial), *_volume(out_spatial), *k, *s, *lo, 1.0 / float(prod(geom.kernel)))
    return dx
