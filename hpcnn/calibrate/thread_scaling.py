"""Thread scaling for the calibration: how much faster each kernel kind runs on every core of a node than on one.

A profile's kernel models hold for the threads per rank it was calibrated with (one, as `hpcnn calibrate` runs a
rank per core). To price a run with another count (one rank of a 2-core node on 2 threads, or a job that sets
`[training] threads`), rank 0 times sampled calls of each operation on 1 thread and on all `threads` of the node
while the other ranks sleep (polling in a barrier would take their cores), and the profile keeps each operation's
speedup: the summed 1-thread time over the summed `threads`-thread time of its calls, so that the calls that
take the time weigh most. `perfmodel.machine.MachineProfile.for_threads` prices t threads through Amdahl's form
s(t) = 1 / ((1 - p) + p / t) fitted to that point.
"""

from ..threads import apply_threads
from perfmodel.machine import OPERATIONS, operation_features

from .kernels import kernel_call, time_call
from .shapes import sample_shapes

__all__ = ["measure_thread_speedup"]

# Calls below this many flops (or bytes, for the passes without arithmetic) run on one thread whatever the count
# (`hpcnn.kernels.cpu._workers`): sampled calls are drawn at least this large, the range where the choice matters.
_LEAST_WORK = 2e6


def _work(op, shape):
    keys = {k: shape[k] for k in ("n", "c", "k", "in_spatial", "kernel", "out_spatial", "m", "gemm_k", "gemm_n",
                                  "nbytes", "runs") if k in shape}
    f = operation_features(op, **keys)
    return max(f["flops"], f["bytes"])


def measure_thread_speedup(comm, rng, device, threads, calls=6):
    """{op: speedup of `threads` threads over 1} on rank 0 (the others sleep meanwhile), on every rank; {} on a GPU,
    with fewer than 2 threads, or where numba cannot start that many (NUMBA_NUM_THREADS below it)."""
    import numba
    if device.name == "gpu" or threads < 2 or numba.config.NUMBA_NUM_THREADS < threads:
        return {}
    result = {}
    if comm.rank == 0:
        before = numba.get_num_threads()
        try:
            for op in OPERATIONS:
                shapes = [s for s in sample_shapes(op, rng, max(60, 10 * calls)) if _work(op, s) >= _LEAST_WORK][:calls]
                one = many = 0.0
                for shape in shapes:
                    run = kernel_call(op, shape, rng, device)
                    apply_threads(1)
                    one += time_call(run)
                    apply_threads(threads)
                    many += time_call(run)
                if many > 0:
                    result[op] = one / many
        finally:
            apply_threads(before)
    comm.idle_barrier()
    return comm.bcast_object(result)
