"""The communicator: every MPI call hpcnn makes, the device staging of its buffers, and the communication clock.

Nothing else in hpcnn calls MPI. A `Communicator` wraps an mpi4py communicator (or stands for one
process without MPI: `Communicator.local()`, whose collectives return their input) and owns

- the calls: point-to-point (`exchange` for a batch of messages, `isend`, `irecv`, `wait_all`), collectives on arrays (`allreduce_`,
  `iallreduce_`, `alltoallv`, `allgatherv`, `iallgatherv_`) and on small Python objects, sub-communicators, abort;
- dtype mapping through `MPI.Datatype.fromcode` (the predefined datatype; `dtlib.from_numpy_dtype`
  returns a duplicate, which reductions refuse, and leaks one per call);
- the staging of device buffers (`hpcnn.parallel.staging`: one stream synchronisation per batch of
  messages, and copies through pinned host memory when MPI is not CUDA-aware or the array is on
  the emulated GPU); a non-blocking call's staged buffer is copied back when `wait_all` completes
  its request;
- the clock (`Clock`): wall seconds spent communicating by kind, shared by a communicator and
  every sub-communicator split from it, so one clock per job shows where the time went.

Arrays passed here must be C-contiguous; receive buffers are written in place. mpi4py is
imported only when a communicator over MPI is made, so one process without a launcher never
initializes MPI.

    world = Communicator.world()
    world.allreduce_(grads)                 # in place, sum over every rank
    with world.clock.counting("halo"): ...
"""
import sys
import time
from contextlib import contextmanager

import numpy as np

from . import staging as _staging

__all__ = ["KINDS", "SUM", "MAX", "MIN", "Clock", "Request", "Communicator", "mpi_dtype"]

# The kinds of communication the clock tells apart: "halo" (HaloExchange calls), "collective"
# (blocking allreduce and allgather inside layers: batch-norm statistics, pooling, flatten,
# losses), "shuffle" (moving a tensor between grids, packing included) and "gradient_allreduce"
# (the wait for the gradient buckets after backward).
KINDS = ("halo", "collective", "shuffle", "gradient_allreduce")
SUM, MAX, MIN = "sum", "max", "min"

_YIELD_S = 5e-5   # seconds a yielding wait sleeps between tests of its request


def _mpi():
    """mpi4py's MPI, initialised at MPI_THREAD_SERIALIZED when hpcnn is the first to load it.

    hpcnn calls MPI from one thread at a time (CHAOS workers never communicate), so it does not ask for
    MPI_THREAD_MULTIPLE: that level costs a lock per call and, with MPICH 5's UCX netmod, sets up the
    per-thread virtual channels whose start-up exchange has failed under srun. A launcher that loaded MPI
    first (`python -m mpi4py`) keeps its own level. HPCNN_MPI_THREAD_LEVEL overrides (multiple, ...).
    """
    import sys
    if "mpi4py.MPI" not in sys.modules:
        import os
        import mpi4py
        mpi4py.rc.thread_level = os.environ.get("HPCNN_MPI_THREAD_LEVEL", "serialized")
    from mpi4py import MPI
    return MPI


def mpi_dtype(dtype):
    """The predefined MPI datatype of a numpy dtype (float32/64, int32/64, uint8, bool, ...)."""
    dtype = np.dtype(dtype)
    try:
        return _mpi().Datatype.fromcode(dtype.char)
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"no MPI datatype for numpy dtype {dtype}") from None


class Clock:
    """Wall seconds spent communicating, by kind (`KINDS`); only ever added to.

    Benchmarks read differences of `snapshot()`s around the calls they time.
    """

    def __init__(self):
        self.seconds = dict.fromkeys(KINDS, 0.0)

    def add(self, kind, seconds):
        self.seconds[kind] += seconds

    @contextmanager
    def counting(self, kind):
        """Add the wall time of the `with` body to `kind`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - t0

    def snapshot(self):
        return dict(self.seconds)

    @staticmethod
    def difference(before, after):
        """{kind: seconds} spent between two snapshots."""
        return {k: after[k] - before[k] for k in KINDS}


class Request:
    """A non-blocking call in flight: the MPI request and what to do when it completes (staging only)."""

    __slots__ = ("mpi", "done")

    def __init__(self, mpi, done=None):
        self.mpi = mpi
        self.done = done

    def _complete(self):
        if self.done is not None:
            done, self.done = self.done, None
            done()


def _contiguous(array):
    if not array.flags.c_contiguous:
        raise ValueError(f"MPI buffers must be C-contiguous, received strides {array.strides}")
    return array


def _spec(array):
    return [array, mpi_dtype(array.dtype)]


_OPS = ("sum", "max", "min")


class Communicator:
    """The ranks of one MPI communicator (or of one process without MPI) and every call hpcnn makes on them.

    Attributes: rank, size, mpi (the mpi4py communicator, None without MPI), clock.
    """

    _wrapped = {}   # mpi4py communicator handle -> its Communicator, so that one communicator has one clock
    # Whether waits for messages and collectives sleep between polls (`yield_when_idle`); class-wide.
    yielding = False

    def __init__(self, comm=None, clock=None):
        self.mpi = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.clock = clock if clock is not None else Clock()

    # --- making communicators ----------------------------------------------------------------------
    @classmethod
    def world(cls):
        """Every rank of the job (MPI.COMM_WORLD)."""
        return cls.of(_mpi().COMM_WORLD)

    @classmethod
    def local(cls):
        """This process alone, without MPI: collectives return their input, there are no peers."""
        return cls(None)

    @classmethod
    def of(cls, comm):
        """`comm` as a Communicator: a Communicator as it is, an mpi4py communicator wrapped (once per handle)."""
        if isinstance(comm, Communicator):
            return comm
        if comm is None:
            raise ValueError("Communicator.of: expected a communicator, received None")
        key = comm.py2f()
        found = cls._wrapped.get(key)
        if found is None:
            found = cls._wrapped[key] = cls(comm)
        return found

    def split(self, color, key):
        """A sub-communicator of the ranks passing the same `color`, ordered by `key` (a collective);
        it shares this communicator's clock."""
        if self.mpi is None:
            return Communicator(None, self.clock)
        return Communicator(self.mpi.Split(color, key), self.clock)

    def _node(self):
        """The ranks of this communicator on this rank's node (a shared-memory split, made once)."""
        if getattr(self, "_node_comm", None) is None:
            self._node_comm = self.mpi.Split_type(_mpi().COMM_TYPE_SHARED, self.rank)
        return self._node_comm

    def node_size(self):
        """How many ranks of this communicator share this rank's node."""
        return 1 if self.mpi is None else self._node().Get_size()

    def node_first(self, fn):
        """Call fn() on the first rank of each node, then (after it returned) on the node's other ranks:
        for work that fills a per-node cache (numba's compiled kernels) that the others then only read.
        A collective over the node; fn's exceptions propagate (the other ranks then fail at their own call).
        The others wait asleep (`idle_barrier`): polling, with more ranks than cores, takes the first one's core."""
        if self.mpi is None or self.node_size() == 1:
            return fn()
        node = Communicator(self._node())
        if node.rank == 0:
            try:
                result = fn()
            finally:
                node.idle_barrier()
            return result
        node.idle_barrier(poll=0.02)
        return fn()

    @property
    def handle(self):
        """An integer naming the underlying communicator (None without MPI)."""
        return None if self.mpi is None else self.mpi.py2f()

    def __eq__(self, other):
        return isinstance(other, Communicator) and self.handle == other.handle and \
            (self.mpi is not None or self is other)

    def __hash__(self):
        return hash(self.handle)

    def __repr__(self):
        return f"Communicator(rank {self.rank} of {self.size}{'' if self.mpi is not None else ', no MPI'})"

    # --- point to point ------------------------------------------------------------------------------
    def _peers(self, what):
        if self.mpi is None:
            raise RuntimeError(f"{what}: one process without MPI has no peers")

    def exchange(self, sends, recvs):
        """Start a batch of messages: sends [(array, dest, tag)], recvs [(array, source, tag)]; returns the
        Requests (receives first). Device buffers are staged with one synchronisation for the whole batch."""
        self._peers("exchange")
        requests = []
        arrays = [_contiguous(a) for a, _, _ in recvs]
        for a, buf, (_, source, tag) in zip(arrays, _staging.prepare_recvs(arrays), recvs):
            mpi = self.mpi.Irecv(_spec(buf), source=source, tag=tag)
            requests.append(Request(mpi, None if buf is a else (lambda a=a, buf=buf: _staging.finish_recv(a, buf))))
        arrays = [_contiguous(a) for a, _, _ in sends]
        for a, buf, (_, dest, tag) in zip(arrays, _staging.prepare_sends(arrays), sends):
            mpi = self.mpi.Isend(_spec(buf), dest=dest, tag=tag)
            requests.append(Request(mpi, None if buf is a else (lambda buf=buf: _staging.finish_send(buf))))
        return requests

    def isend(self, array, dest, tag=0):
        """Start sending `array` to rank `dest`; returns a Request."""
        return self.exchange([(array, dest, tag)], [])[0]

    def irecv(self, array, source, tag=0):
        """Start receiving into `array` from rank `source`; returns a Request."""
        return self.exchange([], [(array, source, tag)])[0]

    @classmethod
    def yield_when_idle(cls, flag):
        """With more ranks than cores a rank polling in MPI keeps a core from the rank it waits for (2 cores: a
        small U-Net 11x slower at 4 ranks). With `flag`, every Communicator's waits (messages, collectives on
        arrays, barriers) test and sleep 50 us between tests; the trainer sets it on an oversubscribed node."""
        cls.yielding = bool(flag)

    @staticmethod
    def _finish(requests):
        """Wait for mpi4py requests: MPI's own wait, or test-and-sleep when yielding."""
        while Communicator.yielding and not _mpi().Request.Testall(requests):
            time.sleep(_YIELD_S)
        _mpi().Request.Waitall(requests)

    def _collective(self, name, *args, **kwargs):
        """The blocking MPI collective `name`, or, when yielding, its non-blocking form and a sleeping wait."""
        if Communicator.yielding:
            self._finish([getattr(self.mpi, "I" + name.lower())(*args, **kwargs)])
        else:
            getattr(self.mpi, name)(*args, **kwargs)

    @staticmethod
    def wait_all(requests):
        """Complete every Request in the list (None entries are skipped) and empty the list."""
        live = [r for r in requests if r is not None]
        if live:
            Communicator._finish([r.mpi for r in live])
            for r in live:
                r._complete()
        requests.clear()

    @staticmethod
    def test_all(requests):
        """Let MPI progress outstanding requests; True when all have completed (their staging finished)."""
        live = [r for r in requests if r is not None]
        if not live:
            return True
        # Testall completes all requests or modifies none
        done = _mpi().Request.Testall([r.mpi for r in live])
        if done:
            for r in live:
                r._complete()
        return done

    # --- collectives on arrays -----------------------------------------------------------------------
    def _op(self, op):
        if op not in _OPS:
            raise ValueError(f"unknown reduction {op!r}: expected one of {', '.join(_OPS)}")
        MPI = _mpi()
        return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]

    def allreduce_(self, array, op="sum"):
        """Reduce `array` over every rank in place (sum, max or min); returns `array`.

        array: any C-contiguous numeric array; every rank passes the same shape and dtype.
        """
        if self.size > 1 and array.size:
            with self.clock.counting("collective"):
                buf = _staging.prepare_inout(_contiguous(array))
                self._collective("Allreduce", _mpi().IN_PLACE, _spec(buf), op=self._op(op))
                _staging.finish_recv(array, buf)
        return array

    def iallreduce_(self, array, op="sum"):
        """Start an in-place allreduce of `array`; returns a Request (None when there is nothing to do)."""
        if self.size == 1 or array.size == 0:
            return None
        buf = _staging.prepare_inout(_contiguous(array))
        request = self.mpi.Iallreduce(_mpi().IN_PLACE, _spec(buf), op=self._op(op))
        return Request(request, None if buf is array else (lambda: _staging.finish_recv(array, buf)))

    def allreduce_scalar(self, value, op="sum"):
        """A Python float or int reduced over every rank (float64 for floats, int64 for ints)."""
        kind = np.int64 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else np.float64
        buf = np.array([value], dtype=kind)
        self.allreduce_(buf, op)
        return buf[0].item()

    def all_true(self, flag):
        """True on every rank when `flag` is true on every rank (a collective, for collective asserts)."""
        return bool(self.allreduce_scalar(int(bool(flag)), "min"))

    def alltoallv(self, send, send_counts, recv, recv_counts):
        """Personalized all-to-all of flat arrays; counts are element counts per rank, in rank order.

        send: 1-D array holding the blocks for rank 0, 1, ... back to back; recv likewise.
        """
        if self.mpi is None:
            recv[...] = send
            return recv
        send_counts = np.asarray(send_counts, dtype=np.int64)
        recv_counts = np.asarray(recv_counts, dtype=np.int64)
        send_displs = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
        recv_displs = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
        t = mpi_dtype(send.dtype)
        sbuf, = _staging.prepare_sends([_contiguous(send)])
        rbuf, = _staging.prepare_recvs([_contiguous(recv)])
        self._collective("Alltoallv", [sbuf, (send_counts, send_displs), t], [rbuf, (recv_counts, recv_displs), t])
        if sbuf is not send:
            _staging.finish_send(sbuf)
        _staging.finish_recv(recv, rbuf)
        return recv

    def allgatherv(self, send, recv, counts):
        """Gather flat blocks of every rank into `recv` (rank order) on every rank.

        send: 1-D array of counts[rank] elements; recv: 1-D array of sum(counts) elements.
        """
        if self.mpi is None:
            recv[...] = send
            return recv
        counts = np.asarray(counts, dtype=np.int64)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        t = mpi_dtype(send.dtype)
        with self.clock.counting("collective"):
            sbuf, = _staging.prepare_sends([_contiguous(send)])
            rbuf, = _staging.prepare_recvs([_contiguous(recv)])
            self._collective("Allgatherv", [sbuf, t], [rbuf, (counts, displs), t])
            if sbuf is not send:
                _staging.finish_send(sbuf)
            _staging.finish_recv(recv, rbuf)
        return recv

    def iallgatherv_(self, recv, counts):
        """Start an in-place allgather: this rank's block is already in `recv` at its offset (rank order, blocks of
        `counts` elements); on completion `recv` holds every rank's. Returns a Request (None: nothing to do)."""
        if self.size == 1 or sum(counts) == 0:
            return None
        counts = np.asarray(counts, dtype=np.int64)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        buf = _staging.prepare_inout(_contiguous(recv))
        request = self.mpi.Iallgatherv(_mpi().IN_PLACE, [buf, (counts, displs), mpi_dtype(recv.dtype)])
        return Request(request, None if buf is recv else (lambda: _staging.finish_recv(recv, buf)))

    # --- collectives on small Python objects ---------------------------------------------------------
    def allgather_object(self, obj):
        """A list of every rank's (small, picklable) object, in rank order."""
        return [obj] if self.mpi is None else self.mpi.allgather(obj)

    def gather_object(self, obj, root=0):
        """Every rank's (small, picklable) object in rank order on `root`; None elsewhere."""
        if self.mpi is None:
            return [obj]
        return self.mpi.gather(obj, root=root)

    def bcast_object(self, obj, root=0):
        """`root`'s (small, picklable) object on every rank."""
        return obj if self.mpi is None else self.mpi.bcast(obj, root=root)

    def barrier(self):
        if self.mpi is not None and Communicator.yielding:
            self.idle_barrier(_YIELD_S)
        elif self.mpi is not None:
            self.mpi.Barrier()

    def idle_barrier(self, poll=0.005):
        """A barrier whose waiting ranks sleep between polls instead of spinning: MPI waits by polling, which
        keeps a core busy, and a rank timing something alone on a shared node needs the others' cores idle."""
        request = None if self.mpi is None else self.mpi.Ibarrier()
        while request is not None and not request.Test():
            time.sleep(poll)

    # --- time and failure ----------------------------------------------------------------------------
    def wall_time(self):
        return time.perf_counter() if self.mpi is None else _mpi().Wtime()

    def abort(self, message, code=1):
        """Print `message` with this rank's number and abort the whole job (one process: raise RuntimeError)."""
        if self.mpi is None or self.size == 1:
            raise RuntimeError(message)
        sys.stderr.write(f"[hpcnn rank {_mpi().COMM_WORLD.Get_rank()}] {message}\n")
        sys.stderr.flush()
        self.mpi.Abort(code)
