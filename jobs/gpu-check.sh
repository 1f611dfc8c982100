#!/usr/bin/env bash
# hpcnn on one NVIDIA GPU (written for an H200 with CuPy 14 for CUDA 13): every check of the GPU path, in one run.
#
#   bash jobs/gpu-check.sh               # the parts below; exit 0 only when every part ran and passed
#   bash jobs/gpu-check.sh --calibrate   # then also measure a GPU machine profile (about 3 more minutes)
#
# Parts, each with its own time limit, one summary line each (PASS, FAIL, or CANNOT RUN with the reason):
#   device       nvidia-smi, CuPy, NVRTC and cuBLAS through `hpcnn.backend.open_device("gpu")`        <= 30 s
#   kernels      every GPU kernel against the CPU kernels and PyTorch CUDA, NVRTC compilation of every
#                program, staging round trips, a 10-step training run (pytest -m gpu tests/gpu, or
#                tests/gpu/run_gpu_checks.py where pytest is missing)                                  <= 100 s
#   dist-2       distributed layers, models and the trainer on 2 ranks sharing the GPU, equal to one
#                CPU process (tests/mpi on device gpu with pytest-mpi, else tests/gpu/run_dist_checks.py) <= 80 s
#   dist-4       the same on 4 ranks                                                                  <= 100 s
#   quickstart   one epoch of jobs/quickstart.toml on 4 ranks with --device gpu; the same on the CPU runs
#                beside the GPU parts from the start; the loss curves and validation agree (rtol 2e-3) <= 60 s
#   bench        hpcnn bench kernels --device gpu (hpcnn's kernels against PyTorch CUDA)              <= 100 s
#   calibrate    (--calibrate) hpcnn calibrate --device gpu --quick: kernel rates and staging
#                bandwidth, a measured profile in $OUT/gpu-profile.json                               <= 200 s
# On paper: 30 + 100 + 80 + 100 + 60 + 100 = 470 s at the limits (the CPU quickstart overlaps them),
# about 5 minutes expected.
#
# It runs from the checkout as it is (PYTHONPATH=$PWD, nothing installed) and needs python with numpy,
# cupy, numba, mpi4py and torch (CUDA), mpiexec, and, for the quickstart's data, scikit-image and
# scipy; pytest and pytest-mpi are used where present. Logs, JSON and the summary go to ${OUT:-gpu-check-out}.
#
# HPCNN_CHECK_DEVICE=emulated-gpu runs the same script on a machine without a GPU (a test of the script and
# of the GPU code path on the emulated device: no GPU probe, the emulator's kernel tests, no benchmark).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out" && out=$(cd "$out" && pwd)   # absolute: a job's relative logging.dir is relative to its file
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export HPCNN_GPU_TF32=0            # exact float32 products: the references are exact
py=${PYTHON:-python}
dev=${HPCNN_CHECK_DEVICE:-gpu}
calibrate=0
[[ ${1:-} == --calibrate ]] && calibrate=1
summary="$out/summary.txt"
: >"$summary"
status=0

# report NAME RC SECONDS LOG [DETAIL]: one summary line; rc 0 pass, 124 timeout, 125 cannot run, else fail
report() {
  local name=$1 rc=$2 seconds=$3 log=$4 detail=${5:-}
  local verdict
  case $rc in
    0) verdict=PASS ;;
    124) verdict="FAIL (timed out)"; status=1 ;;
    125) verdict="CANNOT RUN"; status=1 ;;
    *) verdict="FAIL (exit $rc)"; status=1 ;;
  esac
  [[ -z $detail && -s $log ]] && detail=$(grep -E "passed|failed|error|Error" "$log" | tail -n 1)
  printf '%-11s %-18s %4ss  %s  [%s]\n' "$name" "$verdict" "$seconds" "$detail" "$log" | tee -a "$summary"
  if [[ $rc -ne 0 && -s $log ]]; then tail -n 30 "$log"; fi
}

# run NAME LIMIT LOG COMMAND...: run a part under its time limit and report it
run() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >"$log" 2>&1
  report "$name" $? $((SECONDS - t0)) "$log"
}

missing() {  # the Python modules among "$@" that do not import
  "$py" - "$@" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
}

# --- the CPU quickstart starts now, beside the GPU parts (4 ranks x 1 thread) ----------------------------
quick=(jobs/quickstart.toml --set training.epochs=1 --set logging.every=4 --restart)
lacking=$(missing numpy scipy skimage numba mpi4py)
cpu_pid=""
if [[ -z $lacking ]] && command -v mpiexec >/dev/null; then
  (timeout 300 mpiexec -n 4 "$py" -m hpcnn.cli train "${quick[@]}" --device cpu \
     --set "logging.dir='$out/quickstart-cpu'" >"$out/quickstart-cpu.log" 2>&1; echo $? >"$out/quickstart-cpu.rc") &
  cpu_pid=$!
fi

# --- device ----------------------------------------------------------------------------------------------
t0=$SECONDS
if [[ $dev != gpu ]]; then
  echo "$dev: no GPU probe (a run of this script without a GPU)" >"$out/device.log"
else
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader &&
  timeout 30 "$py" - <<'PY'
import cupy, numpy
from hpcnn.backend import open_device
device = open_device("gpu")     # selects the GPU, compiles a kernel with NVRTC, runs a cuBLAS product
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "devices",
      cupy.cuda.runtime.getDeviceCount(), "numpy", numpy.__version__, "->", device.label)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    print("torch missing: the kernel tests compare with the CPU kernels only, and the benchmark cannot run")
PY
} >"$out/device.log" 2>&1
fi
rc=$?
report device $rc $((SECONDS - t0)) "$out/device.log" "$(tail -n 2 "$out/device.log" | tr '\n' ' ')"
if [[ $rc -ne 0 ]]; then
  echo "no usable GPU: the other parts cannot run" | tee -a "$summary"
  [[ -n $cpu_pid ]] && kill "$cpu_pid" 2>/dev/null
  exit 2
fi

have_pytest=$([[ -z $(missing pytest) ]] && echo 1 || echo 0)
have_pytest_mpi=$([[ -z $(missing pytest pytest_mpi) ]] && echo 1 || echo 0)

# --- kernels ---------------------------------------------------------------------------------------------
if [[ $dev != gpu ]]; then
  run kernels 100 "$out/kernels.log" "$py" -m pytest -q -p no:cacheprovider tests/gpu/test_emulated_kernels.py \
    tests/test_emulated.py
elif ((have_pytest)); then
  run kernels 100 "$out/kernels.log" "$py" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
else
  run kernels 100 "$out/kernels.log" "$py" tests/gpu/run_gpu_checks.py
fi

# --- distributed, ranks sharing the GPU -------------------------------------------------------------------
for n in 2 4; do
  limit=$((n == 2 ? 80 : 100))
  lacking=$(missing mpi4py torch)
  if [[ -n $lacking ]] || ! command -v mpiexec >/dev/null; then
    echo "missing: ${lacking:-mpiexec}" >"$out/dist-$n.log"
    report "dist-$n" 125 0 "$out/dist-$n.log" "missing ${lacking:-mpiexec}"
  elif ((have_pytest_mpi)); then
    # the gpu variants of the layer, model and trainer agreement tests (one body over the devices; the
    # emulated ones under HPCNN_CHECK_DEVICE=emulated-gpu); the 3-D layer tests are left to CI
    if [[ $dev == gpu ]]; then select=(-m "mpi and gpu" -k "not conv3d and not pool3d and not upsample3d")
    else select=(-m mpi -k "emulated and not conv3d and not pool3d and not upsample3d"); fi
    run "dist-$n" "$limit" "$out/dist-$n.log" mpiexec -n "$n" "$py" -m mpi4py tests/mpi_pytest.py -q \
      -p no:cacheprovider --with-mpi "${select[@]}" tests/mpi/test_layers.py tests/mpi/test_models.py \
      tests/mpi/test_trainer_agreement.py
  else
    run "dist-$n" "$limit" "$out/dist-$n.log" mpiexec -n "$n" "$py" tests/gpu/run_dist_checks.py --device "$dev"
  fi
done

# --- quickstart: one epoch on the GPU beside the same on the CPU -----------------------------------------
t0=$SECONDS
if [[ -z $cpu_pid ]]; then
  echo "missing: $(missing numpy scipy skimage numba mpi4py) $(command -v mpiexec >/dev/null || echo mpiexec)" \
    >"$out/quickstart.log"
  report quickstart 125 0 "$out/quickstart.log" "$(cat "$out/quickstart.log")"
else
  timeout 60 mpiexec -n 4 "$py" -m hpcnn.cli train "${quick[@]}" --device "$dev" \
    --set "logging.dir='$out/quickstart-gpu'" >"$out/quickstart-gpu.log" 2>&1
  rc=$?
  wait "$cpu_pid"
  cpu_rc=$(cat "$out/quickstart-cpu.rc" 2>/dev/null || echo 1)
  if [[ $rc -eq 0 && $cpu_rc -eq 0 ]]; then
    "$py" - "$out/quickstart-cpu/metrics.jsonl" "$out/quickstart-gpu/metrics.jsonl" >"$out/quickstart.log" 2>&1 <<'PY'
import json, sys
def records(path):
    rows = [json.loads(line) for line in open(path)]
    return ([r["loss"] for r in rows if r["kind"] == "train"],
            [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in rows if r["kind"] == "val"])
(cpu_loss, cpu_val), (gpu_loss, gpu_val) = records(sys.argv[1]), records(sys.argv[2])
assert len(cpu_loss) == len(gpu_loss) > 0 and len(cpu_val) == len(gpu_val) > 0, "different numbers of records"
pairs = list(zip(cpu_loss, gpu_loss)) + [(a[k], b[k]) for a, b in zip(cpu_val, gpu_val) for k in a if k != "step"]
worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
print(f"{len(cpu_loss)} train losses and {len(cpu_val)} validation records; largest relative difference "
      f"gpu vs cpu {worst:.2e} (float32 tolerance 2e-3)")
sys.exit(0 if worst <= 2e-3 else 1)
PY
    rc=$?
  else
    { echo "gpu run exit $rc, cpu run exit $cpu_rc"; tail -n 20 "$out/quickstart-gpu.log" "$out/quickstart-cpu.log"; } \
      >"$out/quickstart.log"
    [[ $rc -eq 0 ]] && rc=1
  fi
  report quickstart $rc $((SECONDS - t0)) "$out/quickstart.log" "$(tail -n 1 "$out/quickstart.log")"
fi

# --- benchmark: hpcnn's GPU kernels against PyTorch CUDA --------------------------------------------------
if [[ $dev != gpu ]]; then
  echo "the benchmark times a GPU" >"$out/bench.log"
  report bench 125 0 "$out/bench.log" "needs a GPU (HPCNN_CHECK_DEVICE=$dev)"
elif [[ -n $(missing torch) ]]; then
  echo "missing: torch" >"$out/bench.log"
  report bench 125 0 "$out/bench.log" "missing torch (the comparison needs PyTorch with CUDA)"
else
  t0=$SECONDS
  unset HPCNN_GPU_TF32     # the benchmark matches PyTorch's own float32 math mode
  timeout 100 "$py" -m hpcnn.cli bench kernels --device gpu --repeat 3 --json "$out/bench.json" >"$out/bench.log" 2>&1
  report bench $? $((SECONDS - t0)) "$out/bench.log" "$(grep -m1 "geometric-mean" "$out/bench.log")"
  export HPCNN_GPU_TF32=0
fi

# --- calibration (issue 19): hpcnn's own GPU kernel rates and the staging bandwidth ----------------------
if ((calibrate)); then
  run calibrate 200 "$out/calibrate.log" "$py" -m hpcnn.cli calibrate --device gpu --quick --budget 120 \
    --name "$(hostname)-gpu" -o "$out/gpu-profile.json"
fi

echo "== summary (logs in $out)"
cat "$summary"
exit $status
