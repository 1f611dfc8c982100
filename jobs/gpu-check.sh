#!/usr/bin/env bash
# hpcnn on one NVIDIA GPU: the GPU tests, then the convolution benchmark against PyTorch CUDA.
#
# Runs from a checkout with nothing installed from the network: PYTHONPATH=$PWD instead of
# pip install; needs python with numpy, cupy, numba and torch (CUDA); pytest is used when it is
# there, else tests/gpu/run_gpu_checks.py runs the same kernel checks. Within 8 minutes:
# tests <= 240 s, benchmark <= 210 s. Logs and JSON go to ${OUT:-gpu-check-out}.
#
#   bash jobs/gpu-check.sh            # exit status 0 when the tests pass and the benchmark ran
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-4}
py=${PYTHON:-python}
status=0

echo "== device" | tee "$out/summary.txt"
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/summary.txt"; then
  echo "nvidia-smi failed: no NVIDIA GPU or driver here" | tee -a "$out/summary.txt"
  exit 2
fi
if ! timeout 120 "$py" - <<'PY' 2>&1 | tee -a "$out/summary.txt"; then
import cupy, numpy
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "devices", cupy.cuda.runtime.getDeviceCount())
print("numpy", numpy.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    print("torch missing: the tests compare with the CPU kernels only, and the benchmark cannot run")
(cupy.arange(4) * 2).sum().item()
PY
  echo "cupy cannot use the GPU" | tee -a "$out/summary.txt"
  exit 2
fi

echo "== GPU tests" | tee -a "$out/summary.txt"
if "$py" -c "import pytest" 2>/dev/null; then
  timeout 240 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/gpu -k "not dist" > "$out/tests.log" 2>&1
else
  timeout 240 "$py" tests/gpu/run_gpu_checks.py > "$out/tests.log" 2>&1
fi
rc=$?
tail -n 25 "$out/tests.log"
tail -n 1 "$out/tests.log" >> "$out/summary.txt"
[ $rc -eq 0 ] || { echo "GPU tests failed (exit $rc; 124 is the timeout)" | tee -a "$out/summary.txt"; status=1; }

# Ranks sharing the GPU, when MPI and pytest-mpi are there (part of the 240 s above is left for it).
if "$py" -c "import mpi4py, pytest_mpi" 2>/dev/null && command -v mpiexec >/dev/null; then
  for n in 2 4; do
    echo "== distributed on $n ranks sharing the GPU" | tee -a "$out/summary.txt"
    timeout 90 mpiexec -n $n "$py" -m mpi4py tests/mpi_pytest.py -q -p no:cacheprovider --with-mpi \
      tests/gpu/test_gpu_dist.py > "$out/dist-$n.log" 2>&1
    rc=$?
    tail -n 1 "$out/dist-$n.log" | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || { echo "distributed GPU test on $n ranks failed (exit $rc)" | tee -a "$out/summary.txt"; status=1; }
  done
fi

echo "== benchmark: hpcnn vs PyTorch CUDA" | tee -a "$out/summary.txt"
if "$py" -m hpcnn.cli bench kernels --help 2>/dev/null | grep -q -- "--device"; then
  bench=("$py" -m hpcnn.cli bench kernels --device gpu --json "$out/bench.json")
else
  bench=("$py" -m hpcnn.bench.kernels_gpu --repeat 5 --json "$out/bench.json")
fi
timeout 210 "${bench[@]}" > "$out/bench.log" 2>&1
rc=$?
cat "$out/bench.log"
grep "geometric-mean" "$out/bench.log" >> "$out/summary.txt"
[ $rc -eq 0 ] || { echo "benchmark failed (exit $rc; 124 is the timeout)" | tee -a "$out/summary.txt"; status=1; }

echo "== summary"
cat "$out/summary.txt"
exit $status
