"""Message timings for the calibration: ping-pong between two ranks, allreduce and all-to-all sweeps over sizes.

Buffers live on the calibrated device (`xp`), so on a GPU the times include the staging a run's messages
go through (`hpcnn.parallel.staging`)."""
import time

import numpy as np

__all__ = ["pingpong", "sweep"]


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
        out.append((nbytes, float(np.median(times))))
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
        out.append((max(nbytes, 4), float(np.median(times))))
    return out
