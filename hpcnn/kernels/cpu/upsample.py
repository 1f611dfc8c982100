"""Nearest-neighbour upsampling by integer factors over 2-D and 3-D data, and its gradient.

Both work on (B, D, H, W) volumes (B = N*C, D = 1 for 2-D data), split over the convolution's worker
threads (`_workers.in_volumes`), each part a compiled loop that releases the GIL.
"""
import numba
import numpy as np

from ..checks import upsample_input_spatial, upsample_scale
from ._workers import as_volumes, in_volumes

__all__ = ["upsample_nearest_forward", "upsample_nearest_backward"]


@numba.njit(cache=True, nogil=True)
def _sum_blocks(dy, dx, fd, fh, fw):
    """dy: (B, D*fd, H*fh, W*fw) -> dx: (B, D, H, W), each output the sum of its fd*fh*fw block."""
    B, D, H, W = dx.shape
    for b in range(B):
        for d in range(D):
            for h in range(H):
                out = dx[b, d, h]
                out[:] = 0
                for a in range(fd):
                    for e in range(fh):
                        # (W, fw) blocks indexed from 0: no negative-index checks, so LLVM vectorizes.
                        blocks = dy[b, d * fd + a, h * fh + e].reshape((W, fw))
                        for w in range(W):
                            acc = out[w]
                            for f in range(fw):
                                acc += blocks[w, f]
                            out[w] = acc


@numba.njit(cache=True, nogil=True)
def _repeat_blocks(x, y, fd, fh, fw):
    """x: (B, D, H, W) -> y: (B, D*fd, H*fh, W*fw), each input element repeated over its block."""
    B, D, H, W = x.shape
    for b in range(B):
        for d in range(D):
            for h in range(H):
                first = y[b, d * fd, h * fh].reshape((W, fw))
                src = x[b, d, h]
                for w in range(W):
                    v = src[w]
                    for f in range(fw):
                        first[w, f] = v
                line = y[b, d * fd, h * fh]
                for a in range(fd):
                    for e in range(fh):
                        if a or e:
                            y[b, d * fd + a, h * fh + e] = line


def upsample_nearest_forward(x, scale):
    """Repeat each element scale times along each spatial axis.

    x: (N, C, *S); scale: int or nd ints -> y: (N, C, *(S * scale)).
    """
    nd, scale = upsample_scale(x, scale, "upsample_nearest_forward")
    out_spatial = tuple(s * f for s, f in zip(x.shape[2:], scale))
    y = np.empty(x.shape[:2] + out_spatial, dtype=x.dtype)
    if y.size:
        in_volumes(_repeat_blocks, (as_volumes(x, x.shape[2:]), as_volumes(y, out_spatial)), (1,) * (3 - nd) + scale,
                   x.size + y.size)
    return y


def upsample_nearest_backward(dy, scale):
    """Sum each scale-block of dy. dy: (N, C, *(S * scale)) -> dx: (N, C, *S)."""
    where = "upsample_nearest_backward"
    nd, scale = upsample_scale(dy, scale, where)
    spatial = upsample_input_spatial(dy, scale, where)
    dx = np.empty(dy.shape[:2] + spatial, dtype=dy.dtype)
    if dx.size:
        in_volumes(_sum_blocks, (as_volumes(dy, dy.shape[2:]), as_volumes(dx, spatial)), (1,) * (3 - nd) + scale,
                   dx.size + dy.size)
    return dx
