"""Run hpcnn's GPU kernels on the CPU: their CUDA C source compiled as C++, their host code with numpy.

Each block of a small, odd grid runs its threads as host threads (one per CUDA thread, `threadIdx`
thread-local), `__shared__` arrays are shared by them and `__syncthreads()` is a barrier, so the
block reductions run as on a GPU; atomics hold a lock. That checks the index arithmetic and the
synchronisation of every kernel and all of the host code (tiling, GEMMs, reshapes) on machines
without a GPU; what it cannot check (NVRTC, the driver, cuBLAS, streams, performance) is left to
the `gpu`-marked tests. The libraries are built in a private temporary folder, removed at exit.
"""
import atexit
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
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct hp_dim3 { unsigned int x, y, z; };
static thread_local hp_dim3 threadIdx;
static hp_dim3 blockIdx, blockDim, gridDim;
using std::exp;
using std::log;
static inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
static std::mutex hp_atomic_lock;
template <typename U> static inline U atomicAdd(U* p, U v) {
    std::lock_guard<std::mutex> guard(hp_atomic_lock); U old = *p; *p = old + v; return old;
}
// __syncthreads(): every thread of the block waits for the others (a reusable barrier).
static std::mutex hp_barrier_lock;
static std::condition_variable hp_barrier_cv;
static unsigned int hp_barrier_waiting = 0, hp_barrier_generation = 0;
static inline void __syncthreads() {
    std::unique_lock<std::mutex> lock(hp_barrier_lock);
    const unsigned int generation = hp_barrier_generation;
    if (++hp_barrier_waiting == blockDim.x) {
        hp_barrier_waiting = 0; ++hp_barrier_generation; hp_barrier_cv.notify_all();
    } else {
        hp_barrier_cv.wait(lock, [generation] { return generation != hp_barrier_generation; });
    }
}
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
    for (unsigned int b = 0; b < grid; ++b) {{
        blockIdx.x = b;
        std::vector<std::thread> threads;
        for (unsigned int t = 0; t < block; ++t)
            threads.emplace_back([=] {{ threadIdx.x = t; threadIdx.y = threadIdx.z = 0; {name}({call}); }});
        for (auto& thread : threads) thread.join();
    }}
}}""")
    return "\n".join(out)


class EmulatedBackend:
    """A backend for hpcnn.kernels.gpu._cuda.use_backend: numpy arrays, kernels built with g++."""

    xp = np

    def __init__(self, cache_dir=None):
        if cache_dir is None:
            cache_dir = tempfile.mkdtemp(prefix="hpcnn-cuda-emulator-")
            atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
        self._cache = cache_dir
        self._libraries = {}

    def free_bytes(self):
        """What the tiling sees as free device memory: 1 GiB."""
        return 1 << 30

    def stream_key(self):
        return 0

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
                done = subprocess.run([compiler(), "-std=c++14", "-O1", "-shared", "-fPIC", "-pthread", "-Wall",
                                       "-Werror", "-Wno-unused-variable", "-Wno-unused-function", "-o", tmp, src],
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
