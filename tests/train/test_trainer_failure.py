"""Failure under MPI: an error on one rank ends the whole job within seconds with that rank's message;
a bad job file is reported once (launched with mpiexec from a serial test; killed ranks and stop signals:
test_faults.py)."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

FAILING_RANK = textwrap.dedent("""
    import sys
    from mpi4py import MPI
    from hpcnn.train import spatial, trainer
    real = spatial.SpatialEngine.step
    def step(self, t, idx, lr):
        if MPI.COMM_WORLD.Get_rank() == 1 and t.step == 2:
            raise OSError("disk quota exceeded on node 7")
        return real(self, t, idx, lr)
    spatial.SpatialEngine.step = step
    sys.exit(trainer.command("jobs/lenet-digits.toml", [f"logging.dir='{sys.argv[1]}'", "training.epochs=50"]))
""")


def _mpiexec(n, args, timeout=90, **kw):
    return subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, **kw)


def test_an_error_on_one_rank_ends_the_job_with_its_message(tmp_path):
    t0 = time.perf_counter()
    proc = _mpiexec(2, [sys.executable, "-c", FAILING_RANK, str(tmp_path)])
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "[hpcnn rank 1]" in proc.stderr and "OSError: disk quota exceeded on node 7" in proc.stderr, proc.stderr
    assert elapsed < 60  # 50 epochs would take minutes: the job ended at the failure


def test_a_bad_job_file_is_reported_once(tmp_path):
    proc = _mpiexec(2, [sys.executable, "-m", "hpcnn.cli", "train", "jobs/lenet-digits.toml",
                        "--set", "training.batch=-3", "--set", f"logging.dir='{tmp_path}'"])
    assert proc.returncode == 2
    assert proc.stderr.count("training.batch must be a positive integer, got -3") == 1, proc.stderr


def test_gpu_without_a_gpu_stops_every_rank_with_one_line(tmp_path):
    """`--device gpu` where CuPy or a GPU is missing: exit 2 before any work, one message, printed once."""
    from hpcnn.backend import gpu_available
    if gpu_available():
        pytest.skip("this machine has a GPU")
    proc = _mpiexec(2, [sys.executable, "-m", "hpcnn.cli", "train", "jobs/lenet-digits.toml", "--device", "gpu",
                        "--set", f"logging.dir='{tmp_path}'"])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "training.device" in lines[0] and "gpu" in lines[0], proc.stderr
    assert not os.listdir(tmp_path), "files were written before the device check"
