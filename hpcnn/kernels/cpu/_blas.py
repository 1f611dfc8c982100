"""Matrix multiply-accumulate on strided 2-D views, straight through BLAS ?gemm.

`np.matmul` cannot accumulate into its output (beta=1) and copies operands whose strides BLAS
could take as they are; the convolution kernels need both. The routines come from scipy's
`cython_blas` capsules and are called through ctypes, which releases the GIL for the call.
"""
import ctypes

import numpy as np
import scipy.linalg.cython_blas

__all__ = ["gemm"]


def _routine(name, real):
    capsule = scipy.linalg.cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    p_char, p_int, p_real = ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(real)
    prototype = ctypes.CFUNCTYPE(None, p_char, p_char, p_int, p_int, p_int, p_real, ctypes.c_void_p,
                                 p_int, ctypes.c_void_p, p_int, p_real, ctypes.c_void_p, p_int)
    return prototype(address), real


_ROUTINES = {np.dtype(np.float32): _routine("sgemm", ctypes.c_float),
             np.dtype(np.float64): _routine("dgemm", ctypes.c_double)}


def _layout(a):
    """('N' or 'T', leading dimension) of a 2-D view read as a column-major BLAS operand of a^T.

    BLAS is column-major, so a row-major view `a` (row stride ld, unit column stride) is a^T with
    leading dimension ld, passed untransposed; a view with unit row stride is passed transposed.
    """
    item = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and s0 // item >= max(cols, 1):
        return b"N", max(s0 // item, cols, 1)
    if (s0 == item or rows == 1) and s1 % item == 0 and s1 // item >= max(rows, 1):
        return b"T", max(s1 // item, rows, 1)
    raise ValueError(f"gemm: operand with shape {a.shape} and strides {a.strides} is not a BLAS matrix")


def gemm(a, b, c, alpha=1.0, beta=0.0):
    """c = alpha * a @ b + beta * c for 2-D views of one float dtype; c must have a unit column stride.

    a: (M, K), b: (K, N), c: (M, N). Any operand may be a transposed or row-sliced view.
    """
    m, n = c.shape
    k = a.shape[1]
    if a.shape[0] != m or b.shape != (k, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
    if m == 0 or n == 0:
        return c
    if k == 0:
        if beta == 0:
            c.fill(0)
        else:
            c *= beta
        return c
    if not (a.dtype == b.dtype == c.dtype):
        raise ValueError(f"gemm: dtypes {a.dtype}, {b.dtype}, {c.dtype} differ")
    routine, real = _ROUTINES[c.dtype]
    trans_c, ldc = _layout(c)
    if trans_c != b"N":
        raise ValueError(f"gemm: output with strides {c.strides} needs a unit column stride")
    trans_a, lda = _layout(a)
    trans_b, ldb = _layout(b)
    # Row-major c = a @ b is column-major c^T = b^T @ a^T.
    i = ctypes.c_int
    routine(trans_b, trans_a, ctypes.byref(i(n)), ctypes.byref(i(m)), ctypes.byref(i(k)),
            ctypes.byref(real(alpha)), b.ctypes.data, ctypes.byref(i(ldb)), a.ctypes.data,
            ctypes.byref(i(lda)), ctypes.byref(real(beta)), c.ctypes.data, ctypes.byref(i(ldc)))
    return c
