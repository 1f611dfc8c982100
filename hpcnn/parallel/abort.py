"""An uncaught exception on one rank aborts every rank of the job, as `python -m mpi4py` does, so none hangs."""
import os
import sys
import time
import traceback

from .mpi import _mpi

__all__ = ["install_abort_on_error"]

_installed = False
_FORWARD_S = 0.5   # seconds a failing rank waits between printing its traceback and aborting the job


def install_abort_on_error():
    """Make an uncaught exception on any rank abort every rank (no hang), printing its traceback.

    Entry points call this once; it is what `python -m mpi4py` does. Single-rank runs keep the
    normal behaviour. HPCNN_NO_ABORT=1 keeps the normal behaviour too (for debugging).
    """
    global _installed
    MPI = _mpi()
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
                # the launcher forwards a rank's output asynchronously and stops forwarding when the job is
                # killed: give it the traceback before the abort (without this pause it was lost now and then)
                time.sleep(_FORWARD_S)
                MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook
    _installed = True
