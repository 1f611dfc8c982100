"""Linear (bilinear, trilinear) upsampling by integer factors with PyTorch's align_corners=False, on any device:
composed of array-module operations (numpy, cupy or the emulated GPU).

Along one dimension with factor f, output row o = f * i + j samples the input at i + t_j with
t_j = (j + 0.5) / f - 0.5 (in (-0.5, 0.5)): rows i and i + 1 when t_j >= 0, rows i - 1 and i otherwise,
with the edge row repeated outside the image (PyTorch clamps the source index at 0 and S - 1, which is
the same). So each phase j is a two-tap combination of shifted slices of the input framed by one row on
either side. A distributed layer passes the rows of its neighbours as that frame and asks the kernel to
repeat the edge row only at the global edges (`edges`).
"""
from ..backend import array_module

__all__ = ["upsample_linear_forward", "upsample_linear_backward"]


def _rows(x, axis, a, b):
    return x[(slice(None),) * axis + (slice(a, b),)]


def _phases(f):
    return [(j + 0.5) / f - 0.5 for j in range(f)]


def _frame(x, axis, lo, hi, xp):
    parts = ([_rows(x, axis, 0, 1)] if lo else []) + [x] + ([_rows(x, axis, x.shape[axis] - 1, x.shape[axis])]
                                                           if hi else [])
    return xp.concatenate(parts, axis=axis) if len(parts) > 1 else x


def _forward_axis(x, axis, f, lo, hi, xp):
    xf = _frame(x, axis, lo, hi, xp)
    n = xf.shape[axis] - 2
    out = []
    for t in _phases(f):
        if t >= 0:
            out.append(_rows(xf, axis, 1, n + 1) * (1.0 - t) + _rows(xf, axis, 2, n + 2) * t)
        else:
            out.append(_rows(xf, axis, 0, n) * (-t) + _rows(xf, axis, 1, n + 1) * (1.0 + t))
    y = xp.stack(out, axis=axis + 1)
    return y.reshape(x.shape[:axis] + (n * f,) + x.shape[axis + 1:])


def _backward_axis(dy, axis, f, lo, hi, in_len, xp):
    n = dy.shape[axis] // f
    d = dy.reshape(dy.shape[:axis] + (n, f) + dy.shape[axis + 1:])
    dxf = xp.zeros(dy.shape[:axis] + (n + 2,) + dy.shape[axis + 1:], dy.dtype)
    for j, t in enumerate(_phases(f)):
        dj = d[(slice(None),) * (axis + 1) + (j,)]
        if t >= 0:
            _rows(dxf, axis, 1, n + 1)[...] += dj * (1.0 - t)
            _rows(dxf, axis, 2, n + 2)[...] += dj * t
        else:
            _rows(dxf, axis, 0, n)[...] += dj * (-t)
            _rows(dxf, axis, 1, n + 1)[...] += dj * (1.0 + t)
    # fold the repeated edge rows back into the rows they copy
    if lo:
        _rows(dxf, axis, 1, 2)[...] += _rows(dxf, axis, 0, 1)
    if hi:
        _rows(dxf, axis, n, n + 1)[...] += _rows(dxf, axis, n + 1, n + 2)
    dx = _rows(dxf, axis, 1 if lo else 0, n + 2 - (1 if hi else 0))
    if dx.shape[axis] != in_len:
        raise ValueError(f"upsample_linear_backward: {n} rows per phase and edges {(lo, hi)} give {dx.shape[axis]} "
                         f"input rows along axis {axis}, expected {in_len}")
    return xp.ascontiguousarray(dx)


def _edges(edges, nd):
    return ((True, True),) * nd if edges is None else tuple(edges)


def upsample_linear_forward(x, scale, edges=None):
    """x: (N, C, *S) -> y: (N, C, *((S - 2 + lo + hi) * f)); scale: nd ints; edges: per spatial dimension
    (lo, hi), True where the edge row is repeated (a global edge), False where x's first or last row is a
    neighbour's row that only frames the rows in between (default: every side repeated: y has S * f rows)."""
    xp = array_module(x)
    nd = x.ndim - 2
    y = x
    for k, ((lo, hi), f) in enumerate(zip(_edges(edges, nd), scale)):
        y = _forward_axis(y, 2 + k, int(f), lo, hi, xp)
    return y


def upsample_linear_backward(dy, scale, in_spatial, edges=None):
    """The adjoint of upsample_linear_forward: dy (N, C, *O) -> dx (N, C, *in_spatial)."""
    xp = array_module(dy)
    nd = dy.ndim - 2
    edges = _edges(edges, nd)
    dx = dy
    for k in reversed(range(nd)):
        lo, hi = edges[k]
        dx = _backward_axis(dx, 2 + k, int(scale[k]), lo, hi, in_spatial[k], xp)
    return dx
