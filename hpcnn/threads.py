"""Threads per rank: the BLAS, OpenMP and numba thread counts hpcnn chooses for every entry point.

Unless the user chose (an explicit count, or one of THREAD_VARIABLES in the environment), a
process uses the cores it may run on (its CPU affinity) divided by the ranks on its node, at
least 1. More ranks than cores get one thread each, and the choice says the node is
oversubscribed. The counts are applied at run time (threadpoolctl for the BLAS and OpenMP
libraries numpy loaded, `numba.set_num_threads`), so they hold whatever the shell exported.

    choice = choose_threads(ranks_on_node=comm.node_size())
    apply_threads(choice.threads)
    print(choice.describe())     # "threads: 1 per rank (2 cores / 4 ranks on this node: oversubscribed)"
"""
import os
from dataclasses import dataclass

__all__ = ["THREAD_VARIABLES", "ThreadChoice", "available_cores", "choose_threads", "apply_threads",
           "thread_environment", "blas_kernels", "blas_family"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores():
    """The number of cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadChoice:
    """threads: per rank; reason: why, in words; oversubscribed: more ranks on the node than cores."""
    threads: int
    reason: str
    oversubscribed: bool = False

    def describe(self):
        note = "; oversubscribed: more ranks than cores, one thread each" if self.oversubscribed else ""
        return f"threads: {self.threads} per rank ({self.reason}{note})"


def _from_environment(environ):
    for name in THREAD_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a thread count (expected a positive integer)") from None
            if threads < 1:
                raise ValueError(f"{name}={value!r} is not a thread count (expected a positive integer)")
            return name, threads
    return None, None


def choose_threads(ranks_on_node=1, requested=None, requested_by="--threads", environ=None, cores=None):
    """The threads per rank for `ranks_on_node` ranks sharing this node (see the module docstring).

    requested: an explicit count (a job's training.threads or a --threads option, named by
    `requested_by`), which wins; then the environment; then cores // ranks_on_node.
    """
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else int(cores)
    ranks_on_node = max(int(ranks_on_node), 1)
    over = ranks_on_node > cores
    if requested is not None:
        if int(requested) != requested or requested < 1:
            raise ValueError(f"{requested_by}: expected a positive number of threads, received {requested!r}")
        return ThreadChoice(int(requested), f"{requested_by} = {int(requested)}", over)
    name, threads = _from_environment(environ)
    if name is not None:
        return ThreadChoice(threads, f"{name}={threads} in the environment", over)
    threads = max(cores // ranks_on_node, 1)
    rank_word = "rank" if ranks_on_node == 1 else "ranks"
    return ThreadChoice(threads, f"{cores} cores / {ranks_on_node} {rank_word} on this node", over)


def apply_threads(threads):
    """Make hpcnn's CPU kernels use `threads` threads in this process, numba's pool as many, and BLAS one;
    returns {pool: threads} as set.

    BLAS gets one thread because hpcnn's kernels split their GEMMs over their own worker threads
    (`hpcnn.kernels.cpu._workers`), and an OpenBLAS thread pool, once woken by a call outside them (a
    Linear layer's matmul), spins for a while after each call on the cores those workers need: measured
    on 2 cores, a cosmoflow training step on 2 threads took 154 ms with BLAS on 2 threads (256 ms of CPU
    time) and 105 ms with BLAS on 1 (175 ms, what one thread takes). Matrix products outside the
    kernels (Linear layers) then run on one thread."""
    import numba
    from threadpoolctl import threadpool_limits

    # threadpoolctl limits only the libraries already loaded: hpcnn's BLAS binding loads numpy's OpenBLAS
    from .kernels.cpu import _blas, _workers  # noqa: F401
    threads = int(threads)
    threadpool_limits(1)
    numba_threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(numba_threads)
    _workers.set_thread_limit(numba_threads)
    return {"kernels": numba_threads, "blas": 1, "numba": numba_threads}


def blas_kernels():
    """Which BLAS kernels hpcnn's CPU convolutions run, in words ("SkylakeX kernels (...)"; see
    `hpcnn.kernels.cpu._blas`: a machine that pins numpy's OpenBLAS to an older family)."""
    from .kernels.cpu._blas import BLAS_KERNELS
    return BLAS_KERNELS


def blas_family():
    """The BLAS kernel family hpcnn's CPU convolutions run ("SkylakeX", "Haswell", ..., or "unknown")."""
    from .kernels.cpu._blas import BLAS_FAMILY
    return BLAS_FAMILY


def thread_environment(threads, environ=None):
    """A copy of the environment with every THREAD_VARIABLES entry set to `threads` (for child processes)."""
    environ = os.environ if environ is None else environ
    return dict(environ, **{name: str(int(threads)) for name in THREAD_VARIABLES})
