"""Gradient reduction by weight slices, in buckets, started as soon as a bucket's gradients are final.

What is communicated, and why. Each parameter's gradient is declared by the distributed layer that
computes it as a `GradientSlice`: the piece of the parameter this rank computes, the `group` of ranks
that compute the same piece (on other samples or spatial blocks), and, where the parameter is split,
the `gather` communicator whose ranks' pieces tile it. A layer without a split computes the whole
parameter on every rank (group: every rank); Linear, on rows replicated over every axis but the
samples, computes the same whole gradient on every replica of a sample block (group: the sample
line). A convolution on a C x F split computes W[f-range, c-range] (and the bias of its f-range on
c = 0): its group is the ranks with the same (c, f) coordinates, its gather the C x F ranks of its
samples and spatial block (`Distribution.slice_comm`, `.cf_comm`); batch-norm
on a channel split computes its c-range on f = 0 likewise. So

1. every rank sums only its own piece, over only its group: a non-blocking allreduce of one flat
   buffer per bucket, started when the bucket's last layer has finished its backward (`ready`), so
   that it overlaps the rest of backward; a channel-split layer's allreduce carries 1 / (Pc x Pf) of
   its weights over P / (Pc x Pf) ranks instead of all of them over P;
2. then, per split bucket, one allgather over the gather communicator rebuilds the whole summed
   gradient on every rank (`finish`), so the optimizer, checkpoints and export see full gradients
   and every rank updates the full parameters identically. The sum and the gather work in one
   buffer of the bucket's whole parameters (the pieces are summed at this rank's offset and
   gathered in place), so a rank holds no more than an unsplit bucket's copy.

Buckets hold consecutive parameters (backward order, last layer first) with the same dtype, group
and gather communicator, up to about `bucket_bytes` of whole parameters: the same boundaries on every
rank, so the pieces of one bucket travel in one message on each rank of a group and of a gather.
`reduce_bytes` and `gather_bytes` count what one backward sends to the allreduces and receives from
the allgathers on this rank.
"""
import math
import time
from dataclasses import dataclass

from ..backend import array_module
from .mpi import Communicator

__all__ = ["GradientSlice", "GradientReducer"]


def _shape(index, shape):
    """The shape of `array[index]` for an array of `shape` (index: a tuple of slices, trailing axes whole)."""
    out = [len(range(*s.indices(n))) for s, n in zip(index, shape)]
    return tuple(out) + tuple(shape[len(index):])


@dataclass(frozen=True)
class GradientSlice:
    """Which piece of one parameter's gradient this rank computes, and who shares it.

    pieces: the index (a tuple of slices) of every gather rank's piece, in `gather`'s rank order; together
    they tile the parameter (an empty piece where a rank computes none). group: the ranks computing this
    rank's piece, over which it is summed. gather: the ranks whose pieces make the whole parameter (None:
    this rank's piece is the whole parameter, `pieces` has one entry).
    """
    pieces: tuple
    group: Communicator
    gather: Communicator = None

    @classmethod
    def whole(cls, ndim, group):
        """The whole parameter (of `ndim` axes), summed over `group`."""
        return cls(((slice(None),) * ndim,), group, None)

    @classmethod
    def channel_filter(cls, d, piece):
        """A layer's slices on the C x F split of Distribution `d`: piece(c, f) is the index of the piece that the
        ranks with channel coordinate c and filter coordinate f compute; summed over `d.slice_comm`, gathered
        over `d.cf_comm` (whose rank c * Pf + f is (c, f))."""
        pieces = tuple(piece(*divmod(r, d.filters)) for r in range(d.channels * d.filters))
        return cls(pieces, d.slice_comm, d.cf_comm)

    @property
    def index(self):
        """This rank's piece."""
        return self.pieces[0 if self.gather is None else self.gather.rank]


class _Bucket:
    __slots__ = ("entries", "group", "gather", "buffer", "received", "counts", "owners", "pending", "request",
                 "started")

    def __init__(self, entries, dtype):
        # entries: [(module, key, GradientSlice, offset of this rank's piece in the buffer, its size)], all with the
        # same group and gather communicators
        self.entries = entries
        self.group, self.gather = entries[0][2].group, entries[0][2].gather
        gather = self.gather
        first = entries[0][0].params[entries[0][1]]
        xp = array_module(first)
        # one buffer of the bucket's whole parameters, on their device (the collectives stage it, or hand it to a
        # CUDA-aware MPI, as it is); a split bucket sums this rank's pieces at its offset, then gathers in place
        mine = sum(e[4] for e in entries)
        self.counts = None
        if gather is None:
            self.received = self.buffer = xp.empty(mine, dtype=dtype)
        else:
            self.counts = [sum(math.prod(_shape(s.pieces[r], m.params[k].shape)) for m, k, s, _, _ in entries)
                           for r in range(gather.size)]
            self.received = xp.empty(sum(self.counts), dtype=dtype)
            start = sum(self.counts[:gather.rank])
            self.buffer = self.received[start:start + mine]
        self.owners = {id(e[0]) for e in entries}
        self.pending = set(self.owners)
        self.request = None
        self.started = False


class GradientReducer:
    """Sums the gradients of `modules` (layers owning parameters, in forward order) over the ranks that share
    each piece (see the module docstring); comm: a Communicator or an mpi4py communicator.

    slices(module) -> {parameter name: GradientSlice} for the parameters split over ranks (None or missing
    names: the whole parameter over `comm`). overlap=False starts every allreduce in finish() (for
    measuring what the overlap buys).
    """

    def __init__(self, comm, modules, bucket_bytes=1 << 22, overlap=True, slices=None):
        self.comm = comm = Communicator.of(comm)
        self.overlap = overlap
        self.buckets = []
        self.wait_seconds = 0.0
        entries, nbytes, key = [], 0, None
        for module in reversed(list(modules)):
            declared = (slices(module) if slices is not None else None) or {}
            for name in reversed(list(module.params)):
                p = module.params[name]
                s = declared.get(name) or GradientSlice.whole(p.ndim, comm)
                if sum(math.prod(_shape(i, p.shape)) for i in s.pieces) != p.size:
                    raise ValueError(f"GradientReducer: the pieces {s.pieces} of parameter {name!r} {p.shape} do "
                                     f"not tile it")
                # whole-parameter sizes and communicator roles: the same boundaries on every rank
                k = (p.dtype, id(s.group), None if s.gather is None else id(s.gather))
                if entries and (nbytes + p.nbytes > bucket_bytes or k != key):
                    self.buckets.append(_Bucket(entries, key[0]))
                    entries, nbytes = [], 0
                size = math.prod(_shape(s.index, p.shape))
                entries.append((module, name, s, sum(e[4] for e in entries), size))
                nbytes += p.nbytes
                key = k
        if entries:
            self.buckets.append(_Bucket(entries, key[0]))
        self._by_owner = {}
        for b in self.buckets:
            for o in b.owners:
                self._by_owner.setdefault(o, []).append(b)
        self.active = comm.size > 1
        self.reduce_bytes = sum(b.buffer.nbytes for b in self.buckets if b.group.size > 1)
        self.gather_bytes = sum(b.received.nbytes - b.buffer.nbytes for b in self.buckets
                                if b.gather is not None and b.gather.size > 1)

    def begin(self):
        """Call before a backward pass."""
        for b in self.buckets:
            b.pending = set(b.owners)
            b.request = None
            b.started = False

    def _start(self, b):
        for module, key, s, offset, size in b.entries:
            if size:
                b.buffer[offset:offset + size] = module.grads[key][s.index].reshape(-1)
        b.request = b.group.iallreduce_(b.buffer)
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
        """Complete every bucket's allreduce, gather the split ones, and write the summed gradients back."""
        if not self.active:
            return
        t0 = time.perf_counter()
        for b in self.buckets:
            if not b.started:
                self._start(b)
        gathers = []
        for b in self.buckets:
            # each bucket's allgather starts as soon as its own sum is complete, while later sums travel
            self.comm.wait_all([b.request])
            if b.gather is not None:
                gathers.append(b.gather.iallgatherv_(b.received, b.counts))
        self.comm.wait_all(gathers)
        for b in self.buckets:
            if b.gather is None:
                for module, key, _, offset, size in b.entries:
                    module.grads[key][...] = b.buffer[offset:offset + size].reshape(module.grads[key].shape)
                continue
            offset = 0
            for r in range(b.gather.size):
                for module, key, s, _, _ in b.entries:
                    grad = module.grads[key]
                    shape = _shape(s.pieces[r], grad.shape)
                    n = math.prod(shape)
                    if n:
                        grad[s.pieces[r]] = b.received[offset:offset + n].reshape(shape)
                    offset += n
        dt = time.perf_counter() - t0
        self.wait_seconds += dt
        self.comm.clock.add("gradient_allreduce", dt)
