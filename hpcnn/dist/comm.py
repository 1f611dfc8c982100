"""The one module that calls MPI: point-to-point, (i)allreduce, alltoallv, sub-communicators, abort on error.

Everything else in hpcnn talks to MPI through these functions, so that dtype mapping, GPU
buffers (synchronized, and staged through pinned host memory when MPI is not CUDA-aware: see
`device_buffers`) and the "one failing rank takes the job down" rule live in one place. Arrays
passed here must be C-contiguous; receive buffers are written in place. A non-blocking call's
staged buffer is copied back when `wait_all` completes its request.
"""
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from . import device_buffers as _device

__all__ = [
    "world", "SUM", "MAX", "MIN", "mpi_dtype", "isend", "irecv", "wait_all", "test_all",
    "allreduce_", "iallreduce_", "allreduce_scalar", "all_true", "alltoallv", "allgatherv", "allgather_object", "gather_object",
    "split", "barrier", "abort", "install_abort_on_error", "wall_time", "SECONDS", "counting",
]

# Wall seconds this process has spent communicating, by kind: "halo" (HaloExchange calls),
# "collective" (blocking allreduce and allgather inside layers: batch-norm statistics, pooling,
# flatten, losses), "shuffle" (moving a tensor between grids, packing included) and
# "gradient_allreduce" (the wait for the gradient buckets after backward). Only ever added to;
# `hpcnn bench scaling` and `hpcnn bench model` read differences around the calls they time.
SECONDS = {"halo": 0.0, "collective": 0.0, "shuffle": 0.0, "gradient_allreduce": 0.0}


@contextmanager
def counting(kind):
    """Add the wall time of the `with` body to SECONDS[kind]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[kind] += time.perf_counter() - t0

SUM, MAX, MIN = "sum", "max", "min"
_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


def world():
    """MPI.COMM_WORLD."""
    return MPI.COMM_WORLD


def wall_time():
    return MPI.Wtime()


def mpi_dtype(dtype):
    """The MPI datatype of a numpy dtype (float32/64, int32/64, bool as byte)."""
    dtype = np.dtype(dtype)
    try:
        return MPI._typedict[dtype.char]
    except KeyError:
        raise ValueError(f"no MPI datatype for numpy dtype {dtype}") from None


def _contiguous(array):
    if not array.flags.c_contiguous:
        raise ValueError(f"MPI buffers must be C-contiguous, received strides {array.strides}")
    return array


def _spec(array):
    return [array, mpi_dtype(array.dtype)]


# request -> what to do when it completes (GPU staging only; numpy arrays need nothing)
_on_completion = {}


def isend(comm, array, dest, tag=0):
    """Start sending `array` to rank `dest` of `comm`; returns a request."""
    buf = _device.prepare_send(_contiguous(array))
    request = comm.Isend(_spec(buf), dest=dest, tag=tag)
    if buf is not array:
        _on_completion[request.py2f()] = lambda: _device.finish_send(buf)
    return request


def irecv(comm, array, source, tag=0):
    """Start receiving into `array` from rank `source` of `comm`; returns a request."""
    buf = _device.prepare_recv(_contiguous(array))
    request = comm.Irecv(_spec(buf), source=source, tag=tag)
    if buf is not array:
        _on_completion[request.py2f()] = lambda: _device.finish_recv(array, buf)
    return request


def wait_all(requests):
    """Complete every request in the list (and empty it)."""
    if requests:
        handles = [r.py2f() for r in requests if r is not None]
        MPI.Request.Waitall([r for r in requests if r is not None])
        if _on_completion:
            for h in handles:
                done = _on_completion.pop(h, None)
                if done is not None:
                    done()
        requests.clear()


def test_all(requests):
    """Let MPI progress outstanding requests; True when all have completed."""
    requests = [r for r in requests if r is not None]
    if not requests:
        return True
    handles = [r.py2f() for r in requests]
    # Testall completes all requests or modifies none
    done = MPI.Request.Testall(requests)
    if done and _on_completion:
        for h in handles:
            finish = _on_completion.pop(h, None)
            if finish is not None:
                finish()
    return done


def allreduce_(comm, array, op="sum"):
    """Reduce `array` over every rank of `comm` in place (sum, max or min); returns `array`.

    array: any C-contiguous numeric array; every rank passes the same shape and dtype.
    """
    if comm.Get_size() > 1 and array.size:
        with counting("collective"):
            buf = _device.prepare_inout(_contiguous(array))
            comm.Allreduce(MPI.IN_PLACE, _spec(buf), op=_OPS[op])
            _device.finish_recv(array, buf)
    return array


def iallreduce_(comm, array, op="sum"):
    """Start an in-place allreduce of `array`; returns a request (None when there is nothing to do)."""
    if comm.Get_size() == 1 or array.size == 0:
        return None
    buf = _device.prepare_inout(_contiguous(array))
    request = comm.Iallreduce(MPI.IN_PLACE, _spec(buf), op=_OPS[op])
    if buf is not array:
        _on_completion[request.py2f()] = lambda: _device.finish_recv(array, buf)
    return request


def allreduce_scalar(comm, value, op="sum"):
    """A Python float or int reduced over `comm` (float64 for floats, int64 for ints)."""
    kind = np.int64 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else np.float64
    buf = np.array([value], dtype=kind)
    allreduce_(comm, buf, op)
    return buf[0].item()


def all_true(comm, flag):
    """True on every rank when `flag` is true on every rank (a collective, for collective asserts)."""
    return bool(allreduce_scalar(comm, int(bool(flag)), "min"))


def alltoallv(comm, send, send_counts, recv, recv_counts):
    """Personalized all-to-all of flat arrays; counts are element counts per rank, in rank order.

    send: 1-D array holding the blocks for rank 0, 1, ... back to back; recv likewise.
    """
    send_counts = np.asarray(send_counts, dtype=np.int64)
    recv_counts = np.asarray(recv_counts, dtype=np.int64)
    send_displs = np.concatenate(([0], np.cumsum(send_counts)[:-1]))
    recv_displs = np.concatenate(([0], np.cumsum(recv_counts)[:-1]))
    t = mpi_dtype(send.dtype)
    sbuf = _device.prepare_send(_contiguous(send))
    rbuf = _device.prepare_recv(_contiguous(recv))
    comm.Alltoallv([sbuf, (send_counts, send_displs), t], [rbuf, (recv_counts, recv_displs), t])
    if sbuf is not send:
        _device.finish_send(sbuf)
    _device.finish_recv(recv, rbuf)
    return recv


def gather_object(comm, obj, root=0):
    """Every rank's (small, picklable) object in rank order on `root`; None elsewhere."""
    return comm.gather(obj, root=root)


def allgather_object(comm, obj):
    """A list of every rank's (small, picklable) Python object, in rank order."""
    return comm.allgather(obj)


def split(comm, color, key):
    """A sub-communicator of the ranks passing the same `color`, ordered by `key`."""
    return comm.Split(color, key)


def barrier(comm):
    comm.Barrier()


def abort(message, code=1, comm=None):
    """Print `message` with this rank's number and abort the whole job."""
    comm = comm or MPI.COMM_WORLD
    sys.stderr.write(f"[hpcnn rank {MPI.COMM_WORLD.Get_rank()}] {message}\n")
    sys.stderr.flush()
    comm.Abort(code)


_installed = False


def install_abort_on_error():
    """Make an uncaught exception on any rank abort every rank (no hang), printing its traceback.

    Entry points call this once; it is what `python -m mpi4py` does. Single-rank runs keep the
    normal behaviour.
    """
    global _installed
    if _installed or MPI.COMM_WORLD.Get_size() == 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            text = "".join(traceback.format_exception(kind, value, tb))
            sys.stderr.write(f"[hpcnn rank {MPI.COMM_WORLD.Get_rank()}] uncaught exception, aborting the job:\n{text}")
            sys.stderr.flush()
        finally:
            if os.environ.get("HPCNN_NO_ABORT"):
                previous(kind, value, tb)
            else:
                MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
    _installed = True


def allgatherv(comm, send, recv, counts):
    """Gather flat blocks of every rank of `comm` into `recv` (rank order) on every rank.

    send: 1-D array of counts[rank] elements; recv: 1-D array of sum(counts) elements.
    """
    counts = np.asarray(counts, dtype=np.int64)
    displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
    t = mpi_dtype(send.dtype)
    with counting("collective"):
        sbuf = _device.prepare_send(_contiguous(send))
        rbuf = _device.prepare_recv(_contiguous(recv))
        comm.Allgatherv([sbuf, t], [rbuf, (counts, displs), t])
        if sbuf is not send:
            _device.finish_send(sbuf)
        _device.finish_recv(recv, rbuf)
    return recv
