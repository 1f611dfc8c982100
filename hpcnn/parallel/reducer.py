"""Gradient allreduce over all ranks in buckets, started as soon as a bucket's gradients are final.

Parameters are grouped, in backward order (last layer first), into buckets of about
`bucket_bytes`. When every layer of a bucket has finished its backward (`ready(module)`), the
bucket's gradients are copied into one flat buffer (allocated once) and a non-blocking
allreduce starts; `finish()` completes every bucket and copies the sums back, so that every
rank holds the full, summed gradients before the optimizer step.
"""
import time

from ..backend import array_module
from .mpi import Communicator

__all__ = ["GradientReducer"]


class _Bucket:
    __slots__ = ("entries", "buffer", "owners", "pending", "request", "started")

    def __init__(self, entries, dtype):
        self.entries = entries            # [(module, key, offset, size, shape)]
        first = entries[0][0].params[entries[0][1]]
        # on the parameters' device: the allreduce stages it (or hands it to a CUDA-aware MPI) as it is
        self.buffer = array_module(first).empty(sum(e[3] for e in entries), dtype=dtype)
        self.owners = {id(e[0]) for e in entries}
        self.pending = set(self.owners)
        self.request = None
        self.started = False


class GradientReducer:
    """Sums the gradients of `modules` (layers owning parameters, in forward order) over `comm` (a Communicator
    or an mpi4py communicator).

    overlap=False starts every allreduce in finish() (for measuring what the overlap buys).
    """

    def __init__(self, comm, modules, bucket_bytes=1 << 22, overlap=True):
        self.comm = comm = Communicator.of(comm)
        self.overlap = overlap
        self.buckets = []
        self.wait_seconds = 0.0
        entries, nbytes, dtype = [], 0, None
        for module in reversed(list(modules)):
            for key in reversed(list(module.params)):
                p = module.params[key]
                if entries and (nbytes + p.nbytes > bucket_bytes or p.dtype != dtype):
                    self.buckets.append(_Bucket(entries, dtype))
                    entries, nbytes = [], 0
                offset = sum(e[3] for e in entries)
                entries.append((module, key, offset, p.size, p.shape))
                nbytes += p.nbytes
                dtype = p.dtype
        if entries:
            self.buckets.append(_Bucket(entries, dtype))
        self._by_owner = {}
        for b in self.buckets:
            for o in b.owners:
                self._by_owner.setdefault(o, []).append(b)
        self.active = comm.size > 1

    def begin(self):
        """Call before a backward pass."""
        for b in self.buckets:
            b.pending = set(b.owners)
            b.request = None
            b.started = False

    def _start(self, b):
        for module, key, offset, size, _ in b.entries:
            b.buffer[offset:offset + size] = module.grads[key].reshape(-1)
        b.request = self.comm.iallreduce_(b.buffer)
        b.started = True

    def ready(self, module):
        """`module`'s gradients are final: start every bucket that is now complete."""
        if not self.active:
            return
        for b in self._by_owner.get(id(module), ()):
            b.pending.discard(id(module))
            if not b.pending and self.overlap and not b.started:
                self._start(b)
        # let MPI progress the allreduces already in flight
        self.comm.test_all([b.request for b in self.buckets if b.request is not None])

    def finish(self):
        """Complete every bucket and write the summed gradients back."""
        if not self.active:
            return
        t0 = time.perf_counter()
        for b in self.buckets:
            if not b.started:
                self._start(b)
        requests = [b.request for b in self.buckets if b.request is not None]
        self.comm.wait_all(requests)
        for b in self.buckets:
            for module, key, offset, size, shape in b.entries:
                module.grads[key][...] = b.buffer[offset:offset + size].reshape(shape)
        dt = time.perf_counter() - t0
        self.wait_seconds += dt
        self.comm.clock.add("gradient_allreduce", dt)
