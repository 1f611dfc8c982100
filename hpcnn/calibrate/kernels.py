"""Kernel timings for the calibration: sampled kernel calls of every operation, timed alone and on every rank at once."""
import time

import numpy as np

from .. import kernels
from perfmodel.machine import OPERATIONS, operation_features

from .shapes import sample_shapes

__all__ = ["kernel_call", "kernel_clock", "time_call", "kernel_phase"]


def kernel_call(op, shape, rng, device):
    """Inputs for one call (drawn on the host, uploaded to `device`) and the callable that runs it."""
    f32 = np.float32
    put, xp = device.put, device.xp
    if op.startswith("conv_"):
        n, c, k = shape["n"], shape["c"], shape["k"]
        x = put(rng.standard_normal((n, c) + shape["in_spatial"], dtype=f32))
        w = put(rng.standard_normal((k, c) + shape["kernel"], dtype=f32))
        dy = put(rng.standard_normal((n, k) + shape["out_spatial"], dtype=f32))
        geo = dict(stride=shape["stride"], padding=shape["padding"], dilation=shape["dilation"])
        if op == "conv_forward":
            return lambda: kernels.conv_forward(x, w, None, **geo)
        if op == "conv_backward_data":
            return lambda: kernels.conv_backward_data(dy, w, shape["in_spatial"], **geo)
        return lambda: kernels.conv_backward_filter(x, dy, shape["kernel"], **geo)
    if op.startswith("pool_"):
        x = put(rng.standard_normal((shape["n"], shape["c"]) + shape["in_spatial"], dtype=f32))
        r, s, p = shape["kernel"], shape["stride"], shape["padding"]
        if shape["kind"] == "max":
            y, arg = kernels.maxpool_forward(x, r, s, p)
            if op == "pool_forward":
                return lambda: kernels.maxpool_forward(x, r, s, p)
            dy = xp.ones_like(y)
            return lambda: kernels.maxpool_backward(dy, arg, shape["in_spatial"])
        if op == "pool_forward":
            return lambda: kernels.avgpool_forward(x, r, s, p)
        dy = xp.ones_like(kernels.avgpool_forward(x, r, s, p))
        return lambda: kernels.avgpool_backward(dy, shape["in_spatial"], r, s, p)
    if op.startswith("batchnorm_"):
        x = put(rng.standard_normal((shape["n"], shape["c"]) + tuple(shape["in_spatial"]), dtype=f32))
        c = shape["c"]
        mean = xp.zeros(c, f32)
        inv = xp.ones(c, f32)
        gamma = xp.ones(c, f32)
        beta = xp.zeros(c, f32)
        count = x.size // c
        if op == "batchnorm_forward":
            def run():
                s = kernels.channel_sum(x)
                kernels.channel_centered_sumsq(x, (s / count).astype(f32))
                return kernels.batchnorm_apply(x, mean, inv, gamma, beta)
            return run
        dy = xp.ones_like(x)

        def run():
            a, b = kernels.batchnorm_backward_reduce(dy, x, mean, inv)
            return kernels.batchnorm_backward_apply(dy, x, mean, inv, gamma, a, b, count)
        return run
    if op == "elementwise":
        x = put(rng.standard_normal((shape["n"], shape["c"]) + tuple(shape["in_spatial"]), dtype=f32))
        return lambda: kernels.relu_forward(x)
    if op == "copy":
        # the whole block, or a halo slab of it packed into its own buffer (hpcnn.parallel.halo)
        src = xp.ones(shape["shape"], f32)
        index = [slice(None)] * src.ndim
        if shape["axis"] is not None:
            index[2 + shape["axis"]] = slice(0, shape["rows"])
        index = tuple(index)
        dst = xp.empty_like(src[index])

        def run():
            dst[...] = src[index]
        return run
    if op == "gemm":
        a = put(rng.standard_normal((shape["m"], shape["gemm_k"]), dtype=f32))
        b = put(rng.standard_normal((shape["gemm_n"], shape["gemm_k"]), dtype=f32))
        return lambda: a @ b.T
    raise ValueError(op)


def kernel_clock(device):
    """The clock kernel calls are timed with on `device`: on the CPU (and the emulated GPU), when the rank
    computes on one thread, the CPU time of its process (`time.process_time`), which is what a dedicated core
    takes, whatever other processes of a shared machine take from it; with more threads per rank (the counts
    `hpcnn.threads.apply_threads` set, read back from numba) that time sums every thread and would read as
    several times a call's duration, so the wall clock; on a GPU the wall clock (its kernels run
    asynchronously, the host thread waits)."""
    if device.name == "gpu":
        return time.perf_counter
    import numba
    return time.process_time if numba.get_num_threads() == 1 else time.perf_counter


def time_call(run, min_seconds=0.02, max_reps=20, sync=lambda: None, clock=time.perf_counter):
    """Median seconds of one call on `clock`, repeated until `min_seconds` of wall time have passed (at least 3
    times); `sync` waits for the device after each call (a GPU's kernels run asynchronously)."""
    run()                                  # warm: numba compilation or NVRTC, first-touch pages
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < max_reps):
        t0 = clock()
        run()
        sync()
        times.append(clock() - t0)
    return float(np.median(times))


def _concurrency(comm, run, sync, seconds, reps=3):
    """Wall seconds of `run` on every rank at once over its wall seconds on rank 0 alone (on rank 0; others 0).

    While rank 0 runs alone the others sleep instead of waiting in a barrier: MPI waits by polling, which keeps
    their cores busy, and on a virtual machine whose cores share physical ones (the hypervisor's steal time)
    a polling neighbour slows a kernel as much as a computing one. Wall clock, not CPU time: a core taken by
    the hypervisor or a neighbour shows in the wall time only. `seconds`: the call's time measured before."""
    def median_wall():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    comm.barrier()
    if comm.rank == 0:
        alone = median_wall()
    else:
        time.sleep(4 * reps * seconds + 0.02)      # longer than rank 0's calls, even slowed down
        alone = 0.0
    comm.barrier()
    busy = comm.allreduce_scalar(median_wall(), "max")
    return busy / alone if comm.rank == 0 and alone > 0 else 0.0


def kernel_phase(comm, budget, rng, bar, device):
    """{op: [(features, seconds)]} over sampled shapes on `device` (rank 0 alone), and the concurrency slowdown:
    {"all": the median ratio over every sampled kernel, "by_op": {op: its kernels' median ratio}}."""
    rank, size = comm.rank, comm.size
    # pooling's per-row term needs more samples than its few 3-D draws at the base weight gave
    weights = {"conv_forward": 1.6, "conv_backward_data": 1.6, "conv_backward_filter": 1.6, "pool_forward": 0.9,
               "pool_backward": 0.9}
    total_w = sum(weights.get(op, 0.6) for op in OPERATIONS)
    tables, ratios = {}, []
    clock = kernel_clock(device)
    for op in OPERATIONS:
        op_budget = budget * weights.get(op, 0.6) / total_w
        shapes = sample_shapes(op, rng, 400)
        rows = []
        t_op = time.perf_counter()
        for i, shape in enumerate(shapes):
            # rank 0 decides when the op's budget is spent, so that every rank runs the same shapes
            # (at least 4 samples, unless a few large calls have taken three times the op's budget already)
            spent = time.perf_counter() - t_op
            go = comm.allreduce_scalar(int(spent < op_budget or (len(rows) < 4 and spent < 3 * op_budget)), "min")
            if not go:
                break
            run = kernel_call(op, shape, rng, device)
            comm.barrier()
            alone = time_call(run, sync=device.synchronize, clock=clock) if rank == 0 else 0.0
            comm.barrier()
            alone = comm.allreduce_scalar(alone, "max")
            if size > 1 and i % 4 == 0:
                ratio = _concurrency(comm, run, device.synchronize, alone)
                if rank == 0 and ratio > 0:
                    ratios.append((op, ratio))
            keys = {k: shape[k] for k in ("n", "c", "k", "in_spatial", "kernel", "out_spatial", "m", "gemm_k",
                                          "gemm_n", "nbytes", "runs") if k in shape}
            feats = operation_features(op, **keys)
            rows.append((feats, alone))
        if bar is not None:
            bar.update(min(round(time.perf_counter() - t_op, 1), bar.total * 0.95 - bar.n))
        tables[op] = rows
    # per operation: compute-bound convolutions and GEMMs barely slow down when every core of a node is busy,
    # copies and pooling (memory-bound) do; one median over all would price a convolution stack as a copy
    by_op = {op: float(np.median([r for o, r in ratios if o == op])) for op in dict(ratios)}
    slowdown = {"all": float(np.median([r for _, r in ratios])) if ratios else 1.0, "by_op": by_op}
    return tables, slowdown
