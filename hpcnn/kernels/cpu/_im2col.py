"""The im2col lowering of the CPU convolution: numba loops that copy receptive fields into column blocks and back.

`im2col` copies the receptive fields of a run of output pixels into a (C*R, pixels) column block
(zeros where a window reads padding), `col2im` is its adjoint (a scatter-add into the input
gradient); `chunk` cuts the flattened (N, pixels) output grid into blocks inside each image and
`columns` gives the GEMM operand of one block: x itself for a pointwise window, else its im2col in
a scratch buffer; `line_columns` copies whole output lines once per (c, rd, rh) for GEMMs that
take the W taps as shifts. Both copies work on flat views with unsigned indices (so that LLVM vectorizes
them) and split a strided input line into its phases first, so that every tap copies a
contiguous run. 2-D data is handled as 3-D with a depth of 1.
"""
import numba
import numpy as np

__all__ = ["im2col", "col2im", "chunk", "address", "columns", "line_columns"]


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
def im2col(x, kernel, stride, dilation, lo, out_spatial, first_pixel, cols):
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
def col2im(cols, kernel, stride, dilation, lo, out_spatial, first_pixel, dx):
    """The adjoint of `im2col`: dx[n, c, input index] += cols[(c, rd, rh, rw), j] (padding dropped)."""
    _, C, D, H, W = dx.shape
    RD, RH, RW = kernel
    sd, sh, sw = stride
    dd, dh, dw = dilation
    count = cols.shape[1]
    lines = _output_lines(out_spatial, first_pixel, count)
    w_first, w_end = _tap_columns(RW, sw, dw, lo[2], W)
    # As in im2col: the taps add contiguous runs into the sw phases of an input line, which are
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
def chunk(index, pixels, per_chunk):
    """Chunk `index` of the (N, pixels) output grid, cut per_chunk pixels at a time inside each image:
    (image, first pixel, pixel count)."""
    per_image = (pixels + per_chunk - 1) // per_chunk
    n = index // per_image
    first = (index - n * per_image) * per_chunk
    return n, first, min(per_chunk, pixels - first)


@numba.njit(nogil=True, cache=True)
def address(a, offset):
    """The address of element `offset` of the flattened contiguous array a."""
    return a.ctypes.data + numba.uintp(offset * a.itemsize)


@numba.njit(nogil=True, cache=True)
def columns(x, kernel, stride, dilation, lo, out_spatial, pointwise, n, first, count, scratch):
    """(address, leading dimension) of the (C*R, count) columns of output pixels first.. of image n:
    x itself for a pointwise window, else their im2col in scratch."""
    rows = x.shape[1] * kernel[0] * kernel[1] * kernel[2]
    pixels = out_spatial[0] * out_spatial[1] * out_spatial[2]
    if pointwise:
        return address(x, (n * rows) * pixels + first), pixels
    block = scratch[:rows * count].reshape((rows, count))
    im2col(x, kernel, stride, dilation, lo, out_spatial, n * pixels + first, block)
    return block.ctypes.data, count


@numba.njit(nogil=True, cache=True)
def line_columns(x, kernel, stride, dilation, lo, out_spatial, n, line0, n_lines, scratch):
    """The (C*RD*RH, n_lines*Wp) columns of output lines line0.. of image n with the W taps left out:
    row (c, rd, rh), column l*Wp + t holds x[n, c, input plane, input row, t - low] (0 in the padding),
    Wp = OW + (RW-1)*dw. Column l*Wp + ow + rw*dw is then what tap rw of output pixel (l, ow) reads."""
    rd_, rh_, rw_ = kernel
    width = out_spatial[2] + (rw_ - 1) * dilation[2]
    rows = x.shape[1] * rd_ * rh_
    block = scratch[:rows * n_lines * width].reshape((rows, n_lines * width))
    lines = out_spatial[0] * out_spatial[1]
    im2col(x, (rd_, rh_, 1), (stride[0], stride[1], 1), (dilation[0], dilation[1], 1), lo,
           (out_spatial[0], out_spatial[1], width), (n * lines + line0) * width, block)
    return block
