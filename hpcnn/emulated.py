"""The emulated GPU: a strict stand-in for CuPy that checks hpcnn's GPU code path on machines without a GPU.

This module is an array module, like numpy or cupy: `xp.zeros(...)`, `xp.asarray(...)`, `xp.where(...)`,
`xp.cuda.Stream(...)`. It holds the subset of cupy's namespace (functions, array methods and operators)
that hpcnn uses, each computed by unwrapping its arguments, calling numpy and wrapping the result. Its arrays (`ndarray`) refuse to
meet numpy implicitly, as CuPy's do and more strictly:

- `np.asarray(x)` raises TypeError (`__array__`), and so does every numpy function or ufunc called on
  one (`__array_function__`, `__array_ufunc__ = None`: `np.sum(x)`, `np.zeros_like(x)`, `np.sqrt(x)`);
  numpy scalars combine with them as with CuPy's (`np.float32(2) * x`);
- `float(x)`, `int(x)`, `bool(x)` raise TypeError: a device value reaches the host only by an explicit
  copy, so a hidden host synchronisation cannot hide here;
- a numpy array as an operand, an index or a value to store raises TypeError (a hidden upload);
- the explicit copies work: `x.get()`, `x.get(out=host)`, `x.set(host)`, `asnumpy(x)`, and
  `asarray(host)` for the upload.

Streams and events (`cuda.Stream`, `cuda.Event`, `cuda.get_current_stream`) are no-ops with CuPy's
calls, so code that overlaps work on streams runs the same calls here. Pinned host buffers
(`empty_pinned`) are plain numpy arrays. Kernels on emulated arrays are the CPU kernels behind an
explicit host round trip (`hpcnn.kernels` dispatch); MPI stages emulated arrays through host buffers,
as it stages GPU arrays under a non-CUDA-aware MPI (`hpcnn.parallel.staging`).
"""
import numpy as np

__all__ = ["ndarray", "asnumpy", "asarray", "array", "ascontiguousarray", "empty_pinned", "cuda"]

_IMPLICIT = ("Implicit conversion of an emulated-gpu array to a NumPy array is not allowed (as with CuPy); "
             "copy it to the host explicitly with .get() or hpcnn.backend.to_host()")
_HOST_OPERAND = ("a NumPy array met an emulated-gpu array; move it to the device explicitly "
                 "(Device.put / xp.asarray) or the device array to the host (.get())")
_SCALAR = ("an emulated-gpu array has no implicit host value (float(), int(), bool()); "
           "copy it to the host explicitly with .get() or hpcnn.backend.to_host()")


def _unwrap(value):
    """The numpy array inside `value` (lists, tuples and slices looked into); a host ndarray is refused."""
    if type(value) is ndarray:
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(_HOST_OPERAND)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _wrap(value):
    """numpy results as emulated arrays (numpy scalars become 0-d arrays, as CuPy's reductions return)."""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


class ndarray:
    """An array on the emulated GPU: numpy storage that is reachable only through explicit copies."""

    __slots__ = ("_a",)

    def __init__(self, host):
        self._a = host

    # --- what CuPy refuses (and what this stand-in refuses on top) ------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    # NEP 13: numpy's ufuncs refuse these arrays (np.add(x, 1), np.sqrt(x) raise TypeError), and numpy's
    # operators defer to this class, so `np.float32(2) * x` computes here and `host + x` is refused here.
    __array_ufunc__ = None

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on an emulated-gpu array: {_IMPLICIT}")

    def __float__(self):
        raise TypeError(_SCALAR)

    __int__ = __index__ = __bool__ = __complex__ = __float__

    def __iter__(self):
        raise TypeError("iterating over an emulated-gpu array reads it element by element on the host: "
                        "copy it with .get() first")

    # --- the explicit copies ----------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A host copy (into `out` when given: a C-contiguous numpy array of this shape and dtype)."""
        if out is None:
            return np.array(self._a, order=order, copy=True)
        if not isinstance(out, np.ndarray) or out.shape != self.shape or out.dtype != self.dtype:
            raise TypeError(f"get(out=...): expected a numpy array of shape {self.shape} and dtype {self.dtype}")
        out[...] = self._a
        return out

    def set(self, arr, stream=None):
        """Copy the host array `arr` (same shape and dtype) into this array."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise TypeError(f"set(): expected a numpy array of shape {self.shape} and dtype {self.dtype}, "
                            f"received {type(arr).__name__} {getattr(arr, 'shape', '')} {getattr(arr, 'dtype', '')}")
        self._a[...] = arr

    # --- attributes -------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"emulated-gpu array(shape={self.shape}, dtype={self.dtype})"

    # --- indexing ---------------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    # --- methods (those hpcnn calls) ----------------------------------------------------------------
    def _method(name):
        def call(self, *args, **kwargs):
            return _wrap(getattr(self._a, name)(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
        call.__name__ = name
        return call

    for _name in ("reshape", "transpose", "astype", "copy", "sum", "mean", "max", "min", "argmax", "any", "all",
                  "ravel", "fill", "view"):
        locals()[_name] = _method(_name)
    del _name, _method

    # --- operators --------------------------------------------------------------------------------
    def _binary(op):
        def call(self, other):
            return _wrap(op(self._a, _unwrap(other)))
        return call

    def _reflected(op):
        def call(self, other):
            return _wrap(op(_unwrap(other), self._a))
        return call

    def _inplace(op):
        def call(self, other):
            op(self._a, _unwrap(other), out=self._a)
            return self
        return call

    import operator as _op
    for _name, _f in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                      ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power)):
        locals()[f"__{_name}__"] = _binary(_f)
        locals()[f"__r{_name}__"] = _reflected(_f)
        locals()[f"__i{_name}__"] = _inplace(_f)
    for _name, _f in (("lt", _op.lt), ("le", _op.le), ("gt", _op.gt), ("ge", _op.ge), ("eq", _op.eq),
                      ("ne", _op.ne), ("matmul", _op.matmul)):
        locals()[f"__{_name}__"] = _binary(_f)
    __rmatmul__ = _reflected(_op.matmul)
    for _name, _f in (("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                      ("lshift", np.left_shift), ("rshift", np.right_shift)):
        locals()[f"__{_name}__"] = _binary(_f)
        locals()[f"__r{_name}__"] = _reflected(_f)
    __invert__ = lambda self: ndarray(~self._a)  # noqa: E731
    __neg__ = lambda self: ndarray(-self._a)  # noqa: E731
    __pos__ = lambda self: self  # noqa: E731
    __abs__ = lambda self: ndarray(np.abs(self._a))  # noqa: E731
    __hash__ = None
    del _name, _f, _binary, _reflected, _inplace, _op


# --- the module's functions -------------------------------------------------------------------------
def _function(name):
    target = getattr(np, name)

    def call(*args, **kwargs):
        return _wrap(target(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"numpy.{name} on emulated-gpu arrays (host arrays refused)."
    return call


# The subset of cupy's namespace that hpcnn calls.
_FUNCTIONS = ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "sqrt", "where",
              "isfinite", "maximum", "stack", "concatenate", "broadcast_to", "argmax", "bincount", "matmul", "arange")
for _name in _FUNCTIONS:
    globals()[_name] = _function(_name)
__all__ += list(_FUNCTIONS)
del _name

for _name in ("float32", "float64", "int32", "int64", "uint8", "uint32", "uint64", "bool_"):
    globals()[_name] = getattr(np, _name)
del _name


def asarray(a, dtype=None, order=None):
    """`a` on the emulated device: an emulated array as it is (cast when `dtype` differs), a host array or
    Python data copied up (the explicit upload)."""
    if type(a) is ndarray:
        return a if dtype is None or np.dtype(dtype) == a.dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K"):
    """A new emulated array from an emulated array, a host array or Python data."""
    if type(a) is ndarray:
        return ndarray(np.array(a._a, dtype=dtype, copy=copy, order=order))
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order))


def ascontiguousarray(a, dtype=None):
    """`a` (an emulated array) C-contiguous: the array itself when it is already, else a copy."""
    if type(a) is not ndarray:
        raise TypeError(_HOST_OPERAND)
    return ndarray(np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, out=None):
    """The explicit host copy of an emulated array (as cupy.asnumpy)."""
    if type(a) is not ndarray:
        raise TypeError(f"asnumpy: expected an emulated-gpu array, received {type(a).__name__}")
    return a.get(out=out)


def empty_pinned(shape, dtype=np.float64):
    """A host buffer standing for page-locked memory (cupyx.empty_pinned): a plain numpy array."""
    return np.empty(shape, dtype)


class _Event:
    """A CUDA event on the emulated device: always complete."""

    done = True

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _Stream:
    """A CUDA stream on the emulated device: work runs at once, so every call is a no-op."""

    ptr = 0

    def __init__(self, null=False, non_blocking=False, ptds=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        return self

    def synchronize(self):
        pass

    def record(self, event=None):
        return event or _Event()

    def wait_event(self, event):
        pass


class _Cuda:
    """The part of cupy.cuda hpcnn calls: streams and events."""

    Stream = _Stream
    Event = _Event
    _current = _Stream()

    def get_current_stream(self):
        return self._current


cuda = _Cuda()
