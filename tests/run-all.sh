#!/usr/bin/env bash
# Run every hpcnn check: lint and the import contracts, the serial suite, then the MPI suite at 1, 2, 3 and 4 ranks
# (oversubscribed where the machine has fewer cores; each MPI run has a timeout).
set -euo pipefail
cd "$(dirname "$0")/.."
. jobs/env.sh test     # the environment with the test extra, created when missing
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
ranks=${HPCNN_TEST_RANKS:-"1 2 3 4"}
per_run_timeout=${HPCNN_MPI_TIMEOUT:-900}

echo "== lint: pyflakes rules (ruff) and the layer contracts (import-linter, .importlinter)"
ruff check hpcnn perfmodel tests
lint-imports

echo "== serial tests"
python -m pytest -q -m "not mpi" tests "$@"

for n in $ranks; do
  echo "== MPI tests on $n rank(s)"
  timeout "$per_run_timeout" mpiexec -n "$n" python -m mpi4py tests/mpi_pytest.py -q -m mpi --with-mpi tests "$@"
done
echo "== all tests passed"
