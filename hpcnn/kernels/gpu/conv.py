"""Convolution on the GPU (CuPy): chunked im2col in CUDA C, the arithmetic in cuBLAS GEMMs.

Same method and semantics as hpcnn.kernels.cpu.conv. The flattened grid of output pixels
(N, *O) is cut into tiles whose column block `cols` (C*R, pixels) stays under the scratch
budget (`_cuda.scratch_bytes`: a share of the device's free memory), whatever the image size;
the column block is one reused buffer per stream (`_cuda.ScratchBuffers`), not a fresh one per tile:

    forward          y[:, tile]  = W (K, C*R) @ cols                  one 2-D GEMM per tile
    backward-filter  dW         += dy[:, tile] @ cols^T
    backward-data    stride 1:   the forward correlation of dy with the flipped, transposed filter
                     stride > 1: cols = W^T @ dy[:, tile], then a col2im scatter with atomicAdd

A tile holds several whole images when they fit (the GEMM's N dimension is then images*pixels,
and the output is reordered to (images, K, pixels) by one copy), else a range of one image's
pixels. 1x1 convolutions with stride 1 and no padding read x as it is, in one batched GEMM over the
images (W broadcast: y[n] = W @ x[n]; dW = sum over n of dy[n] @ x[n]^T). 2-D GEMMs follow CuPy's
float32 compute type, batched ones cuBLAS's math mode; `_cuda.set_tf32` sets both. 2-D data is 3-D
data with depth 1.
"""
from math import prod

from ...backend import check_float_array
from ..checks import (VolumeWindow, check_batch, check_bias, check_filter, check_filter_outputs, checked_conv_output,
                      spatial_dims)
from .norm import channel_sum
from ._cuda import MAX_WORK_ITEMS, Program, ScratchBuffers, array_module, scratch_elements

__all__ = ["conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias"]

_PROGRAM = Program("conv", r"""
// cols: (C*RD*RH*RW, nb*pc), row-major. Row (c, rd, rh, rw); column i*pc + q is image n0 + i,
// output pixel p0 + q (flat over (OD, OH, OW)). Output index o reads input index o*s - lo + r*d;
// `lo` may be negative (backward-data reads dy cropped).
#define HP_DECOMPOSE                                                                     \
    const unsigned int row = e / width, col = e - row * width;                          \
    const unsigned int i = col / (unsigned int)pc;                                       \
    const unsigned int p = (unsigned int)p0 + (col - i * (unsigned int)pc);              \
    const int ow = p % OW; unsigned int t = p / OW;                                      \
    const int oh = t % OH; const int od = t / OH;                                        \
    const int rw = row % RW; t = row / RW;                                               \
    const int rh = t % RH; t /= RH;                                                      \
    const int rd = t % RD; const int c = t / RD;                                         \
    const int id = od * sd - lod + rd * dd;                                              \
    const int ih = oh * sh - loh + rh * dh;                                              \
    const int iw = ow * sw - low + rw * dw;                                              \
    const bool inside = id >= 0 && id < D && ih >= 0 && ih < H && iw >= 0 && iw < W;     \
    const i64 at = ((n0 + i) * C + c) * (i64)D * H * W + ((i64)id * H + ih) * W + iw;

extern "C" __global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, i64 n0, int nb, int p0,
                                  int pc, int C, int D, int H, int W, int OH, int OW, int RD, int RH, int RW,
                                  int sd, int sh, int sw, int lod, int loh, int low, int dd, int dh, int dw)
{
    const unsigned int width = (unsigned int)nb * (unsigned int)pc;
    const unsigned int total = width * (unsigned int)(C * RD * RH * RW);
    for (unsigned int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += blockDim.x * gridDim.x) {
        HP_DECOMPOSE
        cols[e] = inside ? x[at] : (T)0;
    }
}

// The adjoint of im2col: dx[at] += cols[e]. Windows overlap when stride < kernel extent, hence atomics.
extern "C" __global__ void col2im(const T* __restrict__ cols, T* __restrict__ dx, i64 n0, int nb, int p0,
                                  int pc, int C, int D, int H, int W, int OH, int OW, int RD, int RH, int RW,
                                  int sd, int sh, int sw, int lod, int loh, int low, int dd, int dh, int dw)
{
    const unsigned int width = (unsigned int)nb * (unsigned int)pc;
    const unsigned int total = width * (unsigned int)(C * RD * RH * RW);
    for (unsigned int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += blockDim.x * gridDim.x) {
        HP_DECOMPOSE
        if (inside) atomicAdd(dx + at, cols[e]);
    }
}
""")

# Fewest output pixels per tile whatever C*R is (the scratch budget is then exceeded): below
# this a GEMM is mostly launch overhead.
_MIN_TILE_PIXELS = 256
_SCRATCH = ScratchBuffers()


class _Window(VolumeWindow):
    """A VolumeWindow that also gives its geometry as the kernels' launch arguments."""

    __slots__ = ()

    def args(self):
        return self.kernel + self.stride + self.lo + self.dilation


def _tiles(n_img, pixels, rows, itemsize):
    """Tiles of the (images, pixels) output grid as (first image, image count, first pixel, pixel count)."""
    width = max(min(scratch_elements(itemsize), MAX_WORK_ITEMS) // rows, 1)
    width = min(max(width, _MIN_TILE_PIXELS), max(MAX_WORK_ITEMS // rows, 1))
    if pixels <= width:
        per = max(width // max(pixels, 1), 1)
        for n0 in range(0, n_img, per):
            yield n0, min(per, n_img - n0), 0, pixels
    else:
        for n0 in range(n_img):
            for p0 in range(0, pixels, width):
                yield n0, 1, p0, min(width, pixels - p0)


def _launch_window_kernel(kernel, src, dst, x_shape, out3, win, n0, nb, p0, pc):
    c, d, h, w = x_shape[1:]
    rows = c * win.size
    _PROGRAM.launch(kernel, dst.dtype, rows * nb * pc, src, dst, n0, nb, p0, pc, c, d, h, w,
                    out3[1], out3[2], *win.args())


def _tile_of(a3, n0, nb, p0, pc):
    """a3[n0:n0+nb, :, p0:p0+pc] as one contiguous (M, nb*pc) matrix (a view when it already is one)."""
    xp = array_module()
    if nb == 1:
        v = a3[n0, :, p0:p0 + pc]
        return v if pc == a3.shape[2] else xp.ascontiguousarray(v)
    return xp.ascontiguousarray(a3[n0:n0 + nb].transpose(1, 0, 2)).reshape(a3.shape[1], nb * pc)


def _correlate(x5, w2, win, out3, bias=None):
    """y (N, K, prod(out3)) = correlate(x, w) + bias: x5 (N, C, D, H, W) contiguous, w2 (K, C*R) contiguous."""
    xp = array_module()
    n_img, c = x5.shape[:2]
    k = w2.shape[0]
    pixels = prod(out3)
    y = xp.empty((n_img, k, pixels), dtype=x5.dtype)
    if n_img and pixels and k:
        if win.pointwise_on(x5.shape[2:], out3):
            xp.matmul(w2, x5.reshape(n_img, c, pixels), out=y)
        else:
            rows = c * win.size
            for n0, nb, p0, pc in _tiles(n_img, pixels, rows, x5.dtype.itemsize):
                cols = _SCRATCH.take((rows, nb * pc), x5.dtype)
                _launch_window_kernel("im2col", x5, cols, x5.shape, out3, win, n0, nb, p0, pc)
                if nb == 1 and pc == pixels:
                    xp.matmul(w2, cols, out=y[n0])
                elif nb == 1:
                    y[n0, :, p0:p0 + pc] = xp.matmul(w2, cols)
                else:
                    y[n0:n0 + nb] = xp.matmul(w2, cols).reshape(k, nb, pc).transpose(1, 0, 2)
    if bias is not None:
        y += bias.reshape(1, k, 1)
    return y


def _correlate_filter(x5, dy3, win, out3):
    """dW (K, C*R) = sum over pixels of dy x cols: x5 (N, C, D, H, W), dy3 (N, K, prod(out3))."""
    xp = array_module()
    n_img, c = x5.shape[:2]
    k, pixels = dy3.shape[1:]
    rows = c * win.size
    dw = xp.zeros((k, rows), dtype=x5.dtype)
    if not (n_img and pixels and k):
        return dw
    if win.pointwise_on(x5.shape[2:], out3):
        return xp.matmul(dy3, x5.reshape(n_img, c, pixels).transpose(0, 2, 1)).sum(axis=0)
    for n0, nb, p0, pc in _tiles(n_img, pixels, rows, x5.dtype.itemsize):
        cols = _SCRATCH.take((rows, nb * pc), x5.dtype)
        _launch_window_kernel("im2col", x5, cols, x5.shape, out3, win, n0, nb, p0, pc)
        dw += xp.matmul(_tile_of(dy3, n0, nb, p0, pc), cols.T)
    return dw


def _scatter_data(dy3, w2, win, out3, x_shape):
    """dx (N, C, D, H, W) = col2im(W^T @ dy): the adjoint of `_correlate` for any stride."""
    xp = array_module()
    n_img, k, pixels = dy3.shape
    rows = x_shape[1] * win.size
    dx = xp.zeros(x_shape, dtype=dy3.dtype)
    if not (n_img and pixels and k):
        return dx
    w2t = w2.T
    for n0, nb, p0, pc in _tiles(n_img, pixels, rows, dy3.dtype.itemsize):
        cols = xp.matmul(w2t, _tile_of(dy3, n0, nb, p0, pc), out=_SCRATCH.take((rows, nb * pc), dy3.dtype))
        _launch_window_kernel("col2im", cols, dx, x_shape, out3, win, n0, nb, p0, pc)
    return dx


def _as_3d(a, nd):
    """A contiguous (N, C, D, H, W) view of (N, C, *S) data with nd = 2 or 3 spatial dimensions."""
    a = array_module().ascontiguousarray(a)
    return a.reshape(a.shape[:2] + (1,) * (3 - nd) + a.shape[2:])


def _filter(w, nd, channels, dtype, where):
    check_filter(w, nd, channels, where)
    xp = array_module()
    return xp.ascontiguousarray(xp.asarray(w, dtype=dtype))


def conv_forward(x, w, bias=None, stride=1, padding=0, dilation=1):
    """y = conv(x, w) + bias (cross-correlation, as PyTorch).

    x: (N, C, *S), w: (K, C, *R), bias: (K,) or None -> y: (N, K, *O), of x's dtype.
    """
    xp = array_module()
    nd = spatial_dims(x, "conv_forward")
    w = _filter(w, nd, x.shape[1], x.dtype, "conv_forward")
    win, padding = _Window.of(nd, w.shape[2:], stride, padding, dilation)
    x5 = _as_3d(x, nd)
    out3 = win.output_shape(x5.shape[2:], padding)
    if bias is not None:
        bias = xp.asarray(bias, dtype=x.dtype)
        check_bias(bias, w.shape[0], "conv_forward")
    y = _correlate(x5, w.reshape(w.shape[0], -1), win, out3, bias)
    return y.reshape((x.shape[0], w.shape[0]) + out3[3 - nd:])


def conv_backward_data(dy, w, x_spatial, stride=1, padding=0, dilation=1):
    """dx = the gradient of conv_forward with respect to x.

    dy: (N, K, *O), w: (K, C, *R), x_spatial: S -> dx: (N, C, *S); input positions that no window
    reads (stride > 1 with a leftover) get 0.
    """
    xp = array_module()
    nd = spatial_dims(dy, "conv_backward_data")
    w = _filter(w, nd, w.shape[1], dy.dtype, "conv_backward_data")
    check_filter_outputs(dy, w, "conv_backward_data")
    win, padding = _Window.of(nd, w.shape[2:], stride, padding, dilation)
    spatial3, out3 = checked_conv_output(dy, nd, x_spatial, win, padding, "conv_backward_data")
    n_img, k, c = dy.shape[0], w.shape[0], w.shape[1]
    dy5 = _as_3d(dy, nd)
    w3 = w.reshape((k, c) + win.kernel)
    if win.stride == (1, 1, 1):
        # The correlation of dy with the flipped filter, channels swapped, reading dy at
        # index i - (d*(R-1) - lo) + r*d: no atomics, deterministic.
        flipped = xp.ascontiguousarray(w3[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4)).reshape(c, -1)
        lo = tuple(d * (r - 1) - p for d, r, p in zip(win.dilation, win.kernel, win.lo))
        transposed = _Window(win.kernel, win.stride, win.dilation, lo)
        dx = _correlate(dy5, flipped, transposed, spatial3)
    else:
        dx = _scatter_data(dy5.reshape(n_img, k, -1), w.reshape(k, -1), win, out3, (n_img, c) + spatial3)
    return dx.reshape((n_img, c) + spatial3[3 - nd:])


def conv_backward_filter(x, dy, kernel, stride=1, padding=0, dilation=1):
    """dw = the gradient of conv_forward with respect to w.

    x: (N, C, *S), dy: (N, K, *O), kernel: R -> dw: (K, C, *R), of x's dtype.
    """
    xp = array_module()
    nd = spatial_dims(x, "conv_backward_filter")
    check_batch(x, dy, nd, "conv_backward_filter")
    win, padding = _Window.of(nd, kernel, stride, padding, dilation)
    _, out3 = checked_conv_output(dy, nd, x.shape[2:], win, padding, "conv_backward_filter")
    n_img, k = dy.shape[:2]
    dy3 = xp.ascontiguousarray(xp.asarray(dy, dtype=x.dtype)).reshape(n_img, k, -1)
    dw = _correlate_filter(_as_3d(x, nd), dy3, win, out3)
    return dw.reshape((k, x.shape[1]) + win.kernel[3 - nd:])


def conv_backward_bias(dy):
    """db: (K,) = the sum of dy: (N, K, *O) over every axis but 1, in dy's dtype (the batch-norm block
    reduction, accumulating in float64)."""
    check_float_array(dy, "conv_backward_bias", ndim=(4, 5))
    return channel_sum(dy).astype(dy.dtype)
