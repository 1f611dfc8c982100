"""Nearest-neighbour upsampling by integer factors over 2-D and 3-D data on the GPU (CuPy), and its gradient."""
from ..checks import interleaved_shape, upsample_input_spatial, upsample_scale
from ._cuda import array_module

__all__ = ["upsample_nearest_forward", "upsample_nearest_backward"]


def upsample_nearest_forward(x, scale):
    """Repeat each element scale times along each spatial axis.

    x: (N, C, *S); scale: int or nd ints -> y: (N, C, *(S * scale)).
    """
    xp = array_module()
    nd, scale = upsample_scale(x, scale, "upsample_nearest_forward")
    spatial = tuple(x.shape[2:])
    ones = interleaved_shape(x.shape, spatial, (1,) * nd)
    y = xp.broadcast_to(xp.ascontiguousarray(x).reshape(ones), interleaved_shape(x.shape, spatial, scale))
    return xp.ascontiguousarray(y).reshape(tuple(x.shape[:2]) + tuple(s * f for s, f in zip(spatial, scale)))


def upsample_nearest_backward(dy, scale):
    """Sum each scale-block of dy. dy: (N, C, *(S * scale)) -> dx: (N, C, *S)."""
    xp = array_module()
    where = "upsample_nearest_backward"
    nd, scale = upsample_scale(dy, scale, where)
    spatial = upsample_input_spatial(dy, scale, where)
    blocks = xp.ascontiguousarray(dy).reshape(interleaved_shape(dy.shape, spatial, scale))
    return blocks.sum(axis=tuple(3 + 2 * i for i in range(nd)), dtype=dy.dtype)
