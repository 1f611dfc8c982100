"""Convolutions whose output per image is small (the deep layers of a network): whole images per GEMM.

A 512-channel 3x3 layer on a 2x2 block gives each image 4 output pixels, and the per-image GEMM
(512 x 4608) @ (4608 x 4) streams the whole 9 MB filter to produce 8 kFLOP per filter element it reads.
Here one block holds the im2col columns of several whole images side by side (im2col and col2im
already walk the flattened (N, pixels) grid across images), so one GEMM serves them all: its output
block is then copied to each image's rows, and for the backward passes dy's rows of those images are
first gathered into one (K, images*pixels) block. Blocks of whole images write disjoint outputs, so
they need no ordering between threads.
"""
import numba
import numpy as np

from ._blas import BLAS_INT, NO_TRANS, ROW_MAJOR, TRANS
from ._im2col import col2im, im2col

__all__ = ["images_forward", "images_filter", "images_data"]

_ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(ROW_MAJOR), np.int32(NO_TRANS), np.int32(TRANS)


@numba.njit(nogil=True, cache=True)
def _images(index, n_img, per_block):
    """(first image, image count) of block `index`."""
    n0 = index * per_block
    return n0, min(per_block, n_img - n0)


@numba.njit(nogil=True, cache=True)
def _image_columns(x, kernel, stride, dilation, lo, out_spatial, pixels, index, per_block, scratch):
    """(first image, image count, columns) of block `index`: the im2col (C*R, count*pixels) of its images
    at the start of scratch."""
    n0, count = _images(index, x.shape[0], per_block)
    rows = x.shape[1] * kernel[0] * kernel[1] * kernel[2]
    block = scratch[:rows * count * pixels].reshape((rows, count * pixels))
    im2col(x, kernel, stride, dilation, lo, out_spatial, n0 * pixels, block)
    return n0, count, block


@numba.njit(nogil=True, cache=True)
def _gather(dy, n0, count, out):
    """out[k, i*P + q] = dy[n0 + i, k, q] for the `count` images from n0: out (K, count*P)."""
    pixels = dy.shape[2]
    for i in range(count):
        for k in range(dy.shape[1]):
            src = dy[n0 + i, k]
            dst = out[k, i * pixels:(i + 1) * pixels]
            for q in range(pixels):
                dst[q] = src[q]


@numba.njit(nogil=True, cache=True)
def images_forward(gemm, x, w2, bias, y, kernel, stride, dilation, lo, out_spatial, per_block, first, last,
                   scratch, one):
    """y[n] = w2 @ cols(image n) + bias for the images of blocks first..last-1, per_block images a GEMM.

    x: (N, C, D, H, W), w2: (K, C*R), bias: (K,) or (0,), y: (N, K, pixels),
    scratch: >= (C*R + K) * per_block * pixels.
    """
    k_out, rows = w2.shape
    pixels = y.shape[2]
    for index in range(first, last):
        n0, count, block = _image_columns(x, kernel, stride, dilation, lo, out_spatial, pixels, index, per_block,
                                          scratch)
        ld = count * pixels
        out = scratch[rows * ld:(rows + k_out) * ld].reshape((k_out, ld))
        gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, BLAS_INT(k_out), BLAS_INT(ld), BLAS_INT(rows), one, w2.ctypes.data,
             BLAS_INT(rows), block.ctypes.data, BLAS_INT(ld), one - one, out.ctypes.data, BLAS_INT(ld))
        for i in range(count):
            for k in range(k_out):
                b = bias[k] if bias.shape[0] else one - one
                dst = y[n0 + i, k]
                src = out[k, i * pixels:(i + 1) * pixels]
                for q in range(pixels):
                    dst[q] = src[q] + b


@numba.njit(nogil=True, cache=True)
def images_filter(gemm, x, dy, dw, k_major, kernel, stride, dilation, lo, out_spatial, per_block, first, last,
                  scratch, one):
    """dw += the filter gradient of the images of blocks first..last-1, per_block images a GEMM.

    dw is (K, C*R) when k_major, else its transpose (C*R, K). x: (N, C, D, H, W), dy: (N, K, pixels),
    scratch: >= (C*R + K) * per_block * pixels.
    """
    k_out = dy.shape[1]
    rows = x.shape[1] * kernel[0] * kernel[1] * kernel[2]
    pixels = dy.shape[2]
    for index in range(first, last):
        n0, count, block = _image_columns(x, kernel, stride, dilation, lo, out_spatial, pixels, index, per_block,
                                          scratch)
        ld = count * pixels
        grad = scratch[rows * ld:(rows + k_out) * ld].reshape((k_out, ld))
        _gather(dy, n0, count, grad)
        if k_major:
            gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(k_out), BLAS_INT(rows), BLAS_INT(ld), one, grad.ctypes.data,
                 BLAS_INT(ld), block.ctypes.data, BLAS_INT(ld), one, dw.ctypes.data, BLAS_INT(rows))
        else:
            gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, BLAS_INT(rows), BLAS_INT(k_out), BLAS_INT(ld), one, block.ctypes.data,
                 BLAS_INT(ld), grad.ctypes.data, BLAS_INT(ld), one, dw.ctypes.data, BLAS_INT(k_out))


@numba.njit(nogil=True, cache=True)
def images_data(gemm, dy, w2, dx, kernel, stride, dilation, lo, out_spatial, per_block, first, last, scratch,
                one):
    """dx[n] += col2im(w2^T @ dy[n]) for the images of blocks first..last-1, per_block images a GEMM.

    dy: (N, K, pixels), w2: (K, C*R), dx: (N, C, D, H, W), scratch: >= (C*R + K) * per_block * pixels.
    """
    k_out, rows = w2.shape
    pixels = dy.shape[2]
    for index in range(first, last):
        n0, count = _images(index, dy.shape[0], per_block)
        ld = count * pixels
        grad = scratch[:k_out * ld].reshape((k_out, ld))
        _gather(dy, n0, count, grad)
        block = scratch[k_out * ld:(k_out + rows) * ld].reshape((rows, ld))
        gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, BLAS_INT(rows), BLAS_INT(ld), BLAS_INT(k_out), one, w2.ctypes.data,
             BLAS_INT(rows), grad.ctypes.data, BLAS_INT(ld), one - one, block.ctypes.data, BLAS_INT(ld))
        col2im(block, kernel, stride, dilation, lo, out_spatial, n0 * pixels, dx)
