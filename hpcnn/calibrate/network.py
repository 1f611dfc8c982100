"""Message timings for the calibration: ping-pong between two ranks, allreduce and all-to-all sweeps over sizes, and the
wait for the slowest rank at a statistics allreduce.

Buffers live on the calibrated device (`xp`), so on a GPU the times include the staging a run's messages
go through (`hpcnn.parallel.staging`)."""
import time

import numpy as np

__all__ = ["pingpong", "sweep", "sync_wait"]


def pingpong(comm, sizes, xp=np, reps=20):
    rank = comm.rank
    out = []
    for nbytes in sizes:
        buf = xp.zeros(max(nbytes, 1), np.uint8)
        comm.barrier()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            if rank == 0:
                comm.wait_all([comm.isend(buf, 1, 7)])
                comm.wait_all([comm.irecv(buf, 1, 8)])
            elif rank == 1:
                comm.wait_all([comm.irecv(buf, 0, 7)])
                comm.wait_all([comm.isend(buf, 0, 8)])
            times.append((time.perf_counter() - t0) / 2)
        out.append((nbytes, _undisturbed(times)))
    return out


def sweep(comm, sizes, collective, xp=np, reps=10):
    size = comm.size
    out = []
    for nbytes in sizes:
        if collective == "allreduce":
            buf = xp.ones(max(nbytes // 4, 1), np.float32)

            def run():
                comm.allreduce_(buf)
        else:
            per = max(nbytes // 4 // size, 1)
            send = xp.ones(per * size, np.float32)
            recv = xp.empty_like(send)
            counts = [per] * size

            def run():
                comm.alltoallv(send, counts, recv, counts)
        run()
        times = []
        for _ in range(reps):
            comm.barrier()
            t0 = time.perf_counter()
            run()
            times.append(comm.allreduce_scalar(time.perf_counter() - t0, "max"))
        out.append((max(nbytes, 4), _undisturbed(times)))
    return out


def _undisturbed(times):
    """A message's time from repeated wall-clock timings: their lower quartile. A message needs every rank it
    involves on a core at once; on a machine shared with other processes some repetitions wait for a
    descheduled rank (whole time slices, only ever longer), and the kernels are timed as dedicated cores run
    them (CPU time), so the messages are too."""
    return float(np.percentile(times, 25))


def sync_wait(comm, calls, xp=np, reps=7, clock=time.perf_counter):
    """The profile's "sync_wait": the fraction of a layer's own compute that a rank waits, on average, in the small
    allreduce that ends it (batch-norm's statistics) for the slowest rank of the group.

    calls: [callable] of kernel calls (each run on every rank at once). Per call and repetition, every rank runs
    the kernel, then an allreduce of 2C+1 float64-sized values; the time in that allreduce beyond the allreduce
    alone (the same one after a barrier) is the wait; `clock` is the kernels' (`kernels.kernel_clock`: MPI waits
    by polling, so a waiting rank's CPU time runs as its wall time does). Returns the median over the ranks'
    calls of wait / kernel time (the median: a partner descheduled by another process of a shared machine makes
    rare waits of whole time slices, which are not the layer's), 0 on one rank."""
    if comm.size == 1:
        return 0.0
    buf = xp.zeros(64, np.float64)
    ratios = []
    for run in calls:
        run()
        for _ in range(reps):
            comm.barrier()
            t0 = clock()
            comm.allreduce_(buf)
            alone = clock() - t0
            comm.barrier()
            t0 = clock()
            run()
            t1 = clock()
            comm.allreduce_(buf)
            t2 = clock()
            ratios.append(max(t2 - t1 - alone, 0.0) / max(t1 - t0, 1e-9))
    every = [r for mine in comm.allgather_object(ratios) for r in mine]
    return float(np.median(every))
