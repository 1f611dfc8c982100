"""Run hpcnn's GPU kernels on the CPU: their CUDA C source compiled as C++, their host code with numpy.

The GPU kernels are grid-stride loops without shared memory (see hpcnn/kernels/gpu/_cuda.py),
so a host build that loops over every (block, thread) of a small grid computes what the GPU
computes, up to the order of atomic additions. That checks the index arithmetic of every kernel
and all of the host code (tiling, GEMMs, reshapes) on machines without a GPU; what it cannot
check (NVRTC, the driver, cuBLAS, real concurrency) is left to the `gpu`-marked tests.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

__all__ = ["EmulatedBackend", "compiler"]

_PRELUDE = r"""
#include <cmath>
#include <cstring>
#define __global__
#define __device__
#define __forceinline__ inline
struct hp_dim3 { unsigned int x, y, z; };
static hp_dim3 threadIdx, blockIdx, blockDim, gridDim;
using std::exp;
using std::log;
static inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
template <typename U> static inline U atomicAdd(U* p, U v) { U old = *p; *p = old + v; return old; }
"""

_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.int64): ctypes.c_longlong, np.dtype(np.int32): ctypes.c_int,
           np.dtype(np.uint32): ctypes.c_uint}

# A small, odd grid: every kernel's grid-stride loop must then wrap around several times.
_BLOCKS = 3
_THREADS = 7


def compiler():
    """The C++ compiler the emulator uses, or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _wrappers(program):
    """One exported function per kernel that runs it over every (block, thread) of a grid."""
    out = []
    for name, params in program.kernels.items():
        decl = ", ".join(("const void* " if p.pointer else p.ctype + " ") + p.name for p in params)
        call = ", ".join(f"({p.ctype}*){p.name}" if p.pointer else p.name for p in params)
        out.append(f"""
extern "C" void hp_launch_{name}(unsigned int grid, unsigned int block{', ' if decl else ''}{decl}) {{
    gridDim.x = grid; blockDim.x = block; gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
    for (unsigned int b = 0; b < grid; ++b)
        for (unsigned int t = 0; t < block; ++t) {{
            blockIdx.x = b; threadIdx.x = t;
            {name}({call});
        }}
}}""")
    return "\n".join(out)


class EmulatedBackend:
    """A backend for hpcnn.kernels.gpu._cuda.use_backend: numpy arrays, kernels built with g++."""

    xp = np

    def __init__(self, cache_dir=None):
        self._cache = cache_dir or os.path.join(tempfile.gettempdir(), "hpcnn-cuda-emulator")
        os.makedirs(self._cache, exist_ok=True)
        self._libraries = {}

    def _library(self, program, dtype):
        key = (id(program), dtype)
        lib = self._libraries.get(key)
        if lib is None:
            source = _PRELUDE + program.source_for(dtype) + _wrappers(program)
            digest = hashlib.sha256(source.encode()).hexdigest()[:20]
            path = os.path.join(self._cache, f"{program.name}-{dtype}-{digest}.so")
            if not os.path.exists(path):
                src = path[:-3] + ".cpp"
                with open(src, "w") as f:
                    f.write(source)
                tmp = f"{path}.{os.getpid()}"
                done = subprocess.run([compiler(), "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Werror",
                                       "-Wno-unused-variable", "-Wno-unused-function", "-o", tmp, src],
                                      capture_output=True, text=True, timeout=300)
                if done.returncode:
                    raise RuntimeError(f"g++ could not build {program.name} for {dtype}:\n{done.stderr}")
                os.replace(tmp, path)
            lib = ctypes.CDLL(path)
            self._libraries[key] = lib
        return lib

    def launch(self, program, kernel, dtype, blocks, threads, args):
        fn = getattr(self._library(program, dtype), "hp_launch_" + kernel)
        converted = []
        for p, a in zip(program.kernels[kernel], args):
            if p.pointer:
                converted.append(ctypes.c_void_p(a.ctypes.data))
            else:
                converted.append(_CTYPES[np.dtype(type(a))](a))
        fn(ctypes.c_uint(min(blocks, _BLOCKS)), ctypes.c_uint(_THREADS), *converted)
