"""Convolution on the CPU (numpy + numba + BLAS): forward, backward-data, backward-filter, bias.

Method: chunked im2col with one GEMM per chunk. The flattened grid of output pixels
(N, *O) is cut into chunks; for each chunk a numba kernel copies the receptive fields into a
column block `cols` of shape (C*R, pixels), and one BLAS GEMM with inner dimension C*R
(R = the product of the kernel sizes) does the arithmetic:

    forward          y[:, chunk]  = W (K, C*R) @ cols
    backward-filter  dW          += dy[:, chunk] @ cols^T      (BLAS beta=1, no temporary)
    backward-data    stride 1:   the forward correlation of dy with the flipped, transposed filter;
                     stride > 1: cols = W^T @ dy[:, chunk], then a numba col2im scatter-add.

Why this and not the alternatives: a GEMM with inner dimension C*R runs near the BLAS peak even
for the few-channel layers at the front of a network (C=3..16), where shift-and-GEMM (R GEMMs
of inner dimension C, each re-reading and re-writing the output) is bound by memory traffic;
a full im2col would need R times the input in scratch, which rules it out for 2048^2 blocks.
The column block is kept near `_CHUNK_BYTES` so that it is still in cache when the GEMM reads
it, and scratch stays a few MB whatever the image size. 1x1 convolutions with stride 1 and no
padding need no copy: their GEMMs read x as it is. Chunks hold part of one image, or, for small
images, several whole images, so that the GEMMs stay large.

2-D data is handled as 3-D with a depth of 1: one implementation for both. Scratch buffers
are per thread (several threads may call the kernels at once); the numba kernels and the
BLAS calls release the GIL.
"""
import threading
from math import prod

import numba
import numpy as np

from ...backend import check_float_array
from ..shapes import WindowGeometry, window_output_size
from ._blas import gemm

__all__ = ["conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias"]

# Target size of one chunk's column block: small enough to stay in the L2/L3 cache between the
# im2col copy and the GEMM, large enough that the GEMM is efficient.
_CHUNK_BYTES = 2 << 20
# Fewest output pixels per chunk, whatever C*R is: below this the GEMMs get inefficient.
_MIN_CHUNK_PIXELS = 128


class _Window:
    """Geometry of a correlation over 3 spatial dimensions (2-D data has depth 1).

    Output index o reads input index o*stride - lo + r*dilation. `lo` may be negative
    (backward-data reads dy with padding d*(R-1) - lo), which im2col treats as cropping.
    """

    __slots__ = ("kernel", "stride", "dilation", "lo")

    def __init__(self, kernel, stride, dilation, lo):
        self.kernel, self.stride, self.dilation, self.lo = kernel, stride, dilation, lo

    @classmethod
    def of(cls, nd, kernel, stride, padding, dilation):
        """The window of a layer's geometry, and its per-side padding as (lo, hi) per dimension."""
        g = WindowGeometry(nd, kernel, stride, padding, dilation)
        fill = 3 - nd
        win = cls((1,) * fill + g.kernel, (1,) * fill + g.stride, (1,) * fill + g.dilation,
                  (0,) * fill + tuple(lo for lo, _ in g.padding))
        return win, ((0, 0),) * fill + g.padding

    @property
    def size(self):
        return prod(self.kernel)

    @property
    def is_pointwise(self):
        """A 1x1 window with stride 1 and no padding: the output is a GEMM of x as it is."""
        return self.size == 1 and self.stride == (1, 1, 1) and self.lo == (0, 0, 0)


@numba.njit(nogil=True, cache=True)
def _window_range(lo_index, stride, offset, size):
    """Output positions o in [lo_index, ...) whose input index o*stride + offset lies in [0, size): (first, end)."""
    first = max(lo_index, -(offset // stride))
    end = (size - 1 - offset) // stride + 1
    return first, max(first, end)


@numba.njit(nogil=True, cache=True)
def _output_lines(out_spatial, first_pixel, count):
    """The runs of output pixels first_pixel .. first_pixel+count-1 of the flattened (N, OD, OH, OW)
    grid that lie on one output line: rows of (n, od, oh, first ow, length)."""
    OD, OH, OW = out_spatial
    n_lines = (first_pixel + count - 1) // OW - first_pixel // OW + 1
    lines = np.empty((n_lines, 5), np.int64)
    pixel = first_pixel
    for i in range(n_lines):
        line = pixel // OW
        ow0 = pixel - line * OW
        take = min(OW - ow0, first_pixel + count - pixel)
        lines[i, 0] = line // (OD * OH)
        lines[i, 1] = (line // OH) % OD
        lines[i, 2] = line % OH
        lines[i, 3] = ow0
        lines[i, 4] = take
        pixel += take
    return lines


@numba.njit(nogil=True, cache=True)
def _zero(dst):
    for k in range(dst.shape[0]):
        dst[k] = 0


# The copy loops index views from 0 (not base + ow): numba then proves the indices non-negative,
# drops its negative-index wraparound and vectorizes, about 5x faster.
@numba.njit(nogil=True, cache=True)
def _copy(dst, src):
    """dst[k] = src[k] for k < len(dst)."""
    for k in range(dst.shape[0]):
        dst[k] = src[k]


@numba.njit(nogil=True, cache=True)
def _add(dst, src):
    """dst[k] += src[k] for k < len(src)."""
    for k in range(src.shape[0]):
        dst[k] += src[k]


@numba.njit(nogil=True, cache=True)
def _im2col(x, kernel, stride, dilation, lo, out_spatial, first_pixel, cols):
    """cols[(c, rd, rh, rw), j] = x[n, c, od*sd - lod + rd*dd, oh*sh - loh + rh*dh, ow*sw - low + rw*dw]
    for output pixel first_pixel + j of the flattened (N, OD, OH, OW) grid; 0 where that is padding.

    x: (N, C, D, H, W); cols: (C*RD*RH*RW, pixels), C-contiguous.
    """
    _, C, D, H, W = x.shape
    RD, RH, RW = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    lines = _output_lines(out_spatial, first_pixel, cols.shape[1])
    for c in range(C):
        for rd in range(RD):
            for rh in range(RH):
                for rw in range(RW):
                    row = cols[((c * RD + rd) * RH + rh) * RW + rw]
                    w_offset = rw * dw - lo[2]
                    ow_first, ow_end = _window_range(0, sw, w_offset, W)
                    j = 0
                    for i in range(lines.shape[0]):
                        n, od, oh, ow0, take = lines[i, 0], lines[i, 1], lines[i, 2], lines[i, 3], lines[i, 4]
                        i_d = od * sd - lo[0] + rd * dd
                        i_h = oh * sh - lo[1] + rh * dh
                        if 0 <= i_d < D and 0 <= i_h < H:
                            a = min(max(ow_first, ow0), ow0 + take)
                            b = max(min(ow_end, ow0 + take), a)
                            base = j - ow0
                            _zero(row[j:base + a])
                            _copy(row[base + a:base + b], x[n, c, i_d, i_h, a * sw + w_offset::sw])
                            _zero(row[base + b:j + take])
                        else:
                            _zero(row[j:j + take])
                        j += take


@numba.njit(nogil=True, cache=True)
def _col2im(cols, kernel, stride, dilation, lo, out_spatial, first_pixel, dx):
    """The adjoint of `_im2col`: dx[n, c, input index] += cols[(c, rd, rh, rw), j] (padding dropped)."""
    _, C, D, H, W = dx.shape
    RD, RH, RW = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    lines = _output_lines(out_spatial, first_pixel, cols.shape[1])
    for c in range(C):
        for rd in range(RD):
            for rh in range(RH):
                for rw in range(RW):
                    row = cols[((c * RD + rd) * RH + rh) * RW + rw]
                    w_offset = rw * dw - lo[2]
                    ow_first, ow_end = _window_range(0, sw, w_offset, W)
                    j = 0
                    for i in range(lines.shape[0]):
                        n, od, oh, ow0, take = lines[i, 0], lines[i, 1], lines[i, 2], lines[i, 3], lines[i, 4]
                        i_d = od * sd - lo[0] + rd * dd
                        i_h = oh * sh - lo[1] + rh * dh
                        if 0 <= i_d < D and 0 <= i_h < H:
                            a = min(max(ow_first, ow0), ow0 + take)
                            b = max(min(ow_end, ow0 + take), a)
                            base = j - ow0
                            _add(dx[n, c, i_d, i_h, a * sw + w_offset::sw], row[base + a:base + b])
                        j += take


_local = threading.local()


def _scratch(slot, shape, dtype):
    """A reusable per-thread array of `shape` (its contents are garbage); `slot` names one of the
    buffers that a kernel holds at the same time."""
    buffers = _local.__dict__.setdefault("buffers", {})
    size = prod(shape)
    key = (slot, np.dtype(dtype))
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _chunks(images, pixels, rows, itemsize):
    """Chunks of the (images, pixels) output grid as (first image, image count, first pixel, end pixel).

    A chunk is a run of pixels inside one image, or several whole images, sized so that its column
    block of `rows` rows is about _CHUNK_BYTES.
    """
    target = max(_MIN_CHUNK_PIXELS, _CHUNK_BYTES // (rows * itemsize))
    if pixels >= target:
        parts = -(-pixels // target)
        step = -(-pixels // parts)
        for n in range(images):
            for q in range(0, pixels, step):
                yield n, 1, q, min(pixels, q + step)
    else:
        per_chunk = target // pixels
        for n in range(0, images, per_chunk):
            yield n, min(per_chunk, images - n), 0, pixels


def _gather(a, n, count, q0, q1, slot):
    """a[n:n+count, :, q0:q1] as one (M, pixels) matrix: a view for one image, else a scratch copy."""
    if count == 1:
        return a[n, :, q0:q1]
    out = _scratch(slot, (a.shape[1], count, q1 - q0), a.dtype)
    out[...] = a[n:n + count, :, q0:q1].transpose(1, 0, 2)
    return out.reshape(a.shape[1], -1)


def _correlate(x, w2, win, out_spatial, bias=None):
    """y = correlate(x, w) + bias: x (N, C, D, H, W) contiguous, w2 (K, C*R) -> y (N, K, prod(out_spatial))."""
    n_img = x.shape[0]
    k = w2.shape[0]
    pixels = prod(out_spatial)
    y = np.empty((n_img, k, pixels), x.dtype)
    if y.size == 0:
        return y
    if win.is_pointwise:
        xs = x.reshape(n_img, x.shape[1], pixels)
        for n in range(n_img):
            gemm(w2, xs[n], y[n])
            if bias is not None:
                y[n] += bias[:, None]
        return y
    rows = w2.shape[1]
    geometry = (win.kernel, win.stride, win.dilation, win.lo, out_spatial)
    for n, count, q0, q1 in _chunks(n_img, pixels, rows, x.itemsize):
        cols = _scratch("cols", (rows, count * (q1 - q0)), x.dtype)
        _im2col(x, *geometry, n * pixels + q0, cols)
        if count == 1:
            out = y[n, :, q0:q1]
            gemm(w2, cols, out)
        else:
            out = _scratch("out", (k, count * pixels), x.dtype)
            gemm(w2, cols, out)
            y[n:n + count] = out.reshape(k, count, pixels).transpose(1, 0, 2)
            out = y[n:n + count]
        if bias is not None:
            out += bias[:, None]
    return y


def _correlate_filter(x, dy, win, out_spatial):
    """dW (K, C*R) = sum over pixels of dy x cols: x (N, C, D, H, W), dy (N, K, prod(out_spatial))."""
    n_img, c = x.shape[:2]
    k, pixels = dy.shape[1:]
    rows = c * win.size
    dw = np.zeros((k, rows), x.dtype)
    if dy.size == 0:
        return dw
    if win.is_pointwise:
        xs = x.reshape(n_img, c, pixels)
        for n in range(n_img):
            gemm(dy[n], xs[n].T, dw, beta=1.0)
        return dw
    geometry = (win.kernel, win.stride, win.dilation, win.lo, out_spatial)
    for n, count, q0, q1 in _chunks(n_img, pixels, rows, x.itemsize):
        cols = _scratch("cols", (rows, count * (q1 - q0)), x.dtype)
        _im2col(x, *geometry, n * pixels + q0, cols)
        gemm(_gather(dy, n, count, q0, q1, "dy"), cols.T, dw, beta=1.0)
    return dw


def _scatter_data(dy, w2, win, out_spatial, x_shape):
    """dx (N, C, D, H, W) = col2im(W^T @ dy): the adjoint of `_correlate` for any stride."""
    n_img, k, pixels = dy.shape
    rows = w2.shape[1]
    dx = np.zeros(x_shape, dy.dtype)
    if dy.size == 0:
        return dx
    geometry = (win.kernel, win.stride, win.dilation, win.lo, out_spatial)
    for n, count, q0, q1 in _chunks(n_img, pixels, rows, dy.itemsize):
        cols = _scratch("cols", (rows, count * (q1 - q0)), dy.dtype)
        gemm(w2.T, _gather(dy, n, count, q0, q1, "dy"), cols)
        _col2im(cols, *geometry, n * pixels + q0, dx)
    return dx


def _as_3d(a, nd):
    """A contiguous (N, C, D, H, W) view of (N, C, *S) data with nd = 2 or 3 spatial dimensions."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[:2] + (1,) * (3 - nd) + a.shape[2:])


def _spatial_dims(a, where):
    check_float_array(a, where, ndim=(4, 5))
    return a.ndim - 2


def _filter(w, nd, channels, dtype, where):
    if w.ndim != nd + 2 or w.shape[1] != channels:
        raise ValueError(f"{where}: filter of shape {tuple(w.shape)} does not match {channels} input channels "
                         f"and {nd} spatial dimensions (expected (K, {channels}, *kernel))")
    return np.ascontiguousarray(w, dtype=dtype)


def conv_forward(x, w, bias=None, stride=1, padding=0, dilation=1):
    """y = conv(x, w) + bias (cross-correlation, as PyTorch).

    x: (N, C, *S), w: (K, C, *R), bias: (K,) or None -> y: (N, K, *O), of x's dtype.
    """
    nd = _spatial_dims(x, "conv_forward")
    w = _filter(w, nd, x.shape[1], x.dtype, "conv_forward")
    win, padding = _Window.of(nd, w.shape[2:], stride, padding, dilation)
    x3 = _as_3d(x, nd)
    out_spatial = tuple(window_output_size(s, r, st, d, lo, hi) for s, r, st, d, (lo, hi)
                        in zip(x3.shape[2:], win.kernel, win.stride, win.dilation, padding))
    if bias is not None:
        bias = np.asarray(bias, dtype=x.dtype)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"conv_forward: bias of shape {bias.shape}, expected ({w.shape[0]},)")
    y = _correlate(x3, w.reshape(w.shape[0], x.shape[1] * win.size), win, out_spatial, bias)
    return y.reshape((x.shape[0], w.shape[0]) + out_spatial[3 - nd:])


def _checked_output(dy, nd, x_spatial, win, padding, where):
    """The 3-D output shape that x_spatial gives; it must be dy's spatial shape."""
    x_spatial = tuple(int(s) for s in x_spatial)
    if len(x_spatial) != nd:
        raise ValueError(f"{where}: x_spatial {x_spatial} must have {nd} entries")
    spatial3 = (1,) * (3 - nd) + x_spatial
    out = tuple(window_output_size(s, r, st, d, lo, hi) for s, r, st, d, (lo, hi)
                in zip(spatial3, win.kernel, win.stride, win.dilation, padding))
    if out[3 - nd:] != tuple(dy.shape[2:]):
        raise ValueError(f"{where}: dy of spatial shape {tuple(dy.shape[2:])} does not match input {x_spatial} "
                         f"with {win.kernel[3 - nd:]} kernel, stride {win.stride[3 - nd:]}, padding "
                         f"{padding[3 - nd:]}, dilation {win.dilation[3 - nd:]} (expected {out[3 - nd:]})")
    return spatial3, out


def conv_backward_data(dy, w, x_spatial, stride=1, padding=0, dilation=1):
    """dx = the gradient of conv_forward with respect to x.

    dy: (N, K, *O), w: (K, C, *R), x_spatial: S -> dx: (N, C, *S); input positions that no window
    reads (stride > 1 with a leftover) get 0.
    """
    nd = _spatial_dims(dy, "conv_backward_data")
    w = _filter(w, nd, w.shape[1], dy.dtype, "conv_backward_data")
    if w.shape[0] != dy.shape[1]:
        raise ValueError(f"conv_backward_data: dy has {dy.shape[1]} channels, the filter {w.shape[0]} outputs")
    win, padding = _Window.of(nd, w.shape[2:], stride, padding, dilation)
    spatial3, out3 = _checked_output(dy, nd, x_spatial, win, padding, "conv_backward_data")
    n_img, k, c = dy.shape[0], w.shape[0], w.shape[1]
    dy3 = _as_3d(dy, nd).reshape(n_img, k, prod(out3))
    w3 = w.reshape((k, c) + win.kernel)
    if win.stride == (1, 1, 1):
        # The correlation of dy with the flipped filter, channels swapped, reading dy at
        # index i - (d*(R-1) - lo) + r*d.
        flipped = np.ascontiguousarray(w3[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4)).reshape(c, k * win.size)
        lo = tuple(d * (r - 1) - p for d, r, p in zip(win.dilation, win.kernel, win.lo))
        transposed = _Window(win.kernel, win.stride, win.dilation, lo)
        dx = _correlate(dy3.reshape((n_img, k) + out3), flipped, transposed, spatial3)
    else:
        dx = _scatter_data(dy3, w.reshape(k, c * win.size), win, out3, (n_img, c) + spatial3)
    return dx.reshape((n_img, c) + spatial3[3 - nd:])


def conv_backward_filter(x, dy, kernel, stride=1, padding=0, dilation=1):
    """dw = the gradient of conv_forward with respect to w.

    x: (N, C, *S), dy: (N, K, *O), kernel: R -> dw: (K, C, *R), of x's dtype.
    """
    nd = _spatial_dims(x, "conv_backward_filter")
    check_float_array(dy, "conv_backward_filter", ndim=nd + 2)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"conv_backward_filter: x has batch {x.shape[0]}, dy {dy.shape[0]}")
    win, padding = _Window.of(nd, kernel, stride, padding, dilation)
    _, out3 = _checked_output(dy, nd, x.shape[2:], win, padding, "conv_backward_filter")
    n_img, k = dy.shape[:2]
    dy3 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(n_img, k, prod(out3))
    dw = _correlate_filter(_as_3d(x, nd), dy3, win, out3)
    return dw.reshape((k, x.shape[1]) + win.kernel[3 - nd:])


def conv_backward_bias(dy):
    """db: (K,) = the sum of dy: (N, K, *O) over every axis but 1, in dy's dtype."""
    check_float_array(dy, "conv_backward_bias", ndim=(4, 5))
    n_img, k = dy.shape[:2]
    # Sum along the contiguous pixel axis first: numpy sums that axis pairwise (accurate in float32).
    return np.ascontiguousarray(dy).reshape(n_img, k, prod(dy.shape[2:])).sum(axis=2).sum(axis=0)
