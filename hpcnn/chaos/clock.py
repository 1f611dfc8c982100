"""Bounded staleness for CHAOS workers: stale synchronous parallel clocks (Ho et al., NIPS 2013)."""
import threading

__all__ = ["StalenessClock", "Aborted"]


class Aborted(RuntimeError):
    """Raised in a waiting worker when another worker failed and the engine is stopping."""


class StalenessClock:
    """Each worker counts its completed updates; a worker starts update number c (0-based) only when every
    other worker still training has completed at least c - bound updates.

    bound=0 is lock-step (bulk synchronous); bound=None never waits (pure Hogwild). A worker that has
    run out of samples `leave()`s and no longer holds the others back. `max_lead` is the largest
    c - (slowest completed count) seen when an update was allowed to start: never more than `bound`.
    """

    def __init__(self, workers, bound):
        if bound is not None and (int(bound) != bound or bound < 0):
            raise ValueError(f"staleness must be a non-negative integer or None, received {bound!r}")
        self.bound = None if bound is None else int(bound)
        self.done = [0] * workers
        self.active = [True] * workers
        self.max_lead = 0
        self.waits = 0
        self._aborted = False
        self._cond = threading.Condition()

    def acquire(self, worker, count):
        """Block until `worker` may start its next `count` updates (at most bound + 1 at a time)."""
        if self.bound is None:
            return
        with self._cond:
            waited = False
            while True:
                if self._aborted:
                    raise Aborted("another worker failed")
                others = [d for j, (d, a) in enumerate(zip(self.done, self.active)) if a and j != worker]
                last = self.done[worker] + count - 1
                lead = last - min(others) if others else 0
                if lead <= self.bound:
                    self.max_lead = max(self.max_lead, lead)
                    self.waits += waited
                    return
                waited = True
                self._cond.wait(0.05)

    def advance(self, worker, count):
        """`worker` completed `count` more updates."""
        with self._cond:
            self.done[worker] += count
            self._cond.notify_all()

    def leave(self, worker):
        with self._cond:
            self.active[worker] = False
            self._cond.notify_all()

    def abort(self):
        """Wake every waiting worker with `Aborted`."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
