"""MPI test settings: a test that fails with anything but a collective assert aborts the whole job."""
import sys
import traceback

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.passed or report.skipped:
        return
    from mpi4py import MPI
    from tests.mpi.collective import CollectiveFailure
    if MPI.COMM_WORLD.Get_size() == 1 or call.excinfo.errisinstance(CollectiveFailure):
        return
    # An error on one rank only would leave the others blocked in the next collective.
    sys.stderr.write(f"\n[rank {MPI.COMM_WORLD.Get_rank()}] {item.nodeid} raised; aborting the job:\n")
    sys.stderr.write("".join(traceback.format_exception(call.excinfo.type, call.excinfo.value, call.excinfo.tb)))
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)


@pytest.fixture(autouse=True)
def _watchdog():
    """A test that runs past HPCNN_TEST_TIMEOUT seconds (a hang) dumps its stack and ends the job."""
    import faulthandler
    import os
    faulthandler.dump_traceback_later(float(os.environ.get("HPCNN_TEST_TIMEOUT", "120")), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
