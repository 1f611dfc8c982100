"""Compiling and launching hpcnn's CUDA C kernels, and the few knobs the GPU kernels read.

Each kernel module holds its CUDA C source as a `Program`: every `extern "C" __global__`
function in it is compiled once per element type (`T` is `float` or `double`) with NVRTC (CuPy's
RawModule) and launched with blocks of `HP_BLOCK` threads, either as a grid-stride loop over its
work items (`launch`) or over a number of block tasks (`launch_blocks`, for kernels that reduce in
shared memory with `__syncthreads`). The same source also compiles as C++ on a host, one thread per
CUDA thread (tests/gpu/emulator.py, which runs the GPU host code with numpy arrays).

A convolution's im2col scratch is sized from the device's free memory (`scratch_bytes`: an eighth
of what the driver and CuPy's pool have free, at most 2 GiB) and reused across tiles and calls.

Knob (environment, read once here):
  HPCNN_GPU_TF32         1: float32 matrix products on TF32 tensor cores (faster, about 1e-3
                         relative error); 0: exact float32; unset: CuPy's own default (CUPY_TF32)
"""
import contextlib
import os
import re

import numpy as np

from ...backend import CUDA_LIBRARIES_HELP, gpu_scratch_bytes

__all__ = ["Program", "array_module", "backend", "use_backend", "scratch_bytes", "scratch_elements", "ScratchBuffers",
           "set_tf32", "tf32_enabled", "NVRTC_HELP"]

_THREADS_PER_BLOCK = 256
NVRTC_HELP = CUDA_LIBRARIES_HELP
# A grid-stride loop needs no more blocks than keep every SM busy; 64K blocks of 256 threads
# is far above that on any current GPU, and keeps the grid inside every launch limit.
_MAX_BLOCKS = 65536
# Kernels that index with 32-bit integers (the convolution tiles) are launched over fewer work
# items than this; the others index with 64-bit integers.
MAX_WORK_ITEMS = 2**31 - 1

# Shared by every program, on the device and on the host emulator alike.
_COMMON = r"""
typedef long long i64;
#define HP_BLOCK %d
__device__ __forceinline__ double hp_neg_inf() { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ double hp_nan() { return __longlong_as_double(0x7ff8000000000000LL); }
""" % _THREADS_PER_BLOCK

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

    threads_per_block = _THREADS_PER_BLOCK

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
        if work > 0:
            self._launch(kernel, dtype, min(-(-work // _THREADS_PER_BLOCK), _MAX_BLOCKS), args)

    def launch_blocks(self, kernel, dtype, tasks, *args):
        """Run `kernel` over `tasks` block tasks (a grid-stride loop over blocks; every thread of a block
        takes part in each of its tasks), for kernels that reduce in shared memory."""
        if tasks > 0:
            self._launch(kernel, dtype, min(int(tasks), _MAX_BLOCKS), args)

    def _launch(self, kernel, dtype, blocks, args):
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
            functions = self._functions[key] = self.compile(program, dtype)
        functions[kernel]((blocks,), (threads,), args)

    def compile(self, program, dtype):
        """{kernel name: cupy RawKernel} of `program` for `dtype`, compiled by NVRTC now."""
        cp = self.xp
        try:
            module = cp.RawModule(code=program.source_for(dtype), options=("--std=c++14",), backend="nvrtc")
            return {name: module.get_function(name) for name in program.kernels}
        except cp.cuda.compiler.CompileException:
            raise
        except Exception as e:  # NVRTC itself missing or unloadable: not a fault of the source
            raise RuntimeError(f"hpcnn's GPU kernels ({program.name}) could not be compiled: CuPy could not use "
                               f"NVRTC ({type(e).__name__}: {e}); {NVRTC_HELP}") from e

    def free_bytes(self):
        """Device memory free for new arrays: the driver's free memory and the blocks CuPy's pool holds idle."""
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def stream_key(self):
        return self.xp.cuda.get_current_stream().ptr


_backend = None


def _missing_cupy():
    return ImportError("hpcnn's GPU kernels need CuPy: pip install 'hpcnn[gpu]' (cupy-cuda13x[ctk], for a CUDA 13 "
                       "driver) on a machine with an NVIDIA GPU")


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


def scratch_bytes():
    """The scratch budget of one convolution tile: `hpcnn.backend.gpu_scratch_bytes` of the free memory."""
    return gpu_scratch_bytes(backend().free_bytes())


def scratch_elements(itemsize):
    """How many elements of `itemsize` bytes a kernel's scratch buffer may hold."""
    return max(scratch_bytes() // itemsize, 1)


class ScratchBuffers:
    """One reused buffer per CUDA stream and dtype, grown to the largest request (im2col columns)."""

    def __init__(self):
        self._buffers = {}

    def take(self, shape, dtype):
        """A C-contiguous array of `shape` and `dtype` on the current stream's buffer (its content undefined)."""
        xp = array_module()
        n = 1
        for s in shape:
            n *= int(s)
        key = (backend().stream_key(), np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None or buf.size < n:
            self._buffers.pop(key, None)
            del buf  # the smaller buffer goes back to the pool before its successor is allocated
            buf = self._buffers[key] = xp.empty(max(n, 1), dtype=dtype)
        return buf[:n].reshape(shape)


# CuPy's float32 GEMM compute types (cupy/_core/_routines_linalg.pyx: DEFAULT = 1, TF32 = 7).
_COMPUTE_TYPE_DEFAULT = 1
_COMPUTE_TYPE_TF32 = 7


def _linalg():
    from cupy._core import _routines_linalg
    return _routines_linalg


# cuBLAS math modes (cublas_api.h): what batched products (1x1 convolutions) follow.
_CUBLAS_DEFAULT_MATH = 0
_CUBLAS_TF32_TENSOR_OP_MATH = 3


def set_tf32(enabled):
    """Let float32 matrix products use TF32 tensor cores (True) or keep them exact (False): CuPy's compute
    type for its GEMMs, and the math mode of the current device's cuBLAS handle for batched products."""
    if not isinstance(backend(), _CupyBackend):
        return
    linalg = _linalg()
    code = getattr(linalg, "COMPUTE_TYPE_TF32", _COMPUTE_TYPE_TF32) if enabled else \
        getattr(linalg, "COMPUTE_TYPE_DEFAULT", _COMPUTE_TYPE_DEFAULT)
    linalg.set_compute_type(np.float32, code)
    from cupy.cuda import cublas, device
    cublas.setMathMode(device.get_cublas_handle(), _CUBLAS_TF32_TENSOR_OP_MATH if enabled else _CUBLAS_DEFAULT_MATH)


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
