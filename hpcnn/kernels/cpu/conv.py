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

2-D data is handled as 3-D with a depth of 1: one implementation for both. One call's blocks
are split over numba's thread count (`numba.set_num_threads`, at most BLAS's thread count, so
OMP_NUM_THREADS=1 or a threadpoolctl limit keeps a call serial), each part on a worker thread
with its own scratch, BLAS single-threaded meanwhile (`_blas.serial_blas`); several threads may
also call the kernels at once. The compiled loops release the GIL.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from math import prod

import numba
import numpy as np

from ...backend import check_float_array
from ..checks import (VolumeWindow, check_batch, check_bias, check_filter, check_filter_outputs, checked_conv_output,
                      spatial_dims)
from ._blas import BLAS_INT, GEMM, NO_TRANS, ROW_MAJOR, TRANS, blas_threads, serial_blas

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
# Least work (flops) worth handing to another thread.
_PARALLEL_FLOPS = 20e6

_ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(ROW_MAJOR), np.int32(NO_TRANS), np.int32(TRANS)


@numba.njit(nogil=True, cache=True)
def _window_range(stride, offset, size):
    """The output positions o >= 0 whose input index o*stride + offset lies in [0, size): (first, end)."""
    first = max(0, -(offset // stride))
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


# The copy loops index flat arrays with unsigned integers: with a signed index numba adds a
# negative-index wraparound test to every access, which stops LLVM from vectorizing the loop
# (2-4x slower here). Every count passed in is non-negative.
@numba.njit(nogil=True, cache=True)
def _fill_zero(dst, start, count):
    start = numba.uint64(start)
    for k in range(numba.uint64(count)):
        dst[start + k] = 0


@numba.njit(nogil=True, cache=True)
def _copy(dst, dst_start, src, src_start, src_step, count):
    """dst[dst_start + k] = src[src_start + k*src_step] for k < count."""
    dst_start, src_start, src_step = numba.uint64(dst_start), numba.uint64(src_start), numba.uint64(src_step)
    if src_step == 1:
        for k in range(numba.uint64(count)):
            dst[dst_start + k] = src[src_start + k]
    else:
        for k in range(numba.uint64(count)):
            dst[dst_start + k] = src[src_start + k * src_step]


@numba.njit(nogil=True, cache=True)
def _add(dst, dst_start, dst_step, src, src_start, count):
    """dst[dst_start + k*dst_step] += src[src_start + k] for k < count."""
    dst_start, dst_step, src_start = numba.uint64(dst_start), numba.uint64(dst_step), numba.uint64(src_start)
    for k in range(numba.uint64(count)):
        dst[dst_start + k * dst_step] += src[src_start + k]


@numba.njit(nogil=True, cache=True)
def _tap_columns(kernel_w, stride_w, dilation_w, lo_w, size_w):
    """For each kernel tap along W: the first and end output column whose input column lies inside the image."""
    first, end = np.empty(kernel_w, np.int64), np.empty(kernel_w, np.int64)
    for rw in range(kernel_w):
        first[rw], end[rw] = _window_range(stride_w, rw * dilation_w - lo_w, size_w)
    return first, end


@numba.njit(nogil=True, cache=True)
def _im2col(x, kernel, stride, dilation, lo, out_spatial, first_pixel, cols):
    """cols[(c, rd, rh, rw), j] = x[n, c, od*sd - lod + rd*dd, oh*sh - loh + rh*dh, ow*sw - low + rw*dw]
    for output pixel first_pixel + j of the flattened (N, OD, OH, OW) grid; 0 where that is padding.

    x: (N, C, D, H, W) and cols: (C*RD*RH*RW, pixels), both C-contiguous.
    """
    _, C, D, H, W = x.shape
    RD, RH, RW = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    OW = out_spatial[2]
    count = cols.shape[1]
    lines = _output_lines(out_spatial, first_pixel, count)
    w_first, w_end = _tap_columns(RW, sw, dw, lo[2], W)
    # With unit strides and as many output as input columns ('same' padding), consecutive full
    # output lines read consecutive input lines: one copy serves them all, and only the padding
    # columns at their ends need zeros afterwards.
    lines_contiguous = sh == 1 and sw == 1 and OW == W
    # With stride sw > 1 along W, each input line is first split into its sw phases (x[..., p::sw]):
    # then every tap copies a contiguous run, instead of RW strided gathers that do not vectorize.
    phase_len = (W + sw - 1) // sw
    phases = np.empty(sw * phase_len if sw > 1 else 0, x.dtype)
    x_flat, cols_flat = x.ravel(), cols.ravel()
    for c in range(C):
        for rd in range(RD):
            for rh in range(RH):
                rows = ((c * RD + rd) * RH + rh) * RW  # the first of the RW rows that read input lines (c, rd, rh)
                j = 0  # the chunk's first pixel on output line i
                i = 0
                while i < lines.shape[0]:
                    n, od, oh, ow0, take = lines[i, 0], lines[i, 1], lines[i, 2], lines[i, 3], lines[i, 4]
                    group = 1  # lines of one plane handled at once
                    if lines_contiguous and take == OW:
                        while (i + group < lines.shape[0] and lines[i + group, 4] == OW
                               and lines[i + group, 1] == od and lines[i + group, 0] == n):
                            group += 1
                    i_d = od * sd - lo[0] + rd * dd
                    h0 = oh * sh - lo[1] + rh * dh  # input line of the group's first line
                    # the group's lines l0 <= l < l1 read an input line inside the image
                    l0, l1 = 0, 0
                    if 0 <= i_d < D:
                        l0, l1 = _window_range(sh, h0, H)
                        l1 = min(l1, group)
                        l0 = min(l0, l1)
                    line_start = (((n * C + c) * D + i_d) * H + h0 + l0 * sh) * W
                    if sw > 1 and l1 > l0:
                        for p in range(sw):
                            _copy(phases, p * phase_len, x_flat, line_start + p, sw, (W - p + sw - 1) // sw)
                    for rw in range(RW):
                        base = (rows + rw) * count + j - ow0  # cols position of column 0 of the first line
                        _fill_zero(cols_flat, base + ow0, l0 * take)
                        _fill_zero(cols_flat, base + ow0 + l1 * take, (group - l1) * take)
                        if l1 == l0:
                            continue
                        # ow0 <= a <= b <= ow0 + take: zeros, then input, then zeros, on every line
                        a = min(max(w_first[rw], ow0), ow0 + take)
                        b = max(min(w_end[rw], ow0 + take), a)
                        first = base + l0 * take
                        if b > a and sw > 1:  # one line
                            column = a * sw + rw * dw - lo[2]
                            _copy(cols_flat, first + a, phases, (column % sw) * phase_len + column // sw, 1, b - a)
                        elif b > a:
                            source = line_start + a + rw * dw - lo[2]
                            _copy(cols_flat, first + a, x_flat, source, 1, (l1 - l0 - 1) * take + b - a)
                        for line in range(first, first + (l1 - l0) * take, take):
                            if a > ow0:
                                _fill_zero(cols_flat, line + ow0, a - ow0)
                            if b < ow0 + take:
                                _fill_zero(cols_flat, line + b, ow0 + take - b)
                    j += group * take
                    i += group


@numba.njit(nogil=True, cache=True)
def _col2im(cols, kernel, stride, dilation, lo, out_spatial, first_pixel, dx):
    """The adjoint of `_im2col`: dx[n, c, input index] += cols[(c, rd, rh, rw), j] (padding dropped)."""
    _, C, D, H, W = dx.shape
    RD, RH, RW = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    count = cols.shape[1]
    lines = _output_lines(out_spatial, first_pixel, count)
    w_first, w_end = _tap_columns(RW, sw, dw, lo[2], W)
    # As in _im2col: the taps add contiguous runs into the sw phases of an input line, which are
    # then added to the line once.
    phase_len = (W + sw - 1) // sw
    phases = np.empty(sw * phase_len, dx.dtype)
    dx_flat, cols_flat = dx.ravel(), cols.ravel()
    for c in range(C):
        for rd in range(RD):
            for rh in range(RH):
                rows = ((c * RD + rd) * RH + rh) * RW
                j = 0
                for i in range(lines.shape[0]):
                    n, od, oh, ow0, take = lines[i, 0], lines[i, 1], lines[i, 2], lines[i, 3], lines[i, 4]
                    i_d = od * sd - lo[0] + rd * dd
                    i_h = oh * sh - lo[1] + rh * dh
                    if 0 <= i_d < D and 0 <= i_h < H:
                        line_start = (((n * C + c) * D + i_d) * H + i_h) * W
                        if sw > 1:
                            _fill_zero(phases, 0, phases.shape[0])
                        for rw in range(RW):
                            a = min(max(w_first[rw], ow0), ow0 + take)
                            b = max(min(w_end[rw], ow0 + take), a)
                            source = (rows + rw) * count + j - ow0 + a
                            column = a * sw + rw * dw - lo[2]
                            if sw > 1:
                                _add(phases, (column % sw) * phase_len + column // sw, 1, cols_flat, source, b - a)
                            else:
                                _add(dx_flat, line_start + column, 1, cols_flat, source, b - a)
                        if sw > 1:
                            for p in range(sw):
                                _add(dx_flat, line_start + p, sw, phases, p * phase_len, (W - p + sw - 1) // sw)
                    j += take


@numba.njit(nogil=True, cache=True)
def _chunk(index, pixels, per_chunk):
    """Chunk `index` of the (N, pixels) output grid, cut per_chunk pixels at a time inside each image:
    (image, first pixel, pixel count)."""
    per_image = (pixels + per_chunk - 1) // per_chunk
    n = index // per_image
    first = (index - n * per_image) * per_chunk
    return n, first, min(per_chunk, pixels - first)


@numba.njit(nogil=True, cache=True)
def _address(a, offset):
    """The address of element `offset` of the flattened contiguous array a."""
    return a.ctypes.data + numba.uintp(offset * a.itemsize)


@numba.njit(nogil=True, cache=True)
def _columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, first, count, scratch):
    """(address, leading dimension) of the (C*R, count) columns of output pixels first.. of image n:
    x itself for a pointwise window, else their im2col in scratch."""
    rows = x.shape[1] * kernel[0] * kernel[1] * kernel[2]
    pixels = out_spatial[0] * out_spatial[1] * out_spatial[2]
    if pointwise:
        return _address(x, (n * rows) * pixels + first), pixels
    block = scratch[:rows * count].reshape((rows, count))
    _im2col(x, kernel, stride, dilation, lo, out_spatial, n * pixels + first, block)
    return block.ctypes.data, count


@numba.njit(nogil=True, cache=True)
def _forward_chunks(gemm, x, w2, bias, y, kernel, stride, dilation, lo, out_spatial, pointwise,
                    per_block, per_gemm, first, last, scratch, one):
    """y[n, :, block] = w2 @ cols(block) + bias for blocks first..last-1 (see _chunk), one GEMM per
    per_gemm pixels.

    x: (N, C, D, H, W), w2: (K, C*R), bias: (K,) or (0,), y: (N, K, pixels), scratch: >= C*R*per_block.
    """
    k_out, rows = w2.shape
    pixels = y.shape[2]
    for index in range(first, last):
        n, q0, count = _chunk(index, pixels, per_block)
        cols, ld_cols = _columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, q0, count, scratch)
        for s in range(0, count, per_gemm):
            gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, BLAS_INT(k_out), BLAS_INT(min(per_gemm, count - s)),
                 BLAS_INT(rows), one, w2.ctypes.data, BLAS_INT(rows), cols + numba.uintp(s * x.itemsize),
                 BLAS_INT(ld_cols), one - one, _address(y, (n * k_out) * pixels + q0 + s), BLAS_INT(pixels))
        for k in range(bias.shape[0]):
            out = y[n, k, q0:q0 + count]
            out += bias[k]


@numba.njit(nogil=True, cache=True)
def _filter_chunks(gemm, x, dy, dw_t, kernel, stride, dilation, lo, out_spatial, pointwise,
                   per_block, per_gemm, first, last, scratch, one):
    """dw_t += cols(block) @ dy[n, :, block]^T for blocks first..last-1, one GEMM per per_gemm pixels.

    x: (N, C, D, H, W), dy: (N, K, pixels), dw_t: (C*R, K), the transpose of dW: with K as the
    short side of the GEMM's output OpenBLAS runs 1.2-2x faster than on dW itself when K is small.
    """
    rows, k_out = dw_t.shape
    pixels = dy.shape[2]
    for index in range(first, last):
        n, q0, count = _chunk(index, pixels, per_block)
        cols, ld_cols = _columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, q0, count, scratch)
        for s in range(0, count, per_gemm):
            gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(rows), BLAS_INT(k_out), BLAS_INT(min(per_gemm, count - s)),
                 one, cols + numba.uintp(s * x.itemsize), BLAS_INT(ld_cols),
                 _address(dy, (n * k_out) * pixels + q0 + s), BLAS_INT(pixels), one, dw_t.ctypes.data, BLAS_INT(k_out))


@numba.njit(nogil=True, cache=True)
def _data_chunks(gemm, dy, w2, dx, kernel, stride, dilation, lo, out_spatial, per_block, per_gemm, first, last,
                 scratch, one):
    """dx += col2im(w2^T @ dy[n, :, block]) for blocks first..last-1, one GEMM per per_gemm pixels.

    dy: (N, K, pixels), w2: (K, C*R), dx: (N, C, D, H, W).
    """
    k_out, rows = w2.shape
    pixels = dy.shape[2]
    for index in range(first, last):
        n, q0, count = _chunk(index, pixels, per_block)
        block = scratch[:rows * count].reshape((rows, count))
        for s in range(0, count, per_gemm):
            gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, BLAS_INT(rows), BLAS_INT(min(per_gemm, count - s)), BLAS_INT(k_out),
                 one, w2.ctypes.data, BLAS_INT(rows), _address(dy, n * k_out * pixels + q0 + s), BLAS_INT(pixels),
                 one - one, _address(block, s), BLAS_INT(count))
        _col2im(block, kernel, stride, dilation, lo, out_spatial, n * pixels + q0, dx)


_local = threading.local()


def _scratch(size, dtype):
    """This thread's reusable 1-D scratch array of `size` elements (contents are garbage)."""
    key = np.dtype(dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    return buf[:size]


_pool = None
_pool_lock = threading.Lock()


def _forget_pool():
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _threads():
    """How many threads one kernel call splits its blocks over: numba's thread count for this thread,
    at most BLAS's (so that OMP_NUM_THREADS=1 under MPI, or a threadpoolctl limit, keeps it serial)."""
    return min(numba.get_num_threads(), blas_threads() or numba.get_num_threads())


def _in_parallel(work, chunks, flops, footprint=None):
    """[work(first, last) for each part]: the chunks [0, chunks) cut into up to _threads() parts, each
    worth at least _PARALLEL_FLOPS, run on as many worker threads.

    `footprint(first, last)` -> (lo, hi), when given, bounds the outputs that chunks first..last-1
    write (they may overlap between neighbours): then 2*parts ranges run in two rounds, even ranges
    then odd ones, if same-round ranges never overlap; else the chunks run in one part.
    """
    parts = min(_threads(), chunks, int(flops // _PARALLEL_FLOPS) if _PARALLEL_FLOPS else chunks)
    ranges = parts if footprint is None else 2 * parts
    if parts <= 1 or ranges > chunks:
        return [work(0, chunks)]
    bounds = [chunks * i // ranges for i in range(ranges + 1)]
    rounds = [list(range(ranges))]
    if footprint is not None:
        spans = [footprint(bounds[i], bounds[i + 1]) for i in range(ranges)]
        if any(spans[i][1] >= spans[i + 2][0] for i in range(ranges - 2)):
            return [work(0, chunks)]
        rounds = [list(range(0, ranges, 2)), list(range(1, ranges, 2))]
    pool = _worker_pool()
    results = []
    with serial_blas():  # the parts are the parallelism
        for members in rounds:
            futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in members]
            results += [f.result() for f in futures]
    return results


def _worker_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="hpcnn-conv")
        return _pool


def _input_lines(win, out_spatial, in_spatial, per_block):
    """footprint(first, last) for _in_parallel: an interval of flattened input lines (n, d, h) that holds
    every line that the output pixels of blocks first..last-1 read (blocks as in _chunk)."""
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
        n0, q0, _ = _chunk(first, out_d * out_h * out_w, per_block)
        n1, q1, count = _chunk(last - 1, out_d * out_h * out_w, per_block)
        return line(n0, q0, False), line(n1, q1 + count - 1, True)

    return footprint


def _gemm_pixels(k, rows):
    """Pixels per GEMM (k x rows) @ (rows x pixels): few enough for OpenBLAS's small-matrix kernels
    (which skip packing) when that still leaves 64 pixels, else _GEMM_PIXELS."""
    small = _SMALL_GEMM // (k * rows)
    return small if small >= 64 else _GEMM_PIXELS


def _blocking(pixels, rows, itemsize, per_gemm):
    """(pixels per block, blocks per image): blocks of whole GEMMs, their columns about _BLOCK_BYTES,
    balanced within an image."""
    target = per_gemm * max(1, _BLOCK_BYTES // (rows * itemsize * per_gemm))
    per_image = -(-pixels // target)
    return -(-pixels // per_image), per_image


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
    pointwise = win.is_pointwise
    per_gemm = _gemm_pixels(k, rows)
    per_block, per_image = _blocking(pixels, rows, x.itemsize, per_gemm)

    def work(first, last):
        scratch = _scratch(0 if pointwise else rows * per_block, x.dtype)
        _forward_chunks(GEMM[x.dtype], x, w2, bias, y, *_geometry(win, out_spatial), pointwise,
                        per_block, per_gemm, first, last, scratch, x.dtype.type(1))

    _in_parallel(work, n_img * per_image, 2.0 * y.size * rows)
    return y


def _correlate_filter(x, dy, win, out_spatial):
    """dW (K, C*R) = sum over pixels of dy x cols: x (N, C, D, H, W), dy (N, K, prod(out_spatial))."""
    n_img, c = x.shape[:2]
    k, pixels = dy.shape[1:]
    rows = c * win.size
    if dy.size == 0:
        return np.zeros((k, rows), x.dtype)
    pointwise = win.is_pointwise
    per_block, per_image = _blocking(pixels, rows, x.itemsize, _FILTER_GEMM_PIXELS)

    def work(first, last):
        dw_t = np.zeros((rows, k), x.dtype)
        scratch = _scratch(0 if pointwise else rows * per_block, x.dtype)
        _filter_chunks(GEMM[x.dtype], x, dy, dw_t, *_geometry(win, out_spatial), pointwise,
                       per_block, _FILTER_GEMM_PIXELS, first, last, scratch, x.dtype.type(1))
        return dw_t

    parts = _in_parallel(work, n_img * per_image, 2.0 * dy.size * rows)
    return np.ascontiguousarray(sum(parts).T)


def _scatter_data(dy, w2, win, out_spatial, x_shape):
    """dx (N, C, D, H, W) = col2im(W^T @ dy): the adjoint of `_correlate` for any stride."""
    n_img, k, pixels = dy.shape
    rows = w2.shape[1]
    dx = np.zeros(x_shape, dy.dtype)
    if dy.size == 0:
        return dx
    per_gemm = _gemm_pixels(rows, k)
    per_block, per_image = _blocking(pixels, rows, dy.itemsize, per_gemm)

    def work(first, last):
        _data_chunks(GEMM[dy.dtype], dy, w2, dx, *_geometry(win, out_spatial), per_block, per_gemm, first, last,
                     _scratch(rows * per_block, dy.dtype), dy.dtype.type(1))

    # The windows of neighbouring blocks overlap in dx: blocks that may write the same lines run apart.
    _in_parallel(work, n_img * per_image, 2.0 * dy.size * rows,
                 _input_lines(win, out_spatial, x_shape[2:], per_block))
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
    if win.stride == (1, 1, 1):
        # The correlation of dy with the flipped filter, channels swapped, reading dy at
        # index i - (d*(R-1) - lo) + r*d.
        flipped = np.ascontiguousarray(w3[:, :, ::-1, ::-1, ::-1].transpose(1, 0, 2, 3, 4)).reshape(c, k * win.size)
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
