"""Nearest-neighbour upsampling by integer factors over 2-D and 3-D data, and its gradient."""
import numba
import numpy as np

from ..checks import interleaved_shape, upsample_input_spatial, upsample_scale

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


def upsample_nearest_forward(x, scale):
    """Repeat each element scale times along each spatial axis.

    x: (N, C, *S); scale: int or nd ints -> y: (N, C, *(S * scale)).
    """
    nd, scale = upsample_scale(x, scale, "upsample_nearest_forward")
    spatial = x.shape[2:]
    ones = interleaved_shape(x.shape, spatial, (1,) * nd)
    y = np.broadcast_to(x.reshape(ones), interleaved_shape(x.shape, spatial, scale))
    return np.ascontiguousarray(y).reshape(x.shape[:2] + tuple(s * f for s, f in zip(spatial, scale)))


def upsample_nearest_backward(dy, scale):
    """Sum each scale-block of dy. dy: (N, C, *(S * scale)) -> dx: (N, C, *S)."""
    where = "upsample_nearest_backward"
    nd, scale = upsample_scale(dy, scale, where)
    spatial = upsample_input_spatial(dy, scale, where)
    lead = (1,) * (3 - nd)
    N, C = dy.shape[:2]
    dx = np.empty((N * C,) + lead + spatial, dtype=dy.dtype)
    _sum_blocks(np.ascontiguousarray(dy).reshape((N * C,) + lead + tuple(dy.shape[2:])), dx, *(lead + scale))
    return dx.reshape((N, C) + spatial)
