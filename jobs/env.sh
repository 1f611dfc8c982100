# Source this file to enter hpcnn's Python environment, creating it when it is missing:
#   . jobs/env.sh          hpcnn and what it runs on (numpy, numba, mpi4py + MPICH, h5py, ...)
#   . jobs/env.sh test     and the test extra: pytest, pytest-mpi, ruff, import-linter, PyTorch CPU (the oracle)
# The environment is the active virtual environment, else HPCNN_VENV (default .venv in the repository).
# HPCNN_TORCH names the PyTorch requirement installed before the test extra (default torch==2.13.0: a CPU
# build; a plain `torch` from PyPI is a CUDA build of several GB).
_hpcnn_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${VIRTUAL_ENV:-}" ]; then
  _hpcnn_venv=${HPCNN_VENV:-$_hpcnn_root/.venv}
  if [ ! -x "$_hpcnn_venv/bin/python" ]; then
    _hpcnn_python=$(command -v python3.11 || command -v python3)
    echo "hpcnn: creating the environment $_hpcnn_venv with $("$_hpcnn_python" --version 2>&1)"
    "$_hpcnn_python" -m venv "$_hpcnn_venv"
  fi
  . "$_hpcnn_venv/bin/activate"
fi
if ! python -c "import hpcnn, mpi4py, numba, h5py" >/dev/null 2>&1; then
  echo "hpcnn: installing hpcnn (pip install -e $_hpcnn_root)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e "$_hpcnn_root"
fi
if [ "${1:-}" = test ] && ! python -c "import pytest, pytest_mpi, torch, importlinter, grimp, ruff" >/dev/null 2>&1; then
  echo "hpcnn: installing the test extra (${HPCNN_TORCH:-torch==2.13.0}, then pip install -e '.[test]')"
  python -m pip install -q "${HPCNN_TORCH:-torch==2.13.0}"
  python -m pip install -q -e "$_hpcnn_root[test]"
fi
unset _hpcnn_root _hpcnn_venv _hpcnn_python
