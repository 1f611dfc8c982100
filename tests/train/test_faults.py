"""The fault suite: what a killed, stopped or damaged run leaves, for the spatial engine at 2 ranks and for CHAOS.

kill -9 of a rank mid-step ends the job within 10 s; SIGTERM of the launcher or of one rank writes a
checkpoint, exits 0, and --resume ends where an uninterrupted run ends, bit for bit; kill -9 during a
checkpoint write leaves the previous checkpoint, which loads; a corrupt, a truncated checkpoint and one
missing an optimizer entry are refused with one message naming the cause (exit 2). Every run is a
subprocess with a timeout.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from hpcnn.cli import main
from hpcnn.train import checkpoint as ckpt

MPIEXEC = shutil.which("mpiexec")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
TRAIN = [sys.executable, "-m", "hpcnn.cli", "train"]
SPATIAL = ["jobs/lenet-digits.toml", "--set", "training.epochs=0", "--set", "training.steps=300",
           "--set", "training.batch=8", "--set", "logging.every=1", "--set", "training.optimizer.momentum=0.9"]
CHAOS = ["jobs/digits-chaos.toml", "--set", "training.epochs=2", "--set", "training.batch=4",
         "--set", "distribution.deterministic=true",
         "--set", "training.optimizer.momentum=0.9", "--set", "checkpoint.every=100"]
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")


def _cmd(ranks, args, folder):
    launch = [MPIEXEC, "-n", str(ranks)] if ranks else []
    return [*launch, *TRAIN, *args, "--set", f"logging.dir='{folder}'"]


def _run(ranks, args, folder, timeout=60):
    return subprocess.run(_cmd(ranks, args, folder), capture_output=True, text=True, timeout=timeout, env=ENV)


def _ranks_of(pid):
    """The rank processes below the launcher `pid`."""
    out, todo = [], [pid]
    while todo:
        for c in map(int, subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True,
                                         text=True).stdout.split()):
            todo.append(c)
            try:
                cmd = open(f"/proc/{c}/cmdline", "rb").read()
            except OSError:
                continue
            if b"hpcnn.cli" in cmd and b"mpiexec" not in cmd and b"hydra" not in cmd:
                out.append(c)
    return sorted(out)


def _start(ranks, args, folder, until):
    """Start a run and read its output until a line starting with `until`."""
    proc = subprocess.Popen(_cmd(ranks, args, folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    for line in proc.stdout:
        if line.startswith(until):
            return proc
    raise AssertionError(f"the run ended before printing {until!r}: {proc.communicate()}")


def _final_params(folder):
    arrays, header = ckpt.load(ckpt.latest(os.path.join(folder, "checkpoints")))
    return header["step"], arrays


def _same_end(folder, ref):
    step, got = _final_params(folder)
    ref_step, want = ref
    assert step == ref_step
    bad = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not bad, f"{bad[:3]} differ from the uninterrupted run"


def _stop_and_resume(ranks, args, folder, kill, ref):
    proc = _start(ranks, args, folder, "step" if args is SPATIAL else "hpcnn train")
    try:
        t0 = time.perf_counter()
        kill(proc)
        out, err = proc.communicate(timeout=30)
        assert time.perf_counter() - t0 < 10, "the stop took more than 10 s"
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "checkpoint written at step" in out and "--resume" in out, out
    hint = out.split("continue with: ")[1].splitlines()[0]
    assert hint.startswith(f"mpiexec -n {ranks} " if ranks else "python -m hpcnn.cli train"), hint
    done = subprocess.run(["bash", "-c", hint], capture_output=True, text=True, timeout=60, env=ENV)  # as printed
    assert done.returncode == 0 and "resumed at step" in done.stdout, done.stderr
    _same_end(folder, ref)


@pytest.fixture(scope="module")
def spatial_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    if MPIEXEC is None:
        pytest.skip("needs mpiexec")
    proc = _run(2, SPATIAL, folder)
    assert proc.returncode == 0, proc.stderr
    return _final_params(folder)


@needs_mpi
def test_sigterm_of_the_launcher_and_of_one_rank(tmp_path, spatial_reference):
    _stop_and_resume(2, SPATIAL, tmp_path / "launcher", lambda p: p.send_signal(signal.SIGTERM), spatial_reference)
    _stop_and_resume(2, SPATIAL, tmp_path / "rank", lambda p: os.kill(_ranks_of(p.pid)[-1], signal.SIGTERM),
                     spatial_reference)


@needs_mpi
def test_kill_9_of_a_rank_mid_step_ends_the_job(tmp_path):
    proc = _start(2, [*SPATIAL, "--set", "training.steps=100000"], tmp_path, "step")
    try:
        ranks = _ranks_of(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[0], signal.SIGKILL)
        t0 = time.perf_counter()
        proc.communicate(timeout=30)
        assert time.perf_counter() - t0 < 10
    finally:
        proc.kill()
        for pid in _ranks_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0


def test_chaos_sigterm_writes_a_checkpoint_and_resumes_exactly(tmp_path):
    ref = _run(0, CHAOS, tmp_path / "reference")
    assert ref.returncode == 0, ref.stderr
    _stop_and_resume(0, CHAOS, tmp_path / "run", lambda p: p.send_signal(signal.SIGTERM),
                     _final_params(tmp_path / "reference"))


KILLED_IN_WRITE = """
import os, signal, sys
import numpy as np
from hpcnn.train import checkpoint, trainer
real, calls = np.savez, [0]
def savez(f, **arrays):
    calls[0] += 1
    if calls[0] == 2:          # the second checkpoint: half written, then kill -9
        f.write(b"PK\\x03\\x04" + b"\\0" * 4096); f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real(f, **arrays)
checkpoint.np.savez = savez
sys.exit(trainer.command(sys.argv[1], sys.argv[2:]))
"""


@pytest.mark.parametrize("job", [SPATIAL, CHAOS], ids=["spatial", "chaos"])
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, job):
    overrides = [a for a in job[1:] if a != "--set"] + ["checkpoint.every=100", f"logging.dir='{tmp_path}'"]
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_WRITE, job[0], *overrides], capture_output=True,
                          text=True, timeout=60, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [100]
    done = _run(0, [*job, "--set", "checkpoint.every=100", "--resume"], tmp_path)
    assert done.returncode == 0 and "resumed at step 100" in done.stdout, done.stderr


def _damaged(tmp_path, capsys, damage, message, job=SPATIAL):
    base = ["train", *job, "--set", f"logging.dir='{tmp_path}'", "--set", "logging.progress=false"]
    assert main(base + ["--set", "checkpoint.every=100"]) == 0
    capsys.readouterr()
    path = ckpt.latest(str(tmp_path / "checkpoints"))
    damage(path)
    assert main(base + ["--resume", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and path in err[0], err


def _corrupt(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 64)


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _without(key):
    def damage(path):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != key}
        with zipfile.ZipFile(path, "w") as zf:      # rewritten as np.savez would, without `key`
            for k, v in arrays.items():
                with zf.open(k + ".npy", "w") as f:
                    np.lib.format.write_array(f, v)
    return damage


@pytest.mark.parametrize("damage,message", [
    (_corrupt, "cannot be read"), (_truncate, "cannot be read"),
    (_without("optim/momentum_buffer.fc1.bias"), "lacks optim/momentum_buffer.fc1.bias"),
], ids=["corrupt", "truncated", "missing-optimizer-entry"])
def test_a_damaged_checkpoint_is_refused(tmp_path, capsys, damage, message):
    _damaged(tmp_path, capsys, damage, message)


def test_a_chaos_checkpoint_missing_an_optimizer_entry_is_refused(tmp_path, capsys):
    _damaged(tmp_path, capsys, _without("optim/momentum_buffer.conv1.weight"),
             "lacks optim/momentum_buffer.conv1.weight", job=[*CHAOS, "--set", "training.epochs=1"])
