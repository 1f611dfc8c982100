"""BLAS ?gemm for the CPU kernels: callable from numba code (no Python between GEMMs) and from Python.

The convolution kernels run their chunk loops in numba and call cblas_?gemm there, on strided
views, with beta=1 to accumulate. numba reaches the routine through an object passed as an
argument (`GEMM[dtype]`, a numba first-class function: its address and signature), so that the
compiled kernels can still be cached.

The library is the one named by $HPCNN_BLAS if set, else numpy's own OpenBLAS when it can be
found (ILP64 `scipy_cblas_sgemm64_` in numpy's wheels): its small-matrix kernels run the thin
GEMMs of a convolution chunk (16..256 rows, a few hundred columns) at up to 1.5x the speed of the
older OpenBLAS in scipy's wheels. Then scipy's, then any BLAS that threadpoolctl sees loaded.
Both 64-bit (ILP64) and 32-bit integer interfaces work.

Kernel family. An OpenBLAS built for many CPUs picks its kernels when it loads, and
OPENBLAS_CORETYPE overrides the choice for the whole process: a machine image that pins it to an
older family (OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU, seen here) halves the speed of every
GEMM (numpy's float32 matmul: about 105 GFLOP/s on one core against 150-200 with the AVX-512
kernels). numpy's copy keeps what the environment says; hpcnn's kernels load a private copy of
the same library (a file copy in hpcnn's cache, so that it loads as a second instance) with the
newest family the CPU supports, when that is newer than the one numpy's copy runs.
$HPCNN_BLAS_CORETYPE chooses instead: "numpy" (share numpy's copy and its kernels) or an OpenBLAS
core name (SKYLAKEX, HASWELL, ...). `BLAS_SOURCE` says which library and kernels are in use.
"""
import ctypes
import glob
import os
import shutil
import threading

import numba.experimental.function_type  # noqa: F401  (lets numba take first-class function arguments)
import numpy as np
from numba.core import types

__all__ = ["gemm", "GEMM", "BLAS_INT", "BLAS_SOURCE", "BLAS_KERNELS", "BLAS_FAMILY", "best_family", "ROW_MAJOR", "NO_TRANS", "TRANS", "serial_blas", "blas_threads"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (single, double, integer width) symbol names of cblas ?gemm, most wanted first.
_SYMBOLS = [("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", 64), ("cblas_sgemm64_", "cblas_dgemm64_", 64),
            ("cblas_sgemm_64", "cblas_dgemm_64", 64),
            ("scipy_cblas_sgemm", "scipy_cblas_dgemm", 32), ("cblas_sgemm", "cblas_dgemm", 32)]


def _candidate_libraries():
    """$HPCNN_BLAS (a shared library path) if set, then numpy's and scipy's OpenBLAS, then any loaded BLAS."""
    chosen = os.environ.get("HPCNN_BLAS")
    if chosen:
        return [chosen]
    site = os.path.dirname(os.path.dirname(np.__file__))
    paths = sorted(glob.glob(os.path.join(site, "numpy.libs", "*openblas*")))
    paths += sorted(glob.glob(os.path.join(site, "scipy.libs", "*openblas*")))
    try:
        from threadpoolctl import threadpool_info
        paths += [info["filepath"] for info in threadpool_info() if info.get("user_api") == "blas"]
    except Exception:  # threadpoolctl is optional here
        pass
    return paths


def _find_cblas():
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double, width in _SYMBOLS:
            if hasattr(lib, single) and hasattr(lib, double):
                return lib, getattr(lib, single), getattr(lib, double), width, path
    raise ImportError(f"hpcnn's CPU kernels need a BLAS with cblas_sgemm/cblas_dgemm; none in {_candidate_libraries()} "
                      "(pip wheels of numpy and scipy bring one; HPCNN_BLAS may name another library)")


# CPU flags -> the OpenBLAS core family their kernels need, newest first.
_FAMILIES = [("SKYLAKEX", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
             ("HASWELL", {"avx2", "fma"})]
_RANK = {"skylakex": 2, "cooperlake": 2, "sapphirerapids": 2, "haswell": 1, "zen": 1}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def best_family(flags=None):
    """The newest OpenBLAS core family whose instructions the CPU has ("SKYLAKEX", "HASWELL"), or None."""
    flags = _cpu_flags() if flags is None else flags
    return next((name for name, needs in _FAMILIES if needs <= flags), None)


def _symbol(lib, names):
    for name in names:
        if hasattr(lib, name):
            return getattr(lib, name)
    return None


def _corename(lib):
    """The kernel family an OpenBLAS library runs ("Haswell", "SkylakeX", ...), or None when it does not say."""
    f = _symbol(lib, ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "scipy_openblas_get_corename",
                      "openblas_get_corename"))
    if f is None:
        return None
    f.argtypes, f.restype = [], ctypes.c_char_p
    return f().decode(errors="replace").strip()


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpcnn", "blas")


def _private_copy(path, family):
    """A second instance of the library at `path`, loaded with OPENBLAS_CORETYPE=family (a file copy in
    hpcnn's cache: the same file would load as the same instance), or None when that fails."""
    try:
        st = os.stat(path)
        # the library's own name (threadpoolctl knows OpenBLAS by it), in a folder per source file
        target = os.path.join(_cache_dir(), f"{st.st_size}-{int(st.st_mtime)}", os.path.basename(path))
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            partial = f"{target}.{os.getpid()}.part"
            shutil.copyfile(path, partial)
            os.replace(partial, target)  # atomic: ranks copying at once each see a whole file
    except OSError:
        return None
    saved = os.environ.get("OPENBLAS_CORETYPE")
    os.environ["OPENBLAS_CORETYPE"] = family  # read by the library's constructor, while it loads
    try:
        return ctypes.CDLL(target)
    except OSError:
        return None
    finally:
        if saved is None:
            del os.environ["OPENBLAS_CORETYPE"]
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


def _choose_library():
    """(numpy's library, the library used, sgemm, dgemm, integer width, path, words): numpy's OpenBLAS or a
    private copy of it with newer kernels (see the module docstring)."""
    lib, sgemm, dgemm, width, path = _find_cblas()
    shared = _corename(lib)
    wanted = os.environ.get("HPCNN_BLAS_CORETYPE", "").strip()
    if wanted.lower() == "numpy" or shared is None or os.environ.get("HPCNN_BLAS"):
        return lib, lib, sgemm, dgemm, width, path, f"{shared or 'its own'} kernels"
    family = wanted.upper() or best_family()
    why = "HPCNN_BLAS_CORETYPE" if wanted else "the newest this CPU runs"
    if family is None or family.lower() == shared.lower() or (
            not wanted and _RANK.get(shared.lower(), 0) >= _RANK.get(family.lower(), 0)):
        return lib, lib, sgemm, dgemm, width, path, f"{shared} kernels"
    copy = _private_copy(path, family)
    core = _corename(copy) if copy is not None else None
    if core is None or core.lower() == shared.lower() or not hasattr(copy, sgemm.__name__):
        return lib, lib, sgemm, dgemm, width, path, f"{shared} kernels ({family} could not be loaded)"
    return (lib, copy, getattr(copy, sgemm.__name__), getattr(copy, dgemm.__name__), width, copy._name,
            f"{core} kernels ({why}; numpy's copy runs {shared})")


_SHARED, _LIB, _SGEMM, _DGEMM, _WIDTH, _PATH, _KERNELS = _choose_library()
BLAS_INT = np.int64 if _WIDTH == 64 else np.int32
BLAS_KERNELS = _KERNELS
BLAS_FAMILY = _corename(_LIB) or "unknown"
BLAS_SOURCE = f"{os.path.basename(_PATH)} ({_WIDTH}-bit integers, {_KERNELS})"


class _Routine:
    """cblas_?gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), pointers as addresses."""

    def __init__(self, function, real):
        self._address = ctypes.cast(function, ctypes.c_void_p).value
        e, n, p = types.int32, types.int64 if _WIDTH == 64 else types.int32, types.uintp
        self._signature = types.void(e, e, e, n, n, n, real, p, n, p, n, real, p, n)
        # Not a numba WrapperAddressProtocol subclass: numba types those anew on every call (~20 us).
        self._numba_type_ = types.FunctionType(self._signature)

    def __wrapper_address__(self):
        return self._address

    def signature(self):
        return self._signature


GEMM = {np.dtype(np.float32): _Routine(_SGEMM, types.float32),
        np.dtype(np.float64): _Routine(_DGEMM, types.float64)}

for _function, _real in ((_SGEMM, ctypes.c_float), (_DGEMM, ctypes.c_double)):
    _n = ctypes.c_int64 if _WIDTH == 64 else ctypes.c_int
    _function.argtypes = [ctypes.c_int] * 3 + [_n] * 3 + [_real, ctypes.c_void_p, _n, ctypes.c_void_p, _n, _real,
                                                          ctypes.c_void_p, _n]
    _function.restype = None
_PY_GEMM = {np.dtype(np.float32): _SGEMM, np.dtype(np.float64): _DGEMM}


def _thread_routines(lib):
    """(get, set) of the library's thread count, or (None, None)."""
    for get, set_ in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                      ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                      ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                      ("openblas_get_num_threads", "openblas_set_num_threads"),
                      ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads")):
        if hasattr(lib, get) and hasattr(lib, set_):
            get, set_ = getattr(lib, get), getattr(lib, set_)
            get.argtypes, get.restype = [], ctypes.c_int
            set_.argtypes, set_.restype = [ctypes.c_int], None
            return get, set_
    return None, None


_get_threads, _set_threads = _thread_routines(_LIB)
if _LIB is not _SHARED and _set_threads is not None:
    _shared_get = _thread_routines(_SHARED)[0]
    if _shared_get is not None:  # the private copy starts with the thread count numpy's copy has now
        _set_threads(_shared_get())


def blas_threads():
    """How many threads the BLAS library may use now (as set by OMP_NUM_THREADS, threadpoolctl...), or
    None when the library does not say."""
    return _get_threads() if _get_threads is not None else None


class serial_blas:
    """Context: the BLAS library runs every call on its calling thread while any such context is open.

    For kernels that split their work over threads themselves: two threads each waiting on
    OpenBLAS's own thread pool run up to 5x slower than the same calls run serially, and
    OpenBLAS's per-thread setting (openblas_set_num_threads_local) changes the process-wide
    count in the pthreads builds of numpy's wheels. The count is process-wide: it is restored
    when the last open context closes.
    """

    _lock = threading.Lock()
    _open = 0
    _saved = None

    def __enter__(self):
        with serial_blas._lock:
            if serial_blas._open == 0 and _get_threads is not None:
                serial_blas._saved = _get_threads()
                if serial_blas._saved != 1:
                    _set_threads(1)
            serial_blas._open += 1
        return self

    def __exit__(self, *exc):
        with serial_blas._lock:
            serial_blas._open -= 1
            if serial_blas._open == 0 and serial_blas._saved not in (None, 1):
                _set_threads(serial_blas._saved)


def _layout(a):
    """(transposed, leading dimension) of a 2-D view as a row-major BLAS operand.

    A view with a unit column stride is the matrix with leading dimension = its row stride; a
    view with a unit row stride is the transpose of a row-major matrix.
    """
    item = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and s0 // item >= cols:
        return False, max(s0 // item, cols, 1)
    if (s0 == item or rows == 1) and s1 % item == 0 and s1 // item >= rows:
        return True, max(s1 // item, rows, 1)
    raise ValueError(f"gemm: operand with shape {a.shape} and strides {a.strides} is not a BLAS matrix")


def gemm(a, b, c, alpha=1.0, beta=0.0):
    """c = alpha * a @ b + beta * c for 2-D views of one float dtype; c must have a unit column stride.

    a: (M, K), b: (K, N), c: (M, N). Any operand may be a transposed or row-sliced view.
    """
    m, n = c.shape
    k = a.shape[1]
    if a.shape[0] != m or b.shape != (k, n):
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
    if not (a.dtype == b.dtype == c.dtype):
        raise ValueError(f"gemm: dtypes {a.dtype}, {b.dtype}, {c.dtype} differ")
    if m == 0 or n == 0:
        return c
    if k == 0:
        if beta == 0:
            c.fill(0)
        else:
            c *= beta
        return c
    trans_c, ldc = _layout(c)
    if trans_c:
        raise ValueError(f"gemm: output with strides {c.strides} needs a unit column stride")
    trans_a, lda = _layout(a)
    trans_b, ldb = _layout(b)
    _PY_GEMM[c.dtype](ROW_MAJOR, TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS, m, n, k, alpha,
                      a.ctypes.data, lda, b.ctypes.data, ldb, beta, c.ctypes.data, ldc)
    return c
