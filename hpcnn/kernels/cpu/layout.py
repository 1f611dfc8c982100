"""Convolutions whose output is thin along the contiguous (last) axis, computed with that axis moved outwards.

The CPU convolution kernels work line by line along the last spatial axis, so their cost has a
part per output line. A block that is thin along that axis (a halo piece of a split along W, a
block of a W split into many parts) has as many lines as it has elements: measured on a 16-channel
3x3 layer, a 2x512 piece took 0.1 ms forward, its 512x2 transpose 14 ms, and both backwards alike;
an output 16 wide along the last axis and 512 along the other still ran 3-9 times slower, 32 wide
1.2-1.7 times.
Convolution commutes with a permutation of the spatial axes (of the data, the filter and the
geometry together), so for such a block the functions here swap the last axis with the longest
other one, call the kernel and swap the result back: two copies of a thin block instead of
thousands of one-element lines. Other blocks go straight to the kernels of `conv`.
"""
import numpy as np

from ...geometry import as_tuple, normalize_padding
from . import conv as _conv

__all__ = ["conv_forward", "conv_backward_data", "conv_backward_filter", "THIN", "lines_layout"]

THIN = 32  # an output at most this long along the last axis (and 4 times longer along another) is thin


def _swap(out_spatial):
    """The spatial axis to exchange with the last one, or None (the output is not thin along it)."""
    out_spatial = tuple(out_spatial)
    if len(out_spatial) < 2 or out_spatial[-1] > THIN or min(out_spatial) < 1:
        return None
    k = int(np.argmax(out_spatial[:-1]))
    return k if out_spatial[k] >= 4 * out_spatial[-1] else None


def lines_layout(out_spatial):
    """The output's spatial extents in the order the kernels walk them (the last one along each line): with the
    last axis exchanged where the output is thin along it (what the performance model counts lines of)."""
    k = _swap(out_spatial)
    return tuple(out_spatial) if k is None else _permuted(out_spatial, k)


def _geometry(nd, kernel, stride, padding, dilation):
    """Per-dimension geometry, or None for arguments the kernels themselves refuse (with their messages)."""
    try:
        stride, dilation = as_tuple(stride, nd, "stride"), as_tuple(dilation, nd, "dilation")
        kernel = as_tuple(kernel, nd, "kernel_size")
        return kernel, stride, normalize_padding(padding, nd, kernel, stride, dilation), dilation
    except (ValueError, TypeError):
        return None


def _permuted(values, k):
    values = list(values)
    values[k], values[-1] = values[-1], values[k]
    return tuple(values)


def _axes(ndim, k):
    """The array axes of (N, C, *S) data with spatial axis k and the last one exchanged."""
    return _permuted(range(ndim), 2 + k)


def _t(a, k):
    return np.ascontiguousarray(a.transpose(_axes(a.ndim, k)))


def _output(x_spatial, kernel, stride, padding, dilation):
    return tuple((s + lo + hi - d * (r - 1) - 1) // st + 1
                 for s, r, st, (lo, hi), d in zip(x_spatial, kernel, stride, padding, dilation))


def conv_forward(x, w, bias=None, stride=1, padding=0, dilation=1):
    """`hpcnn.kernels.conv_forward` on the CPU."""
    nd = x.ndim - 2
    if nd < 2 or w.ndim != x.ndim:
        return _conv.conv_forward(x, w, bias, stride, padding, dilation)
    g = _geometry(nd, w.shape[2:], stride, padding, dilation)
    k = None if g is None else _swap(_output(x.shape[2:], *g))
    if k is None:
        return _conv.conv_forward(x, w, bias, stride, padding, dilation)
    _, stride, padding, dilation = g
    y = _conv.conv_forward(_t(x, k), _t(w, k), bias, _permuted(stride, k), _permuted(padding, k),
                           _permuted(dilation, k))
    return _t(y, k)


def conv_backward_data(dy, w, x_spatial, stride=1, padding=0, dilation=1):
    """`hpcnn.kernels.conv_backward_data` on the CPU."""
    nd = dy.ndim - 2
    if nd < 2 or w.ndim != dy.ndim:
        return _conv.conv_backward_data(dy, w, x_spatial, stride, padding, dilation)
    g = _geometry(nd, w.shape[2:], stride, padding, dilation)
    k = None if g is None else _swap(dy.shape[2:])
    if k is None:
        return _conv.conv_backward_data(dy, w, x_spatial, stride, padding, dilation)
    _, stride, padding, dilation = g
    dx = _conv.conv_backward_data(_t(dy, k), _t(w, k), _permuted(tuple(x_spatial), k), _permuted(stride, k),
                                  _permuted(padding, k), _permuted(dilation, k))
    return _t(dx, k)


def conv_backward_filter(x, dy, kernel, stride=1, padding=0, dilation=1):
    """`hpcnn.kernels.conv_backward_filter` on the CPU."""
    nd = x.ndim - 2
    if nd < 2 or dy.ndim != x.ndim:
        return _conv.conv_backward_filter(x, dy, kernel, stride, padding, dilation)
    g = _geometry(nd, kernel, stride, padding, dilation)
    k = None if g is None else _swap(dy.shape[2:])
    if k is None:
        return _conv.conv_backward_filter(x, dy, kernel, stride, padding, dilation)
    kernel, stride, padding, dilation = g
    dw = _conv.conv_backward_filter(_t(x, k), _t(dy, k), _permuted(kernel, k), _permuted(stride, k),
                                    _permuted(padding, k), _permuted(dilation, k))
    return _t(dw, k)
