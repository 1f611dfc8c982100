"""Element-wise activations and their gradients (numba), with PyTorch's semantics at zero and NaN.

A call's elements are cut into runs of _RUN, split over the worker threads (`_workers.in_elements`).
"""
import numba
import numpy as np

from ...backend import check_float_array
from ..checks import check_same_shape
from ._workers import in_elements

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]


def _flat(x, where):
    check_float_array(x, where)
    return np.ascontiguousarray(x).reshape(-1)


@numba.njit(cache=True, nogil=True)
def _relu_forward(x, y):
    for i in range(x.shape[0]):
        v = x[i]
        # NaN passes through, as torch.relu.
        y[i] = 0 if v < 0 else v


@numba.njit(cache=True, nogil=True)
def _relu_backward(dy, y, dx):
    for i in range(dy.shape[0]):
        dx[i] = 0 if y[i] <= 0 else dy[i]


@numba.njit(cache=True, nogil=True)
def _leaky_relu_forward(x, slope, y):
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@numba.njit(cache=True, nogil=True)
def _leaky_relu_backward(dy, x, slope, dx):
    for i in range(dy.shape[0]):
        g = dy[i]
        dx[i] = g if x[i] > 0 else g * slope


def relu_forward(x):
    """y = max(x, 0). x: any shape, float32/float64 -> y: same shape and dtype."""
    xf = _flat(x, "relu_forward")
    y = np.empty_like(xf)
    in_elements(lambda a, b: _relu_forward(xf[a:b], y[a:b]), xf.size, 2)
    return y.reshape(x.shape)


def relu_backward(dy, y):
    """dx = dy where y > 0, else 0 (y is the forward output). dy, y: same shape."""
    where = "relu_backward"
    check_same_shape(dy, "dy", y, "y", where)
    dyf = _flat(dy, where)
    dx = np.empty_like(dyf)
    yf = _flat(y, where)
    in_elements(lambda a, b: _relu_backward(dyf[a:b], yf[a:b], dx[a:b]), dyf.size, 3)
    return dx.reshape(dy.shape)


def leaky_relu_forward(x, slope):
    """y = x where x > 0, else slope * x. x: any shape -> y: same shape and dtype."""
    xf = _flat(x, "leaky_relu_forward")
    y = np.empty_like(xf)
    slope = xf.dtype.type(slope)
    in_elements(lambda a, b: _leaky_relu_forward(xf[a:b], slope, y[a:b]), xf.size, 2)
    return y.reshape(x.shape)


def leaky_relu_backward(dy, x, slope):
    """dx = dy where x > 0, else slope * dy (x is the forward input). dy, x: same shape."""
    where = "leaky_relu_backward"
    check_same_shape(dy, "dy", x, "x", where)
    dyf = _flat(dy, where)
    dx = np.empty_like(dyf)
    xf, slope = _flat(x, where), dyf.dtype.type(slope)
    in_elements(lambda a, b: _leaky_relu_backward(dyf[a:b], xf[a:b], slope, dx[a:b]), dyf.size, 3)
    return dx.reshape(dy.shape)
