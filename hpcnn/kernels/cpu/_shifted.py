"""The W taps of a convolution as shifted GEMMs over one copy of each input line (see `conv`'s docstring).

With stride 1 along W and long output lines, each input line is copied once per (c, rd, rh) by
`_im2col.line_columns`; tap rw is then one GEMM of inner dimension C*RD*RH on that block shifted
by rw*dw columns, and the taps add up in a small output block. `conv` chooses this path where
`shifts_lines` says it pays.
"""
import numba
import numpy as np

from ._blas import BLAS_INT, NO_TRANS, ROW_MAJOR, TRANS
from ._im2col import address, chunk, line_columns
from ._workers import balanced_blocks

_ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(ROW_MAJOR), np.int32(NO_TRANS), np.int32(TRANS)


@numba.njit(nogil=True, cache=True)
def shifted_forward_chunks(gemm, x, w3, bias, y, kernel, stride, dilation, lo, out_spatial, per_block, per_gemm,
                            first, last, scratch, one):
    """y[n, :, lines of block] = sum over rw of w3[rw] @ (line block shifted by rw*dw columns) + bias, for
    blocks of per_block output lines first..last-1: RW GEMMs of inner dimension C*RD*RH on one copy
    (see `line_columns`) instead of one GEMM on RW times as many copied rows.

    x: (N, C, D, H, W), w3: (RW, K, C*RD*RH), y: (N, K, pixels), scratch: >= (C*RD*RH + K) * per_block * Wp.
    """
    taps, k_out, rows = w3.shape
    ow = out_spatial[2]
    shift = dilation[2]
    width = ow + (taps - 1) * shift
    lines = out_spatial[0] * out_spatial[1]
    for index in range(first, last):
        n, line0, count = chunk(index, lines, per_block)
        block = line_columns(x, kernel, stride, dilation, lo, out_spatial, n, line0, count, scratch)
        ld = count * width
        out = scratch[rows * ld:rows * ld + k_out * ld].reshape((k_out, ld))
        # The last (RW-1)*dw columns of the last line are padding positions: no GEMM reads past the block.
        columns_used = ld - (taps - 1) * shift
        for s in range(0, columns_used, per_gemm):
            m = min(per_gemm, columns_used - s)
            for rw in range(taps):
                gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, BLAS_INT(k_out), BLAS_INT(m), BLAS_INT(rows), one,
                     address(w3, rw * k_out * rows), BLAS_INT(rows), address(block, s + rw * shift), BLAS_INT(ld),
                     one if rw else one - one, address(out, s), BLAS_INT(ld))
        for k in range(k_out):
            b = bias[k] if bias.shape[0] else one - one
            for line in range(count):
                dst = y[n, k, (line0 + line) * ow:(line0 + line + 1) * ow]
                src = out[k, line * width:line * width + ow]
                for i in range(ow):
                    dst[i] = src[i] + b


@numba.njit(nogil=True, cache=True)
def shifted_filter_chunks(gemm, x, dy, dw_t, kernel, stride, dilation, lo, out_spatial, per_block, per_gemm,
                           first, last, scratch, one):
    """dw_t[rw] += (line block shifted by rw*dw columns) @ dy(block)^T for blocks of per_block output lines
    first..last-1, dy laid out on the block's padded lines with zeros at the padding positions.

    x: (N, C, D, H, W), dy: (N, K, pixels), dw_t: (RW, C*RD*RH, K).
    """
    taps, rows, k_out = dw_t.shape
    ow = out_spatial[2]
    shift = dilation[2]
    width = ow + (taps - 1) * shift
    lines = out_spatial[0] * out_spatial[1]
    for index in range(first, last):
        n, line0, count = chunk(index, lines, per_block)
        block = line_columns(x, kernel, stride, dilation, lo, out_spatial, n, line0, count, scratch)
        ld = count * width
        dyp = scratch[rows * ld:rows * ld + k_out * ld].reshape((k_out, ld))
        for k in range(k_out):
            for line in range(count):
                src = dy[n, k, (line0 + line) * ow:(line0 + line + 1) * ow]
                dst = dyp[k, line * width:(line + 1) * width]
                for i in range(ow):
                    dst[i] = src[i]
                for i in range(ow, width):
                    dst[i] = 0
        columns_used = ld - (taps - 1) * shift
        for s in range(0, columns_used, per_gemm):
            m = min(per_gemm, columns_used - s)
            for rw in range(taps):
                gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(rows), BLAS_INT(k_out), BLAS_INT(m), one,
                     address(block, s + rw * shift), BLAS_INT(ld), address(dyp, s), BLAS_INT(ld), one,
                     address(dw_t, rw * rows * k_out), BLAS_INT(k_out))


def shifts_lines(win, out_spatial, channels, k):
    """Whether the W taps run as shifted GEMMs over one copy of whole lines (`shifted_forward_chunks`):
    stride 1 along W, a W kernel > 1 and an inner dimension C*RD*RH of at least 32, with lines long
    enough that the padding positions the GEMMs also compute ((RW-1)*dw per line) cost less than the
    copying saved. That saving shrinks as the K outputs grow (a pixel copies C*R values for K*C*R
    multiply-adds); measured here: a 10% gain for K = 64 at OW = 128, a 6% loss for K = 128 at OW = 32.
    Hence OW >= RW*dw*K/2, and at most 1/16 more GEMM work."""
    taps, shift, ow = win.kernel[2], win.dilation[2], out_spatial[2]
    return (win.stride[2] == 1 and taps > 1 and channels * win.kernel[0] * win.kernel[1] >= 32
            and ow >= max(16 * (taps - 1) * shift, taps * shift * k / 2))


def padded_width(win, out_spatial):
    """Columns per output line in `line_columns`: the line and the (RW-1)*dw further input columns its taps read."""
    return out_spatial[2] + (win.kernel[2] - 1) * win.dilation[2]


def line_blocking(lines, line_bytes, block_bytes, n_img=1, parts=1):
    """(output lines per block, blocks per image): about `block_bytes` of scratch (line columns and the K
    output or dy lines beside them, `line_bytes` per line), balanced within an image, and as many blocks in
    all as `parts` divides where they can be (`_workers.balanced_blocks`)."""
    return balanced_blocks(n_img, -(-lines // max(1, block_bytes // line_bytes)), lines, parts)
