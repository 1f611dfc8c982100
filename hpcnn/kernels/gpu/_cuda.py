"""Compiling and launching hpcnn's CUDA C kernels, and the few knobs the GPU kernels read.

Each kernel module holds its CUDA C source as a `Program`: every `extern "C" __global__`
function in it is compiled once per element type (`T` is `float` or `double`) and launched
as a grid-stride loop over its work items. Kernels use no shared memory and no block-level
synchronization, so that the same source also compiles as plain C++ on a host (see
tests/gpu/emulator.py, which runs the GPU host code with numpy arrays on machines without a GPU).

Knobs (environment, read once here):
  HPCNN_GPU_SCRATCH_MB   upper bound of a convolution's im2col scratch buffer (default 256)
  HPCNN_GPU_TF32         1: float32 matrix products on TF32 tensor cores (faster, about 1e-3
                         relative error); 0: exact float32; unset: CuPy's own default (CUPY_TF32)
"""
import contextlib
import os
import re

import numpy as np

from ...backend import GPU_SCRATCH_BYTES as _SCRATCH_BYTES

__all__ = ["Program", "array_module", "backend", "use_backend", "scratch_elements", "set_tf32", "tf32_enabled"]

_THREADS_PER_BLOCK = 256
# A grid-stride loop needs no more blocks than keep every SM busy; 64K blocks of 256 threads
# is far above that on any current GPU, and keeps the grid inside every launch limit.
_MAX_BLOCKS = 65536
# Kernels that index with 32-bit integers (the convolution tiles) are launched over fewer work
# items than this; the others index with 64-bit integers.
MAX_WORK_ITEMS = 2**31 - 1

# Shared by every program, on the device and on the host emulator alike.
_COMMON = r"""
typedef long long i64;
__device__ __forceinline__ double hp_neg_inf() { return __longlong_as_double(0xfff0000000000000LL); }
"""

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

# C parameter type (const and __restrict__ removed) -> numpy dtype; None stands for the program's T.
_SCALAR_TYPES = {"T": None, "float": np.float32, "double": np.float64, "i64": np.int64, "long long": np.int64,
                 "int": np.int32, "unsigned int": np.uint32}


class _Parameter:
    __slots__ = ("name", "ctype", "pointer")

    def __init__(self, text):
        text = " ".join(text.replace("__restrict__", " ").replace("const", " ").split())
        self.pointer = "*" in text
        head, _, name = text.replace("*", " * ").rpartition(" ")
        self.name = name
        self.ctype = " ".join(head.replace("*", " ").split())
        if self.ctype not in _SCALAR_TYPES:
            raise ValueError(f"CUDA kernel parameter {text!r}: type {self.ctype!r} is not one hpcnn passes")

    def dtype(self, element):
        t = _SCALAR_TYPES[self.ctype]
        return np.dtype(element if t is None else t)


class Program:
    """CUDA C source with `extern "C" __global__` kernels written over an element type `T`."""

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.kernels = {}
        for kernel, params in _SIGNATURE.findall(source):
            self.kernels[kernel] = [_Parameter(p) for p in params.split(",") if p.strip()]
        if not self.kernels:
            raise ValueError(f"CUDA program {name}: no extern \"C\" __global__ kernels found")

    def source_for(self, dtype):
        """The full source for element type `dtype` (float32 -> float, float64 -> double)."""
        ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
        return f"typedef {ctype} T;\n{_COMMON}\n{self.source}"

    def launch(self, kernel, dtype, work, *args):
        """Run `kernel` for element type `dtype` over `work` grid-stride items.

        Arrays must be C-contiguous with the dtype the kernel declares; Python numbers are
        converted to the declared scalar type (a CUDA kernel reads raw bytes, so a Python int
        passed where an int is declared would be misread).
        """
        if work <= 0:
            return
        params = self.kernels[kernel]
        if len(args) != len(params):
            raise TypeError(f"{self.name}.{kernel}: expected {len(params)} arguments, received {len(args)}")
        dtype = np.dtype(dtype)
        converted = []
        for p, a in zip(params, args):
            want = p.dtype(dtype)
            if p.pointer:
                if not hasattr(a, "dtype") or a.dtype != want:
                    raise TypeError(f"{self.name}.{kernel}: argument {p.name} must be a {want} array, "
                                    f"received {getattr(a, 'dtype', type(a).__name__)}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}.{kernel}: argument {p.name} must be C-contiguous")
                converted.append(a)
            else:
                converted.append(want.type(a))
        blocks = min(-(-work // _THREADS_PER_BLOCK), _MAX_BLOCKS)
        backend().launch(self, kernel, dtype, blocks, _THREADS_PER_BLOCK, tuple(converted))


class _CupyBackend:
    """Compiles with NVRTC through cupy.RawModule, once per program, element type and device."""

    def __init__(self):
        import cupy
        self.xp = cupy
        self._functions = {}

    def launch(self, program, kernel, dtype, blocks, threads, args):
        cp = self.xp
        key = (id(program), dtype, cp.cuda.runtime.getDevice())
        functions = self._functions.get(key)
        if functions is None:
            module = cp.RawModule(code=program.source_for(dtype), options=("--std=c++14",))
            functions = {name: module.get_function(name) for name in program.kernels}
            self._functions[key] = functions
        functions[kernel]((blocks,), (threads,), args)


_backend = None


def _missing_cupy():
    return ImportError("hpcnn's GPU kernels need CuPy (for example `pip install cupy-cuda12x` or "
                       "`cupy-cuda13x`, matching the CUDA driver) on a machine with an NVIDIA GPU")


def backend():
    """The backend that compiles and launches kernels (CuPy unless a test installed another)."""
    global _backend
    if _backend is None:
        try:
            _backend = _CupyBackend()
        except ImportError:
            raise _missing_cupy() from None
        _apply_tf32_knob()
    return _backend


def array_module():
    """cupy (or, under the host emulator, numpy)."""
    return backend().xp


@contextlib.contextmanager
def use_backend(other):
    """Run the GPU kernels through `other` (an object with `xp` and `launch`) inside the block."""
    global _backend
    previous, _backend = _backend, other
    try:
        yield other
    finally:
        _backend = previous


def scratch_elements(itemsize):
    """How many elements of `itemsize` bytes a kernel's scratch buffer may hold."""
    return max(_SCRATCH_BYTES // itemsize, 1)


# CuPy's float32 GEMM compute types (cupy/_core/_routines_linalg.pyx: DEFAULT = 1, TF32 = 7).
_COMPUTE_TYPE_DEFAULT = 1
_COMPUTE_TYPE_TF32 = 7


def _linalg():
    from cupy._core import _routines_linalg
    return _routines_linalg


def set_tf32(enabled):
    """Let float32 matrix products use TF32 tensor cores (True) or keep them exact (False)."""
    if not isinstance(backend(), _CupyBackend):
        return
    linalg = _linalg()
    code = getattr(linalg, "COMPUTE_TYPE_TF32", _COMPUTE_TYPE_TF32) if enabled else \
        getattr(linalg, "COMPUTE_TYPE_DEFAULT", _COMPUTE_TYPE_DEFAULT)
    linalg.set_compute_type(np.float32, code)


def tf32_enabled():
    """True when float32 matrix products run on TF32 tensor cores."""
    if not isinstance(backend(), _CupyBackend):
        return False
    linalg = _linalg()
    return linalg.get_compute_type(np.float32) == getattr(linalg, "COMPUTE_TYPE_TF32", _COMPUTE_TYPE_TF32)


def _apply_tf32_knob():
    value = os.environ.get("HPCNN_GPU_TF32")
    if value is None or not isinstance(_backend, _CupyBackend):
        return
    if value not in ("0", "1"):
        raise ValueError(f"HPCNN_GPU_TF32 must be 0 or 1, received {value!r}")
    set_tf32(value == "1")
