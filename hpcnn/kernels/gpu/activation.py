"""Element-wise activations and their gradients on the GPU (CuPy), with PyTorch's semantics at zero and NaN."""
from ...backend import check_float_array
from ..checks import check_same_shape
from ._cuda import Program, array_module

__all__ = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward"]

_PROGRAM = Program("activation", r"""
#define HP_EACH for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < n; e += (i64)blockDim.x * gridDim.x)

// NaN passes through, as torch.relu.
extern "C" __global__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, i64 n)
{ HP_EACH { const T v = x[e]; y[e] = v < 0 ? (T)0 : v; } }

extern "C" __global__ void relu_backward(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, i64 n)
{ HP_EACH { dx[e] = y[e] <= 0 ? (T)0 : dy[e]; } }

extern "C" __global__ void leaky_relu_forward(const T* __restrict__ x, T slope, T* __restrict__ y, i64 n)
{ HP_EACH { const T v = x[e]; y[e] = v > 0 ? v : v * slope; } }

extern "C" __global__ void leaky_relu_backward(const T* __restrict__ dy, const T* __restrict__ x, T slope,
                                               T* __restrict__ dx, i64 n)
{ HP_EACH { const T g = dy[e]; dx[e] = x[e] > 0 ? g : g * slope; } }
""")


def _flat(x, where):
    check_float_array(x, where)
    return array_module().ascontiguousarray(x).reshape(-1)


def _same_dtype(a, like):
    return a if a.dtype == like.dtype else a.astype(like.dtype)


def relu_forward(x):
    """y = max(x, 0). x: any shape, float32/float64 -> y: same shape and dtype."""
    xf = _flat(x, "relu_forward")
    y = array_module().empty_like(xf)
    _PROGRAM.launch("relu_forward", xf.dtype, xf.size, xf, y, xf.size)
    return y.reshape(x.shape)


def relu_backward(dy, y):
    """dx = dy where y > 0, else 0 (y is the forward output). dy, y: same shape."""
    where = "relu_backward"
    check_same_shape(dy, "dy", y, "y", where)
    dyf = _flat(dy, where)
    dx = array_module().empty_like(dyf)
    _PROGRAM.launch("relu_backward", dyf.dtype, dyf.size, dyf, _same_dtype(_flat(y, where), dyf), dx, dyf.size)
    return dx.reshape(dy.shape)


def leaky_relu_forward(x, slope):
    """y = x where x > 0, else slope * x. x: any shape -> y: same shape and dtype."""
    xf = _flat(x, "leaky_relu_forward")
    y = array_module().empty_like(xf)
    _PROGRAM.launch("leaky_relu_forward", xf.dtype, xf.size, xf, slope, y, xf.size)
    return y.reshape(x.shape)


def leaky_relu_backward(dy, x, slope):
    """dx = dy where x > 0, else slope * dy (x is the forward input). dy, x: same shape."""
    where = "leaky_relu_backward"
    check_same_shape(dy, "dy", x, "x", where)
    dyf = _flat(dy, where)
    dx = array_module().empty_like(dyf)
    _PROGRAM.launch("leaky_relu_backward", dyf.dtype, dyf.size, dyf, _same_dtype(_flat(x, where), dyf), slope, dx,
                    dyf.size)
    return dx.reshape(dy.shape)
