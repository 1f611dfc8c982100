"""Convolution on the CPU (numpy + numba + BLAS): forward, backward-data, backward-filter, bias.

Method: chunked im2col, the loop over chunks compiled with numba and calling BLAS ?gemm itself.
The output pixels of each image are cut into blocks; for each block a numba kernel copies the
receptive fields into a column block `cols` of shape (C*R, pixels) (R = the product of the
kernel sizes, scratch of about 1 MB) and then runs GEMMs over it, a few hundred pixels each:

    forward          y[n, :, pixels]  = W (K, C*R) @ cols
    backward-filter  dW^T            += cols @ dy[n, :, pixels]^T      (beta=1, no temporaries)
    backward-data    stride 1:   the forward correlation of dy with the flipped, transposed filter;
                     stride > 1: cols = W^T @ dy[n, :, pixels], then a numba col2im scatter-add.

Why: one GEMM with inner dimension C*R keeps even the few-channel layers (C, K = 3..16) near the
BLAS peak, where shift-and-GEMM (R GEMMs of inner dimension C, each re-reading and re-writing
the output) is bound by memory traffic; a full im2col would need R times the input in scratch
(144 MB for one 16-channel 1024^2 image with a 3x3 kernel), chunks need a block. The GEMMs are
small on purpose: OpenBLAS's small-matrix kernels take M*N*K up to 1e6 without packing, e.g.
(16 x 432) @ (432 x 128) at 115 GFLOP/s on one core here where 1024 columns run at 47; larger
GEMMs run best with a few hundred columns, their operand in L2. Calling BLAS from compiled code
(see `_blas`) costs nothing per GEMM, where ctypes from Python costs ~6 us. dW is accumulated
transposed, K on the short side of the output: 1.2-2x faster than dW itself when K is small.
1x1 convolutions with stride 1 and no padding copy nothing: their GEMMs read x as it is.

Windows with stride 1 along W, whose output lines are long, copy each input line once per
(c, rd, rh) instead of once per tap: the block holds whole lines, each with the (RW-1)*dw
columns its last taps read, and tap rw is a GEMM of inner dimension C*RD*RH on the block
shifted by rw*dw columns (`line_columns`), RW of them accumulating in a small output block that
is then copied out without its padding positions. RW times less copying: measured on one core
here, 0.67-0.82 of the time of the full im2col for a 16-channel 3x3 layer at 1024^2 (forward and
both backwards), 0.85-0.88 for 3x3x3 at 64^3 (forward, backward-data; backward-filter takes this
path only for lines of at least 64 (RW-1)*dw columns, being slower on shorter ones).

2-D data is handled as 3-D with a depth of 1: one implementation for both. One call's blocks
are split over numba's thread count (`numba.set_num_threads`, at most BLAS's thread count, so
OMP_NUM_THREADS=1 or a threadpoolctl limit keeps a call serial), each part on a worker thread
with its own scratch, BLAS single-threaded meanwhile (`_blas.serial_blas`); several threads may
also call the kernels at once. The compiled loops release the GIL.

The lowering (im2col, col2im, the cutting into blocks) is in `_im2col`, the worker threads and
scratch buffers in `_workers`; this module holds the GEMM loops over blocks and the operations.
"""
from math import prod

import numba
import numpy as np

from ...backend import check_float_array
from ..checks import (VolumeWindow, check_batch, check_bias, check_filter, check_filter_outputs, checked_conv_output,
                      spatial_dims)
from ._blas import BLAS_INT, GEMM, NO_TRANS, ROW_MAJOR, TRANS
from ._im2col import address, chunk, col2im, columns
from ._images import images_data, images_filter, images_forward
from ._shifted import line_blocking, padded_width, shifted_filter_chunks, shifted_forward_chunks, shifts_lines
from ._transpose import flipped_filter
from ._workers import balanced_blocks, in_parallel, parts_for, summed, thread_count, thread_scratch

__all__ = ["conv_forward", "conv_backward_data", "conv_backward_filter", "conv_backward_bias", "SCRATCH_BYTES"]

# Chunk sizes, measured with OpenBLAS 0.3.31 on one Zen 4 core. Its small-matrix kernels take a
# GEMM with M*N*K up to 1e6 unpacked: 115 GFLOP/s for (16 x 432) @ (432 x 128), 47 for
# (432 x 1024). Larger GEMMs run best with a few hundred columns, their operand in L2. im2col
# fills a block of several GEMMs' columns at once (fewer, longer copies), about _BLOCK_BYTES.
_SMALL_GEMM = 900_000
_GEMM_PIXELS = 256
_FILTER_GEMM_PIXELS = 384
_BLOCK_BYTES = 1 << 20
# About what one call's im2col scratch takes, per thread (a block holds at least one GEMM's columns);
# perfmodel counts it as a convolution's workspace.
SCRATCH_BYTES = 2 * _BLOCK_BYTES

_ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(ROW_MAJOR), np.int32(NO_TRANS), np.int32(TRANS)


@numba.njit(nogil=True, cache=True)
def _forward_chunks(gemm, x, w2, bias, y, kernel, stride, dilation, lo, out_spatial, pointwise,
                    per_block, per_gemm, first, last, scratch, one):
    """y[n, :, block] = w2 @ cols(block) + bias for blocks first..last-1 (see chunk), one GEMM per
    per_gemm pixels.

    x: (N, C, D, H, W), w2: (K, C*R), bias: (K,) or (0,), y: (N, K, pixels), scratch: >= C*R*per_block.
    """
    k_out, rows = w2.shape
    pixels = y.shape[2]
    for index in range(first, last):
        n, q0, count = chunk(index, pixels, per_block)
        cols, ld_cols = columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, q0, count, scratch)
        for s in range(0, count, per_gemm):
            gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, BLAS_INT(k_out), BLAS_INT(min(per_gemm, count - s)),
                 BLAS_INT(rows), one, w2.ctypes.data, BLAS_INT(rows), cols + numba.uintp(s * x.itemsize),
                 BLAS_INT(ld_cols), one - one, address(y, (n * k_out) * pixels + q0 + s), BLAS_INT(pixels))
        for k in range(bias.shape[0]):
            out = y[n, k, q0:q0 + count]
            out += bias[k]


@numba.njit(nogil=True, cache=True)
def _filter_chunks(gemm, x, dy, dw, k_major, kernel, stride, dilation, lo, out_spatial, pointwise,
                   per_block, per_gemm, first, last, scratch, one):
    """dw += the filter gradient of blocks first..last-1 (dy[n, :, block] x cols(block)), one GEMM per
    per_gemm pixels.

    x: (N, C, D, H, W), dy: (N, K, pixels); dw: (K, C*R) when k_major, else its transpose (C*R, K): with
    K as the short side of the GEMM's output OpenBLAS runs 1.2-2x faster than on dW itself when K is small.
    """
    k_out = dy.shape[1]
    rows = x.shape[1] * kernel[0] * kernel[1] * kernel[2]
    pixels = dy.shape[2]
    for index in range(first, last):
        n, q0, count = chunk(index, pixels, per_block)
        cols, ld_cols = columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, q0, count, scratch)
        for s in range(0, count, per_gemm):
            m = BLAS_INT(min(per_gemm, count - s))
            grad = address(dy, (n * k_out) * pixels + q0 + s)
            if k_major:
                gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(k_out), BLAS_INT(rows), m, one, grad, BLAS_INT(pixels),
                     cols + numba.uintp(s * x.itemsize), BLAS_INT(ld_cols), one, dw.ctypes.data, BLAS_INT(rows))
            else:
                gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(rows), BLAS_INT(k_out), m, one,
                     cols + numba.uintp(s * x.itemsize), BLAS_INT(ld_cols), grad, BLAS_INT(pixels), one,
                     dw.ctypes.data, BLAS_INT(k_out))


@numba.njit(nogil=True, cache=True)
def _data_chunks(gemm, dy, w2, dx, kernel, stride, dilation, lo, out_spatial, per_block, per_gemm, first, last,
                 scratch, one):
    """dx += col2im(w2^T @ dy[n, :, block]) for blocks first..last-1, one GEMM per per_gemm pixels.

    dy: (N, K, pixels), w2: (K, C*R), dx: (N, C, D, H, W).
    """
    k_out, rows = w2.shape
    pixels = dy.shape[2]
    for index in range(first, last):
        n, q0, count = chunk(index, pixels, per_block)
        block = scratch[:rows * count].reshape((rows, count))
        for s in range(0, count, per_gemm):
            gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, BLAS_INT(rows), BLAS_INT(min(per_gemm, count - s)), BLAS_INT(k_out),
                 one, w2.ctypes.data, BLAS_INT(rows), address(dy, n * k_out * pixels + q0 + s), BLAS_INT(pixels),
                 one - one, address(block, s), BLAS_INT(count))
        col2im(block, kernel, stride, dilation, lo, out_spatial, n * pixels + q0, dx)


def _input_lines(win, out_spatial, in_spatial, per_block):
    """footprint(first, last) for in_parallel: an interval of flattened input lines (n, d, h) that holds
    every line that the output pixels of blocks first..last-1 read (blocks as in chunk)."""
    out_d, out_h, out_w = out_spatial
    in_d, in_h = in_spatial[:2]
    (rd, rh, _), (sd, sh, _), (dd, dh, _), (lod, loh, _) = win.kernel, win.stride, win.dilation, win.lo

    def line(n, pixel, last):
        od, oh = divmod(pixel // out_w, out_h)
        plane = od * sd - lod + (dd * (rd - 1) if last else 0)
        row = oh * sh - loh + (dh * (rh - 1) if last else 0)
        if last:
            return (n * in_d + min(plane, in_d - 1)) * in_h + (min(row, in_h - 1) if plane < in_d else in_h - 1)
        return (n * in_d + max(plane, 0)) * in_h + (max(row, 0) if plane >= 0 else 0)

    def footprint(first, last):
        n0, q0, _ = chunk(first, out_d * out_h * out_w, per_block)
        n1, q1, count = chunk(last - 1, out_d * out_h * out_w, per_block)
        return line(n0, q0, False), line(n1, q1 + count - 1, True)

    return footprint


def _gemm_pixels(k, rows):
    """Pixels per GEMM (k x rows) @ (rows x pixels): few enough for OpenBLAS's small-matrix kernels
    (which skip packing) when that still leaves 64 pixels, else _GEMM_PIXELS."""
    small = _SMALL_GEMM // (k * rows)
    return small if small >= 64 else _GEMM_PIXELS


def _blocking(pixels, rows, itemsize, per_gemm, n_img=1, parts=1):
    """(pixels per block, blocks per image): blocks of whole GEMMs, their columns about _BLOCK_BYTES,
    balanced within an image, and as many in all as `parts` divides where blocks of 64 pixels or more
    allow (`balanced_blocks`)."""
    target = per_gemm * max(1, _BLOCK_BYTES // (rows * itemsize * per_gemm))
    return balanced_blocks(n_img, -(-pixels // target), pixels, parts, least=64)


def _images_per_block(n_img, pixels, rows, itemsize, parts=1):
    """Whole images per GEMM where each image has too few output pixels for a GEMM of its own (see
    `_images`), enough for about _GEMM_PIXELS columns and still one block per thread, the blocks as many
    as `parts` divides where they can be; 0 otherwise."""
    if n_img < 2 or not 0 < 2 * pixels <= _GEMM_PIXELS:
        return 0
    fit = max(1, 4 * _BLOCK_BYTES // (rows * pixels * itemsize))
    per_block = min(-(-_GEMM_PIXELS // pixels), -(-n_img // thread_count()), fit)
    per_block = balanced_blocks(1, -(-n_img // per_block), n_img, parts)[0]
    return per_block if per_block > 1 else 0


# The filter gradient is accumulated as dW (K, C*R) itself from this many filters on: transposing
# dW^T afterwards costs more there than the GEMMs gain (5 ms for 512 filters of 512x3x3 on one core).
_K_MAJOR_FILTERS = 256


def _geometry(win, out_spatial):
    return win.kernel, win.stride, win.dilation, win.lo, out_spatial


def _correlate(x, w2, win, out_spatial, bias=None):
    """y = correlate(x, w) + bias: x (N, C, D, H, W) contiguous, w2 (K, C*R) -> y (N, K, prod(out_spatial))."""
    n_img = x.shape[0]
    k, rows = w2.shape
    pixels = prod(out_spatial)
    y = np.empty((n_img, k, pixels), x.dtype)
    if y.size == 0:
        return y
    bias = np.zeros(0, x.dtype) if bias is None else bias
    flops = 2.0 * y.size * rows
    if shifts_lines(win, out_spatial, x.shape[1], k):
        taps = win.kernel[2]
        rows //= taps
        w3 = np.ascontiguousarray(w2.reshape(k, rows, taps).transpose(2, 0, 1))
        width = padded_width(win, out_spatial)
        per_block, per_image = line_blocking(out_spatial[0] * out_spatial[1], (rows + k) * width * x.itemsize,
                                             _BLOCK_BYTES, n_img, parts_for(flops))
        per_gemm = _gemm_pixels(k, rows)

        def shifted(first, last):
            scratch = thread_scratch((rows + k) * per_block * width, x.dtype)
            shifted_forward_chunks(GEMM[x.dtype], x, w3, bias, y, *_geometry(win, out_spatial), per_block,
                                    per_gemm, first, last, scratch, x.dtype.type(1))

        in_parallel(shifted, n_img * per_image, flops)
        return y
    images = _images_per_block(n_img, pixels, rows + k, x.itemsize, parts_for(flops))
    if images:
        def whole(first, last):
            images_forward(GEMM[x.dtype], x, w2, bias, y, *_geometry(win, out_spatial), images, first, last,
                           thread_scratch((rows + k) * images * pixels, x.dtype), x.dtype.type(1))

        in_parallel(whole, -(-n_img // images), flops)
        return y
    pointwise = win.pointwise_on(x.shape[2:], out_spatial)
    per_gemm = _gemm_pixels(k, rows)
    per_block, per_image = _blocking(pixels, rows, x.itemsize, per_gemm, n_img, parts_for(flops))

    def work(first, last):
        scratch = thread_scratch(0 if pointwise else rows * per_block, x.dtype)
        _forward_chunks(GEMM[x.dtype], x, w2, bias, y, *_geometry(win, out_spatial), pointwise,
                        per_block, per_gemm, first, last, scratch, x.dtype.type(1))

    in_parallel(work, n_img * per_image, flops)
    return y


def _correlate_filter(x, dy, win, out_spatial):
    """dW (K, C*R) = sum over pixels of dy x cols: x (N, C, D, H, W), dy (N, K, prod(out_spatial))."""
    n_img, c = x.shape[:2]
    k, pixels = dy.shape[1:]
    rows = c * win.size
    if dy.size == 0:
        return np.zeros((k, rows), x.dtype)
    # Its per-line copy of dy and K-column GEMMs cost more per line than the forward's: measured on one
    # core here, 0.71 of the im2col path's time at OW = 1024, 0.98 at 128, 1.03-1.05 at 64 (3x3x3).
    if shifts_lines(win, out_spatial, c, k) and out_spatial[2] >= 64 * (win.kernel[2] - 1) * win.dilation[2]:
        taps = win.kernel[2]
        rows //= taps
        width = padded_width(win, out_spatial)
        flops = 2.0 * dy.size * rows * taps
        per_block, per_image = line_blocking(out_spatial[0] * out_spatial[1], (rows + k) * width * x.itemsize,
                                             _BLOCK_BYTES, n_img, parts_for(flops))

        def shifted(first, last):
            dw_t = np.zeros((taps, rows, k), x.dtype)
            scratch = thread_scratch((rows + k) * per_block * width, x.dtype)
            shifted_filter_chunks(GEMM[x.dtype], x, dy, dw_t, *_geometry(win, out_spatial), per_block,
                                   _FILTER_GEMM_PIXELS, first, last, scratch, x.dtype.type(1))
            return dw_t

        parts = in_parallel(shifted, n_img * per_image, flops)
        return np.ascontiguousarray(summed(parts).transpose(2, 1, 0)).reshape(k, rows * taps)
    k_major = k >= _K_MAJOR_FILTERS
    shape = (k, rows) if k_major else (rows, k)
    flops = 2.0 * dy.size * rows
    images = _images_per_block(n_img, pixels, rows + k, x.itemsize, parts_for(flops))
    if images:
        def whole(first, last):
            dw = np.zeros(shape, x.dtype)
            images_filter(GEMM[x.dtype], x, dy, dw, k_major, *_geometry(win, out_spatial), images, first, last,
                          thread_scratch((rows + k) * images * pixels, x.dtype), x.dtype.type(1))
            return dw

        parts = in_parallel(whole, -(-n_img // images), flops)
    else:
        pointwise = win.pointwise_on(x.shape[2:], out_spatial)
        per_block, per_image = _blocking(pixels, rows, x.itemsize, _FILTER_GEMM_PIXELS, n_img, parts_for(flops))

        def work(first, last):
            dw = np.zeros(shape, x.dtype)
            scratch = thread_scratch(0 if pointwise else rows * per_block, x.dtype)
            _filter_chunks(GEMM[x.dtype], x, dy, dw, k_major, *_geometry(win, out_spatial), pointwise,
                           per_block, _FILTER_GEMM_PIXELS, first, last, scratch, x.dtype.type(1))
            return dw

        parts = in_parallel(work, n_img * per_image, flops)
    total = summed(parts)
    return total if k_major else np.ascontiguousarray(total.T)


def _scatter_data(dy, w2, win, out_spatial, x_shape):
    """dx (N, C, D, H, W) = col2im(W^T @ dy): the adjoint of `_correlate` for any stride."""
    n_img, k, pixels = dy.shape
    rows = w2.shape[1]
    dx = np.zeros(x_shape, dy.dtype)
    if dy.size == 0:
        return dx
    flops = 2.0 * dy.size * rows
    images = _images_per_block(n_img, pixels, rows + k, dy.itemsize, parts_for(flops))
    if images:
        def whole(first, last):
            images_data(GEMM[dy.dtype], dy, w2, dx, *_geometry(win, out_spatial), images, first, last,
                        thread_scratch((rows + k) * images * pixels, dy.dtype), dy.dtype.type(1))

        in_parallel(whole, -(-n_img // images), flops)  # whole images: disjoint outputs
        return dx
    per_gemm = _gemm_pixels(rows, k)
    # blocks that may write the same lines run in two rounds (below): twice as many ranges
    per_block, per_image = _blocking(pixels, rows, dy.itemsize, per_gemm, n_img, 2 * parts_for(flops))

    def work(first, last):
        _data_chunks(GEMM[dy.dtype], dy, w2, dx, *_geometry(win, out_spatial), per_block, per_gemm, first, last,
                     thread_scratch(rows * per_block, dy.dtype), dy.dtype.type(1))

    # The windows of neighbouring blocks overlap in dx: blocks that may write the same lines run apart.
    in_parallel(work, n_img * per_image, flops, _input_lines(win, out_spatial, x_shape[2:], per_block))
    return dx


def _as_3d(a, nd):
    """A contiguous (N, C, D, H, W) view of (N, C, *S) data with nd = 2 or 3 spatial dimensions."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[:2] + (1,) * (3 - nd) + a.shape[2:])


def _filter(w, nd, channels, dtype, where):
    check_filter(w, nd, channels, where)
    return np.ascontiguousarray(w, dtype=dtype)


def conv_forward(x, w, bias=None, stride=1, padding=0, dilation=1):
    """y = conv(x, w) + bias (cross-correlation, as PyTorch).

    x: (N, C, *S), w: (K, C, *R), bias: (K,) or None -> y: (N, K, *O), of x's dtype.
    """
    nd = spatial_dims(x, "conv_forward")
    w = _filter(w, nd, x.shape[1], x.dtype, "conv_forward")
    win, padding = VolumeWindow.of(nd, w.shape[2:], stride, padding, dilation)
    x3 = _as_3d(x, nd)
    out_spatial = win.output_shape(x3.shape[2:], padding)
    if bias is not None:
        bias = np.asarray(bias, dtype=x.dtype)
        check_bias(bias, w.shape[0], "conv_forward")
    y = _correlate(x3, w.reshape(w.shape[0], x.shape[1] * win.size), win, out_spatial, bias)
    return y.reshape((x.shape[0], w.shape[0]) + out_spatial[3 - nd:])


def conv_backward_data(dy, w, x_spatial, stride=1, padding=0, dilation=1):
    """dx = the gradient of conv_forward with respect to x.

    dy: (N, K, *O), w: (K, C, *R), x_spatial: S -> dx: (N, C, *S); input positions that no window
    reads (stride > 1 with a leftover) get 0.
    """
    nd = spatial_dims(dy, "conv_backward_data")
    w = _filter(w, nd, w.shape[1], dy.dtype, "conv_backward_data")
    check_filter_outputs(dy, w, "conv_backward_data")
    win, padding = VolumeWindow.of(nd, w.shape[2:], stride, padding, dilation)
    spatial3, out3 = checked_conv_output(dy, nd, x_spatial, win, padding, "conv_backward_data")
    n_img, k, c = dy.shape[0], w.shape[0], w.shape[1]
    dy3 = _as_3d(dy, nd).reshape(n_img, k, prod(out3))
    w3 = w.reshape((k, c) + win.kernel)
    # Few output pixels per image (GEMMs over whole images, or one short GEMM each): the scatter needs no
    # flipped filter, which costs more than such GEMMs (see `_transpose`).
    if win.stride == (1, 1, 1) and 2 * prod(out3) > _GEMM_PIXELS:
        # The correlation of dy with the flipped filter, channels swapped, reading dy at
        # index i - (d*(R-1) - lo) + r*d.
        flipped = flipped_filter(w3)
        lo = tuple(d * (r - 1) - p for d, r, p in zip(win.dilation, win.kernel, win.lo))
        transposed = VolumeWindow(win.kernel, win.stride, win.dilation, lo)
        dx = _correlate(dy3.reshape((n_img, k) + out3), flipped, transposed, spatial3)
    else:
        dx = _scatter_data(dy3, w.reshape(k, c * win.size), win, out3, (n_img, c) + spatial3)
    return dx.reshape((n_img, c) + spatial3[3 - nd:])


def conv_backward_filter(x, dy, kernel, stride=1, padding=0, dilation=1):
    """dw = the gradient of conv_forward with respect to w.

    x: (N, C, *S), dy: (N, K, *O), kernel: R -> dw: (K, C, *R), of x's dtype.
    """
    nd = spatial_dims(x, "conv_backward_filter")
    check_batch(x, dy, nd, "conv_backward_filter")
    win, padding = VolumeWindow.of(nd, kernel, stride, padding, dilation)
    _, out3 = checked_conv_output(dy, nd, x.shape[2:], win, padding, "conv_backward_filter")
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
