"""Device arrays as MPI buffers: handed over as they are to CUDA-aware MPI, else staged through pinned host memory.

`hpcnn.parallel.mpi.Communicator` calls these around every MPI call; nothing else does. For numpy arrays every
function is a no-op that returns the arrays themselves. Emulated-gpu arrays (`hpcnn.emulated`) are always
staged, through the same calls as GPU arrays under a non-CUDA-aware MPI (their streams are no-ops).

    sends = prepare_sends([a, b])   # buffers MPI may read: the arrays, or pinned host copies
    ... Isend(sends[i]) ... Wait ...
    finish_send(sends[i])           # a pinned copy goes back to the pool

    recvs = prepare_recvs([c])      # buffers MPI may write: the arrays, or pinned host buffers
    ... Irecv(recvs[i]) ... Wait ...
    finish_recv(c, recvs[i])        # copies a staged buffer into c (asynchronously, on the current stream)

    buf = prepare_inout(a)          # in-place collectives (Allreduce(IN_PLACE)): a staged copy of a
    ... Allreduce(IN_PLACE, buf) ...
    finish_recv(a, buf)

Synchronisation. hpcnn queues its kernels on the current CUDA stream; before MPI reads or writes
device memory, or reads a host copy of it, that stream is synchronized once per batch of
messages, in one helper: `synchronize`. Device-to-host copies of a batch are queued
asynchronously into pinned buffers and covered by that one synchronisation; host-to-device
copies after a receive are queued on the current stream and never wait on the host: the pinned
buffer returns to the pool with an event, and is reused only once the event has completed.

The pool (`PinnedPool`) keeps at most `PINNED_POOL_BYTES` of idle pinned memory, in power-of-two
size classes; beyond that the least recently returned buffers are freed.

Whether MPI is CUDA-aware is decided once (`cuda_aware`): the environment override
HPCNN_CUDA_AWARE=0/1 first, then MPI's own answer (MPIX_Query_cuda_support through mpi4py, when
mpi4py is already loaded and offers it), then the launcher's switches (MPICH_GPU_SUPPORT_ENABLED=1
on Cray MPICH, OMPI_MCA_opal_cuda_support=true on Open MPI).
"""
import os
import sys
import threading

from ..backend import array_module, is_device_array, is_emulated

__all__ = ["cuda_aware", "synchronize", "PINNED_POOL_BYTES", "PinnedPool", "prepare_sends", "finish_send",
           "prepare_recvs", "prepare_inout", "finish_recv"]

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


def synchronize(arrays):
    """The one synchronisation before MPI: wait for the current CUDA stream when any of `arrays` is a device
    array (a no-op for host arrays, and on the emulated GPU, whose stream runs nothing).

    hpcnn runs its kernels on the current stream, so that is the stream that wrote the arrays.
    """
    for a in arrays:
        if is_device_array(a):
            array_module(a).cuda.get_current_stream().synchronize()
            return


PINNED_POOL_BYTES = 256 * 2**20


class PinnedPool:
    """Reusable page-locked host buffers in power-of-two size classes, at most `limit` bytes of them idle.

    take(shape, dtype, like) lends a buffer (a view of a pinned block) for one message; give_back(view,
    event) returns it, with the event of the copy still reading it (None: free now). A block is lent
    again only after its event has completed; idle blocks beyond `limit` are freed, oldest first.
    """

    def __init__(self, limit=PINNED_POOL_BYTES):
        self.limit = limit
        self._free = {}          # size class -> [(block, event)], oldest first
        self._order = []         # (size class, block) of every idle block, oldest first
        self._lent = {}
        self.idle_bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size_class(nbytes):
        return 1 << max(int(nbytes) - 1, 0).bit_length()

    def take(self, shape, dtype, like):
        """A pinned host buffer of `shape` and `dtype` for staging device array `like`."""
        import numpy as np
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = self._size_class(max(nbytes, 1))
        block = None
        with self._lock:
            free = self._free.get(size)
            if free:
                ready = next((i for i, (_, event) in enumerate(free) if event is None or event.done), 0)
                block, event = free.pop(ready)
                self._order.remove((size, id(block)))
                self.idle_bytes -= size
        if block is None:
            block = _pinned_empty(size, like)
        elif event is not None and not event.done:
            event.synchronize()  # every block of this class is still being read: wait for the oldest copy
        view = block[:nbytes].view(dtype).reshape(shape)
        with self._lock:
            self._lent[id(view)] = (view, block, size)
        return view

    def give_back(self, buffer, event=None):
        """Return a buffer that `take` lent (anything else is ignored); `event`: the copy still reading it."""
        with self._lock:
            entry = self._lent.pop(id(buffer), None)
            if entry is None or entry[0] is not buffer:
                return
            _, block, size = entry
            self._free.setdefault(size, []).append((block, event))
            self._order.append((size, id(block)))
            self.idle_bytes += size
            evicted = False
            while self.idle_bytes > self.limit and self._order:
                old_size, old_id = self._order.pop(0)
                free = self._free[old_size]
                index = next(i for i, (b, _) in enumerate(free) if id(b) == old_id)
                _, old_event = free.pop(index)
                if old_event is not None and not old_event.done:
                    old_event.synchronize()
                self.idle_bytes -= old_size
                evicted = True
        if evicted and "cupy" in sys.modules:
            # CuPy caches pinned memory itself: hand the blocks dropped here back to the system
            sys.modules["cupy"].get_default_pinned_memory_pool().free_all_blocks()


def _pinned_empty(nbytes, like):
    import numpy as np
    if is_emulated(like):
        return array_module(like).empty_pinned((nbytes,), dtype=np.uint8)
    import cupyx
    return cupyx.empty_pinned((nbytes,), dtype=np.uint8)


_pool = PinnedPool()


def _staged(array):
    return is_emulated(array) or (is_device_array(array) and not cuda_aware())


def _stream(array):
    return array_module(array).cuda.get_current_stream()


def prepare_sends(arrays):
    """The buffers MPI should send for `arrays` (C-contiguous): the arrays, or pinned host copies.

    One synchronisation covers the kernels that wrote the arrays and the copies to the host.
    """
    buffers = []
    for a in arrays:
        if _staged(a):
            host = _pool.take(a.shape, a.dtype, a)
            a.get(out=host, stream=_stream(a), blocking=False)
            buffers.append(host)
        else:
            buffers.append(a)
    synchronize(arrays)
    return buffers


def finish_send(buffer):
    """After the send of a `prepare_sends` buffer has completed: return a pinned copy to the pool."""
    _pool.give_back(buffer)


def prepare_recvs(arrays):
    """The buffers MPI should receive into for `arrays`: the arrays, or pinned host buffers.

    A receive straight into device memory (CUDA-aware MPI) first waits for the kernels still reading it;
    a staged one does not need to (its copy into the array is queued after them).
    """
    direct = [a for a in arrays if is_device_array(a) and not _staged(a)]
    synchronize(direct)
    return [_pool.take(a.shape, a.dtype, a) if _staged(a) else a for a in arrays]


def prepare_inout(array):
    """For in-place collectives: like `prepare_recvs`, but a staged buffer starts as a copy of `array`."""
    return prepare_sends([array])[0]


def finish_recv(array, buffer):
    """After the receive into a `prepare_recvs`/`prepare_inout` buffer has completed: copy it into `array`.

    The copy is queued on the current stream; the pinned buffer returns to the pool with its event.
    """
    if buffer is array or not is_device_array(array):
        return array
    stream = _stream(array)
    array.set(buffer, stream=stream)
    _pool.give_back(buffer, stream.record())
    return array
