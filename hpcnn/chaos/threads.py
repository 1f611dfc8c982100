"""Thread settings for CHAOS workers: one BLAS thread per worker, serial nogil numba kernels, a thread-safe numba layer.

Why these settings are safe and fast
------------------------------------
* BLAS: the workers already use every core, so a BLAS call that spawned its own threads would
  oversubscribe them. `worker_thread_limits(blas_threads=1)` caps every BLAS library numpy and
  scipy loaded (threadpoolctl) for the duration of training and restores the previous limit
  afterwards. OpenBLAS and MKL are safe to call from several threads at once. The cap is
  process-wide (OpenBLAS has one setting), so "one BLAS thread per worker" and "one worker with
  two BLAS threads" are the two settings the benchmark compares.
* numba: hpcnn's kernels and the fused CHAOS step are `@numba.njit(nogil=True)` without
  `parallel=True`; each call runs serially on the calling thread, on that thread's stack and
  with its own output arrays, so several workers run them at once without locks. The workers
  share only the weight arrays, which they update without a lock by design ("controlled
  Hogwild": a lost update costs a little accuracy, never memory safety). Should a
  `parallel=True` kernel ever run, the numba threading layer is set to "threadsafe" (OpenMP or
  TBB; the default workqueue layer must not be entered from two threads at once) and each
  worker asks numba for one thread (`numba.set_num_threads(1)` is per thread).
* Python: the GIL is held only between kernel calls (the layer-by-layer step) or between chunks
  of mini-batches (the fused step); `sys.getswitchinterval()` is left as it is.
"""
import os
import sys
from contextlib import contextmanager

import numba

from ..threads import available_cores

__all__ = ["available_cores", "use_threadsafe_numba_layer", "worker_thread_limits", "worker_thread_setup",
           "describe_thread_settings"]


def use_threadsafe_numba_layer():
    """Select a numba threading layer that is safe from several threads, unless one is already chosen.

    Has an effect only before the first parallel numba region runs; returns the configured layer.
    """
    if numba.config.THREADING_LAYER == "default" and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"
    return numba.config.THREADING_LAYER


@contextmanager
def worker_thread_limits(blas_threads=1):
    """Cap BLAS at `blas_threads` threads (process-wide) while the workers run; restores the limits after."""
    from threadpoolctl import threadpool_limits
    use_threadsafe_numba_layer()
    with threadpool_limits(limits=int(blas_threads), user_api="blas"):
        yield


def worker_thread_setup():
    """Called first on each worker thread: numba's thread count for parallel regions is per thread."""
    numba.set_num_threads(1)


def describe_thread_settings():
    """A dict of the settings that decide how many threads a worker really uses (printed by the benchmark)."""
    from threadpoolctl import threadpool_info
    blas = sorted({f"{info.get('internal_api')}={info.get('num_threads')}" for info in threadpool_info()
                   if info.get("user_api") == "blas"})
    return {
        "cores": available_cores(),
        "blas": ", ".join(blas) or "none loaded",
        "numba_threading_layer": numba.config.THREADING_LAYER,
        "NUMBA_NUM_THREADS": numba.config.NUMBA_NUM_THREADS,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "switch_interval_s": sys.getswitchinterval(),
    }
