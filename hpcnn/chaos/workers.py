"""CHAOS worker threads: each takes the next mini-batches from a shared counter and runs them; the weights have no lock."""
import threading
import time

from .clock import Aborted, StalenessClock
from .threads import worker_thread_setup

__all__ = ["Worker", "ChaosWorkerError", "run_workers"]


class ChaosWorkerError(RuntimeError):
    """A worker raised: the engine stopped every worker and reports the first error (chained)."""


class Worker:
    """One worker's private state and its statistics for the current segment."""

    def __init__(self, index):
        self.index = index
        self.loss_sum = 0.0
        self.correct = 0
        self.samples = 0
        self.updates = 0
        self.kernel_seconds = 0.0   # time inside the nogil fused call
        self.busy_seconds = 0.0     # time from the worker's start to its end
        self.cpu_seconds = 0.0      # CPU time of the worker's thread (less than busy when cores are shared)
        self.reached = 0            # the end of the last mini-batches this worker took in the current segment

    def reset(self):
        self.loss_sum, self.correct, self.samples, self.updates = 0.0, 0, 0, 0
        self.kernel_seconds = self.busy_seconds = self.cpu_seconds = 0.0


class _Takes:
    """The shared counter over mini-batches [first, last), handed out in order by guided self-scheduling:
    a take is 1/(2T) of what is left (T workers), at most `largest`, at least 1. Early takes are large
    (few GIL round trips, each a Python call into the nogil step); the last are single mini-batches,
    so the workers finish within about one mini-batch of each other at the segment's barrier."""

    def __init__(self, first, last, largest, workers):
        self.next, self.last = first, last
        self.largest, self.share = int(largest), 2 * int(workers)
        self.lock = threading.Lock()

    def take(self):
        """(j, count): mini-batches [j, j + count) are the caller's; count 0 when none are left."""
        with self.lock:
            j = self.next
            count = max(0, min(self.largest, -(-(self.last - j) // self.share)))
            self.next = j + count
        return j, count


def run_workers(workers, staleness, per_take, first, last, one, pause=None):
    """Run `workers` over mini-batches [first, last): each takes up to `per_take` at a time from a shared
    counter (fewer as the end nears, see _Takes) and calls one(worker, j, count); returns (wall seconds, the
    StalenessClock, reached).

    `pause`: a callable polled by every worker before it takes more mini-batches; once it returns
    True no worker takes more, each finishes what it took, and the workers end. Mini-batches are
    handed out in order and every one taken is finished, so [first, reached) is exactly what ran.

    One worker runs on the calling thread (the same code path without a thread: deterministic,
    debuggable); several run on threads that end in one barrier. A worker that raises stops the
    others; the first error is raised as ChaosWorkerError.
    """
    clock = StalenessClock(len(workers), staleness)
    takes = _Takes(first, last, per_take, len(workers))
    stop = threading.Event()
    errors = []
    for w in workers:
        w.reached = first

    def work(worker, on_thread):
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            if on_thread:
                worker_thread_setup()
            while not stop.is_set():
                if pause is not None and pause():
                    break
                j, count = takes.take()
                if count == 0:
                    break
                worker.reached = j + count
                clock.acquire(worker.index, count)
                one(worker, j, count)
                worker.updates += count
                clock.advance(worker.index, count)
        except Aborted:
            pass
        except BaseException as exc:  # reported on the main thread; stop the others
            errors.append((worker.index, exc))
            stop.set()
            clock.abort()
        finally:
            clock.leave(worker.index)
            worker.busy_seconds += time.perf_counter() - start
            worker.cpu_seconds += time.thread_time() - cpu_start

    t0 = time.perf_counter()
    if len(workers) == 1:
        work(workers[0], False)
    else:
        pool = [threading.Thread(target=work, args=(w, True), name=f"chaos-worker-{w.index}", daemon=True)
                for w in workers]
        for t in pool:
            t.start()
        try:
            for t in pool:              # the end-of-segment barrier
                while t.is_alive():
                    t.join(0.1)
        except BaseException:           # e.g. KeyboardInterrupt: stop the workers before leaving
            stop.set()
            clock.abort()
            raise
    seconds = time.perf_counter() - t0
    if errors:
        index, exc = errors[0]
        raise ChaosWorkerError(f"chaos: worker {index} of {len(workers)} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    return seconds, clock, max(w.reached for w in workers)
