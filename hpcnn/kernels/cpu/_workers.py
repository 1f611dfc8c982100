"""Worker threads of the CPU convolution: per-thread scratch, and one call's chunks split over a thread pool.

`in_parallel` cuts a call's chunks into up to `thread_count()` parts (numba's thread count, at most
BLAS's, so that OMP_NUM_THREADS=1 or a threadpoolctl limit keeps a call serial), each worth at
least `_PARALLEL_FLOPS`, and runs them on a shared pool with BLAS single-threaded meanwhile
(`_blas.serial_blas`); parts whose outputs may overlap run in two rounds. A forked child starts a
fresh pool. `thread_scratch` keeps one reusable buffer per thread and dtype.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ._blas import blas_threads, serial_blas

__all__ = ["thread_scratch", "thread_count", "in_parallel", "in_elements", "as_volumes", "in_volumes", "summed",
           "parts_for", "balanced_blocks", "set_thread_limit", "FLOPS_PER_ELEMENT"]

# Least work (flops) worth handing to another thread.
_PARALLEL_FLOPS = 20e6

_local = threading.local()


def thread_scratch(size, dtype):
    """This thread's reusable 1-D scratch array of `size` elements (contents are garbage)."""
    key = np.dtype(dtype)
    buffers = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype)
    return buf[:size]


_pool = None
_pool_lock = threading.Lock()


def _forget_pool():
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_pool)


_limit = {"threads": None}


def set_thread_limit(threads):
    """The thread count hpcnn chose for its kernels (`hpcnn.threads.apply_threads`, which leaves BLAS on one
    thread); None: follow BLAS's count again."""
    _limit["threads"] = None if threads is None else max(1, int(threads))


def thread_count():
    """How many threads one kernel call splits its blocks over: numba's thread count for this thread, at
    most the count hpcnn chose (`set_thread_limit`), or where it chose none at most BLAS's (so that
    OMP_NUM_THREADS=1 under MPI, or a threadpoolctl limit, keeps a call serial)."""
    limit = _limit["threads"] or blas_threads() or numba.get_num_threads()
    return min(numba.get_num_threads(), limit)


def in_parallel(work, chunks, flops, footprint=None):
    """[work(first, last) for each part]: the chunks [0, chunks) cut into up to thread_count() parts, each
    worth at least _PARALLEL_FLOPS, run on as many worker threads.

    `footprint(first, last)` -> (lo, hi), when given, bounds the outputs that chunks first..last-1
    write (they may overlap between neighbours): then 2*parts ranges run in two rounds, even ranges
    then odd ones, if same-round ranges never overlap; else the chunks run in one part.
    """
    parts = min(parts_for(flops), chunks)
    ranges = parts if footprint is None else 2 * parts
    if parts <= 1 or ranges > chunks:
        return [work(0, chunks)]
    bounds = [chunks * i // ranges for i in range(ranges + 1)]
    rounds = [list(range(ranges))]
    if footprint is not None:
        spans = [footprint(bounds[i], bounds[i + 1]) for i in range(ranges)]
        if any(spans[i][1] >= spans[i + 2][0] for i in range(ranges - 2)):
            return [work(0, chunks)]
        rounds = [list(range(0, ranges, 2)), list(range(1, ranges, 2))]
    pool = _worker_pool()
    results = []
    with serial_blas():  # the parts are the parallelism
        for members in rounds:
            futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in members]
            results += [f.result() for f in futures]
    return results


def parts_for(flops):
    """How many parts in_parallel cuts a call worth `flops` into, when it has chunks enough."""
    return max(1, min(thread_count(), int(flops // _PARALLEL_FLOPS) if _PARALLEL_FLOPS else thread_count()))


def balanced_blocks(items, per_item, size, parts, least=1):
    """(block size, blocks per item) for `items` items of `size` units each, cut into about `per_item` blocks
    each: the fewest blocks from `per_item` on (up to 2*per_item + parts, no block under `least` units) whose
    total is a multiple of `parts`, so that in_parallel's equal ranges of blocks are equal work (3 blocks over
    2 threads take as long as 4); `per_item` as it is where none is. Blocks per item is what
    `_im2col.chunk` counts for that block size."""
    for count in range(per_item, min(size, 2 * per_item + parts) + 1):
        block = -(-size // count)
        actual = -(-size // block)
        if block < least:
            break
        if (items * actual) % parts == 0:
            return block, actual
    block = -(-size // per_item)
    return block, -(-size // block)


# What in_parallel counts as the work of one element a memory-bound loop (an activation, a pooling window,
# a batch-norm pass) touches: about a nanosecond, what 100 flops of a GEMM take, so that a part is worth a
# thread from about 200 000 elements on.
FLOPS_PER_ELEMENT = 100
# Elements per run of an element-wise loop split over threads.
_RUN = 1 << 16


def in_elements(work, size, passes=1):
    """[work(start, stop)] over runs of [0, size) split over the worker threads (see in_parallel); `passes`:
    the elements each index touches (read and written arrays)."""
    runs = -(-size // _RUN)
    return in_parallel(lambda first, last: work(first * _RUN, min(last * _RUN, size)), max(runs, 1),
                       FLOPS_PER_ELEMENT * passes * size)


def as_volumes(a, spatial):
    """a: (N, C, *S) -> a contiguous (N*C, D, H, W) view or copy (D = 1 for 2-D): what in_volumes cuts."""
    shape3 = (1,) * (3 - len(spatial)) + tuple(spatial)
    return np.ascontiguousarray(a).reshape((-1,) + shape3)


def in_volumes(kernel, sliced, rest, elements):
    """[kernel(*(a[first:last] for a in sliced), *rest)] with the volumes [0, B) of `sliced` (arrays with B
    leading, e.g. the N*C volumes of pooling) cut over the worker threads; `elements`: the elements the whole
    call touches."""
    def work(first, last):
        return kernel(*(a[first:last] for a in sliced), *rest)
    return in_parallel(work, sliced[0].shape[0], FLOPS_PER_ELEMENT * elements)


def summed(parts):
    """The sum of in_parallel's per-part results (fresh arrays each part), added in place into the first, in
    part order."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def _worker_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="hpcnn-conv")
        return _pool

