"""Nearest-neighbour upsampling by integer factors over 2-D and 3-D data on the GPU (CuPy), and its gradient."""
from ...backend import check_float_array
from ..shapes import as_tuple
from ._cuda import array_module

__all__ = ["upsample_nearest_forward", "upsample_nearest_backward"]


def _interleaved(shape, spatial, scale):
    """(N, C, S0, f0, S1, f1, ...): each spatial axis followed by its scale-factor axis."""
    out = tuple(shape[:2])
    for s, f in zip(spatial, scale):
        out += (s, f)
    return out


def upsample_nearest_forward(x, scale):
    """Repeat each element scale times along each spatial axis.

    x: (N, C, *S); scale: int or nd ints -> y: (N, C, *(S * scale)).
    """
    xp = array_module()
    check_float_array(x, "upsample_nearest_forward", ndim=(4, 5))
    nd = x.ndim - 2
    scale = as_tuple(scale, nd, "scale")
    spatial = tuple(x.shape[2:])
    ones = _interleaved(x.shape, spatial, (1,) * nd)
    y = xp.broadcast_to(xp.ascontiguousarray(x).reshape(ones), _interleaved(x.shape, spatial, scale))
    return xp.ascontiguousarray(y).reshape(tuple(x.shape[:2]) + tuple(s * f for s, f in zip(spatial, scale)))


def upsample_nearest_backward(dy, scale):
    """Sum each scale-block of dy. dy: (N, C, *(S * scale)) -> dx: (N, C, *S)."""
    xp = array_module()
    where = "upsample_nearest_backward"
    check_float_array(dy, where, ndim=(4, 5))
    nd = dy.ndim - 2
    scale = as_tuple(scale, nd, "scale")
    if any(s % f for s, f in zip(dy.shape[2:], scale)):
        raise ValueError(f"{where}: dy has shape {tuple(dy.shape)}, whose spatial sizes are not multiples "
                         f"of the scale {scale}")
    spatial = tuple(s // f for s, f in zip(dy.shape[2:], scale))
    blocks = xp.ascontiguousarray(dy).reshape(_interleaved(dy.shape, spatial, scale))
    return blocks.sum(axis=tuple(3 + 2 * i for i in range(nd)), dtype=dy.dtype)
