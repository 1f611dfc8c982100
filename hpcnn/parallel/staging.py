"""GPU arrays as MPI buffers: handed over as they are to CUDA-aware MPI, else staged through pinned host memory.

`hpcnn.parallel.mpi.Communicator` calls these around every MPI call; nothing else does. For numpy arrays every
function is a no-op that returns the array itself.

    send = prepare_send(a)          # a buffer MPI may read (a itself, or a pinned host copy)
    ... Isend(send) ... Wait ...
    finish_send(send)               # the pinned copy goes back to the pool

    recv = prepare_recv(a)          # a buffer MPI may write (a itself, or a pinned host buffer)
    ... Irecv(recv) ... Wait ...
    finish_recv(a, recv)            # copies a staged buffer into a

    buf = prepare_inout(a)          # in-place collectives (Allreduce(IN_PLACE)): a staged copy of a
    ... Allreduce(IN_PLACE, buf) ...
    finish_recv(a, buf)

The stream that produced a GPU array is synchronized before MPI (or the host copy) reads it, in
one place: `synchronize`. Whether MPI is CUDA-aware is decided once (`cuda_aware`): the
environment override HPCNN_CUDA_AWARE=0/1 first, then MPI's own answer (MPIX_Query_cuda_support
through mpi4py, when mpi4py is already loaded and offers it), then the launcher's switches
(MPICH_GPU_SUPPORT_ENABLED=1 on Cray MPICH, OMPI_MCA_opal_cuda_support=true on Open MPI).
"""
import os
import sys
import threading

from ..backend import is_gpu_array

__all__ = ["cuda_aware", "synchronize", "prepare_send", "finish_send", "prepare_recv", "prepare_inout",
           "finish_recv"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_decided = None


def _switch(value):
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def cuda_aware(environ=None, mpi=None, refresh=False):
    """True when MPI can read and write GPU memory directly (decided once per process)."""
    global _decided
    if _decided is not None and not refresh and environ is None and mpi is None:
        return _decided
    environ = os.environ if environ is None else environ
    answer = None
    override = environ.get("HPCNN_CUDA_AWARE")
    if override is not None:
        answer = _switch(override)
        if answer is None:
            raise ValueError(f"HPCNN_CUDA_AWARE={override!r}: expected 0 or 1")
    if answer is None:
        mpi = mpi if mpi is not None else sys.modules.get("mpi4py.MPI")
        query = getattr(mpi, "Query_cuda_support", None)
        if query is not None:
            try:
                answer = bool(query())
            except Exception:  # the MPI library has no MPIX_Query_cuda_support
                answer = None
    if answer is None:
        answer = (_switch(environ.get("MPICH_GPU_SUPPORT_ENABLED", "")) is True
                  or _switch(environ.get("OMPI_MCA_opal_cuda_support", "")) is True)
    if environ is os.environ:
        _decided = answer
    return answer


def synchronize(array):
    """Wait until every kernel queued on the current CUDA stream has finished (no-op for numpy arrays).

    hpcnn runs its kernels on the current stream, so that is the stream that wrote `array`.
    """
    if is_gpu_array(array):
        import cupy
        cupy.cuda.get_current_stream().synchronize()


class _PinnedPool:
    """Reusable page-locked host buffers, by size; one buffer serves one message at a time."""

    def __init__(self):
        self._free = {}
        self._lent = {}
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        import cupyx
        import numpy as np
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with self._lock:
            free = self._free.get(nbytes)
            raw = free.pop() if free else None
        if raw is None:
            raw = cupyx.empty_pinned((max(nbytes, 1),), dtype=np.uint8)
        view = raw[:nbytes].view(dtype).reshape(shape)
        with self._lock:
            self._lent[id(view)] = (view, raw, nbytes)
        return view

    def give_back(self, buffer):
        """Return a buffer that `take` lent (anything else is ignored)."""
        with self._lock:
            entry = self._lent.pop(id(buffer), None)
            if entry is not None and entry[0] is buffer:
                self._free.setdefault(entry[2], []).append(entry[1])


_pool = _PinnedPool()


def _staged(array):
    return is_gpu_array(array) and not cuda_aware()


def prepare_send(array):
    """The buffer MPI should send for `array` (C-contiguous): the array itself, or a pinned host copy."""
    if not is_gpu_array(array):
        return array
    synchronize(array)
    if not _staged(array):
        return array
    host = _pool.take(array.shape, array.dtype)
    array.get(out=host)
    return host


def finish_send(buffer):
    """After the send of a `prepare_send` buffer has completed: return a pinned copy to the pool."""
    _pool.give_back(buffer)


def prepare_recv(array):
    """The buffer MPI should receive into for `array`: the array itself, or a pinned host buffer."""
    if not is_gpu_array(array):
        return array
    # The receive overwrites `array`: kernels still reading it must finish first.
    synchronize(array)
    if not _staged(array):
        return array
    return _pool.take(array.shape, array.dtype)


def prepare_inout(array):
    """For in-place collectives: like `prepare_recv`, but a staged buffer starts as a copy of `array`."""
    if not is_gpu_array(array):
        return array
    synchronize(array)
    if not _staged(array):
        return array
    host = _pool.take(array.shape, array.dtype)
    array.get(out=host)
    return host


def finish_recv(array, buffer):
    """After the receive into a `prepare_recv`/`prepare_inout` buffer has completed: copy it into `array`."""
    if buffer is array or not is_gpu_array(array):
        return array
    array.set(buffer)
    # The host-to-device copy from pinned memory is asynchronous; the buffer is reused only after it.
    synchronize(array)
    _pool.give_back(buffer)
    return array

