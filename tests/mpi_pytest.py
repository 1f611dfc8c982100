"""Run pytest under MPI with one report: rank 0 prints, the other ranks print only when they fail.

MPI tests assert collectively (every rank fails together), so rank 0's report is usually the
whole story; a rank that fails alone still shows its report, and every rank's exit status
reaches mpiexec. Launch as
`mpiexec -n P python -m mpi4py tests/mpi_pytest.py --with-mpi -m mpi tests`.
"""
import os
import sys
import tempfile

import pytest
from mpi4py import MPI

if __name__ == "__main__":
    rank = MPI.COMM_WORLD.rank
    if rank == 0:
        sys.exit(pytest.main(sys.argv[1:]))
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            code = pytest.main(sys.argv[1:])
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
        if code not in (0, 5):
            log.seek(0)
            sys.stderr.write(f"---- rank {rank} report ----\n{log.read()}")
    sys.exit(code)
