"""Collective asserts for MPI tests: every rank learns the verdict, so a failing rank never leaves others waiting."""
import numpy as np
from mpi4py import MPI

from tests.oracle import assert_close

__all__ = ["SIZE", "CollectiveFailure", "check_all", "assert_close_all", "grids_for", "grid_id", "world"]

# The world size at collection time: parametrize lists built from it are the same on every rank,
# so every rank collects the same test ids in the same order.
SIZE = MPI.COMM_WORLD.Get_size()


class CollectiveFailure(AssertionError):
    """Raised on every rank when the check failed on at least one."""


def world():
    return MPI.COMM_WORLD


def check_all(ok, message="", comm=None):
    """Assert on every rank that `ok` holds on every rank; the message names the failing ranks."""
    comm = comm or MPI.COMM_WORLD
    results = comm.allgather((bool(ok), "" if ok else str(message)))
    bad = [f"rank {r}: {m}" for r, (good, m) in enumerate(results) if not good]
    if bad:
        raise CollectiveFailure("; ".join(bad))


def assert_close_all(actual, expected, dtype, what="", comm=None):
    """tests.oracle.assert_close on every rank, then a collective verdict."""
    try:
        assert_close(actual, expected, dtype, what)
        ok, message = True, ""
    except AssertionError as e:
        ok, message = False, str(e)
    check_all(ok, message, comm)


def grids_for(size, nd=2):
    """Every grid of `size` ranks over (N, *spatial): all ordered factorizations."""
    out = []

    def rec(prefix, left, slots):
        if slots == 1:
            out.append(tuple(prefix + [left]))
            return
        for f in range(1, left + 1):
            if left % f == 0:
                rec(prefix + [f], left // f, slots - 1)
    rec([], size, nd + 1)
    return out


def grid_id(grid, name="grid"):
    """A test id for a grid: "grid=1x2x1"."""
    return f"{name}={'x'.join(map(str, grid))}"


def rng(seed=0):
    return np.random.default_rng(seed)
