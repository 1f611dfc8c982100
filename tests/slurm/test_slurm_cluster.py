"""slurm/train.sbatch on a real one-node SLURM cluster (slurm/local-cluster.sh), not a mock.

A short job runs on 2 ranks (srun --mpi=pmi2, the PyPI MPICH) to COMPLETED; a longer one is sent
USR1 the way `--signal=B:USR1@...` sends it before the time limit (to the batch shell), writes a
checkpoint, exits cleanly, requeues itself and finishes the run with --resume. Skipped, with the
reason, where SLURM or munge is not installed, this is not root, or the cluster does not come up
in 30 s. Every wait has a timeout; the daemons are stopped whatever happens.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = ROOT / "slurm" / "local-cluster.sh"
TEMPLATE = ROOT / "slurm" / "train.sbatch"
_COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
_ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
          "PREEMPTED")


def _why_no_cluster():
    if os.geteuid() != 0:
        return "the one-node SLURM cluster runs slurmctld and slurmd as root; these tests do not run as root"
    missing = [c for c in _COMMANDS if shutil.which(c) is None]
    if missing:
        return f"SLURM or munge is not installed (no {', '.join(missing)}; Debian: apt-get install slurm-wlm munge)"
    return None


def _free_port_pair():
    """A port p such that p and p + 1 (slurmctld, slurmd) are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except (OSError, OverflowError):
            continue
        return port
    raise RuntimeError("found no two consecutive free TCP ports")


def _alive(pid):
    try:
        os.kill(pid, 0)
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False


def _text(path):
    return path.read_text(errors="replace") if path.is_file() else f"(no file {path})"


def _records(path, kind):
    """The records of one kind ("train", "stop", "summary", ...) in a metrics.jsonl file."""
    out = []
    for line in _text(path).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written, or no file yet
        if record.get("kind") == kind:
            out.append(record)
    return out


class _Cluster:
    """A running one-node cluster: its folder and the environment that points SLURM's commands at it."""

    def __init__(self, folder, env):
        self.folder, self.env = folder, env

    def run(self, *args):
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr.strip()}"
        return out.stdout.strip()

    def submit_training(self, name, steps):
        """sbatch the training template on 2 ranks for `steps` steps of LeNet on digits; (job id, output, run folder)."""
        out, run = self.folder / f"{name}.out", self.folder / name
        job_id = self.run("sbatch", "--parsable", f"--chdir={ROOT}", f"--output={out}", "--time=10",
                          "--ntasks-per-node=2", str(TEMPLATE), "jobs/lenet-digits.toml",
                          "--set", "training.epochs=0", "--set", f"training.steps={steps}",
                          "--set", "logging.every=5", "--set", f"logging.dir='{run}'").split(";")[0]
        return job_id, out, run

    def job(self, job_id):
        """{field: value} of `scontrol show job` (an ended job stays listed for MinJobAge = 600 s)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "-o", job_id)))

    def wait(self, condition, timeout, what, job_id, out):
        """condition()'s first true value, polled; on timeout an AssertionError shows the job and the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.report(job_id, out)}")

    def wait_until_ended(self, job_id, out, timeout):
        def ended():
            j = self.job(job_id)
            return j if j["JobState"] in _ENDED else None
        return self.wait(ended, timeout, f"job {job_id} to end", job_id, out)

    def report(self, job_id, out):
        """The job's output and record, and the daemons' last log lines."""
        try:
            record = subprocess.run(["scontrol", "show", "job", job_id], env=self.env, capture_output=True,
                                    text=True, timeout=30).stdout
        except subprocess.TimeoutExpired:
            record = "(scontrol timed out)"
        logs = "".join(f"--- {p.name}:\n" + "\n".join(_text(p).splitlines()[-12:]) + "\n"
                       for p in sorted((self.folder / "log").glob("slurm*.log")))
        return f"--- output:\n{_text(out)}\n--- scontrol show job {job_id}:\n{record}{logs}"


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster started by slurm/local-cluster.sh; its daemons are stopped afterwards.

    Its folder is not under pytest's tmp_path: other pytest runs on the same machine prune old
    tmp_path folders, which would pull the state, logs and job outputs from under the daemons.
    """
    reason = _why_no_cluster()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="hpcnn-slurm-"))  # short: munge's socket path must fit a sockaddr_un
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "PMI_", "PMIX_"))}
    env.update(SLURM_CONF=str(folder / "slurm.conf"), HPCNN_SLURM_PORT=str(_free_port_pair()), HPCNN_SLURM_WAIT="30")
    try:
        try:
            started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(folder)], env=env,
                                     capture_output=True, text=True, timeout=60)
            problem = None if started.returncode == 0 else (started.stderr or started.stdout).strip()
        except subprocess.TimeoutExpired:
            problem = "local-cluster.sh start did not return within 60 s"
        if problem:
            logs = "; ".join(f"{p.name}: {_text(p).strip().splitlines()[-1:]}"
                             for p in sorted((folder / "log").glob("*.log")))
            pytest.skip(f"the one-node SLURM cluster did not come up: {problem} [{logs}]")
        # The jobs run `python -m hpcnn.cli` with this interpreter, whether or not hpcnn is pip-installed.
        env.update(HPCNN=f"{sys.executable} -m hpcnn.cli", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        yield _Cluster(folder, env)
    finally:
        pid_files = [folder / "munge" / "munged.pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
        pids = [int(t) for t in (f.read_text().strip() for f in pid_files if f.is_file()) if t.isdigit()]
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(folder)], env=env, capture_output=True, timeout=90)
        alive = [p for p in pids if _alive(p)]
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
        assert not alive, f"local-cluster.sh stop left daemons running: pids {alive} (folder {folder})"


def test_a_short_training_job_completes_on_two_ranks(cluster):
    job_id, out, run = cluster.submit_training("short", steps=20)
    job = cluster.wait_until_ended(job_id, out, timeout=120)
    log = _text(out)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), cluster.report(job_id, out)
    assert "engine spatial on 2 ranks" in log, log  # srun --mpi=pmi2 made the 2 tasks one MPI job
    assert "hpcnn train exited with status 0" in log, log
    assert _records(run / "metrics.jsonl", "summary")[-1]["steps"] == 20
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.npz")) == ["step-000000020.npz"]


def test_usr1_writes_a_checkpoint_and_the_job_requeues_and_resumes(cluster):
    steps = 200
    job_id, out, run = cluster.submit_training("long", steps=steps)
    cluster.wait(lambda: _records(run / "metrics.jsonl", "train"), 120, f"job {job_id} to make progress", job_id, out)
    # What --signal=B:USR1@120 does before the time limit: USR1 to the batch shell only.
    cluster.run("scancel", "--batch", "--signal=USR1", job_id)

    def requeued():
        j = cluster.job(job_id)
        return j["Restarts"] == "1" and j["JobState"] in ("PENDING", "REQUEUED")
    cluster.wait(requeued, 60, f"job {job_id} to checkpoint and requeue itself", job_id, out)
    log = _text(out)
    m = re.search(r"received SIGUSR1: checkpoint written at step (\d+) to (\S+);", log)
    assert m, log
    stopped_at = int(m.group(1))
    assert 0 < stopped_at < steps, log
    assert m.group(2).endswith(f"step-{stopped_at:09d}.npz") and Path(m.group(2)).is_file(), log
    assert "hpcnn train exited with status 0 after SIGUSR1" in log, log  # a clean exit, then the requeue
    assert _records(run / "metrics.jsonl", "stop")[0]["reason"] == "SIGUSR1"

    # SLURM holds a requeued job back for about two minutes; as the cluster's root, let it start now,
    # but only once the first run's steps are gone: a restart while slurmd still tears the old
    # allocation down is refused ("job credential revoked") and the job ends FAILED.
    def settled():
        steps_left = cluster.run("squeue", "--steps", "--noheader", "-j", job_id)
        return cluster.job(job_id)["JobState"] == "PENDING" and not steps_left
    cluster.wait(settled, 60, f"job {job_id}'s first run to be torn down", job_id, out)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    job = cluster.wait_until_ended(job_id, out, timeout=150)
    log = _text(out)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), \
        cluster.report(job_id, out)
    assert "(run 2)" in log and f"resumed at step {stopped_at} from" in log, log
    assert _records(run / "metrics.jsonl", "summary")[-1]["steps"] == steps
    assert (run / "checkpoints" / f"step-{steps:09d}.npz").is_file()


def test_the_scaling_sweep_measures_every_rank_count_and_merges_one_csv(cluster):
    """slurm/scaling.sbatch: srun per rank count and split (--here), then one --merge into CSV and plots."""
    out, results = cluster.folder / "scaling.out", cluster.folder / "scaling"
    job_id = cluster.run(
        "sbatch", "--parsable", f"--chdir={ROOT}", f"--output={out}", "--time=10", "--nodes=1",
        "--ntasks-per-node=2", f"--export=ALL,HPCNN_SCALING_OUT={results}", str(ROOT / "slurm" / "scaling.sbatch"),
        "--model", "meshnet", "--input", "4x32x32", "--batch", "2", "--set", "widths=[4,4]",
        "--set", "dilations=[1,2]", "--iterations", "1").split(";")[0]
    job = cluster.wait_until_ended(job_id, out, timeout=180)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), cluster.report(job_id, out)
    log = _text(out)
    assert "rank counts 1 2;" in log and "2 ranks on 1 node(s), split spatial" in log, log
    lines = (results / "scaling.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    measured = {(r["ranks"], r["split"], r["grid"]) for r in rows if r["split"] == r["measured_as"]}
    # and the 2-rank plan, where the profile's planner picks neither uniform split
    assert {m for m in measured if m[1] != "plan"} == {
        ("1", "sample", "1x1x1"), ("2", "sample", "2x1x1"), ("2", "spatial", "1x2x1")}, lines
    assert all(m[0] == "2" for m in measured if m[1] == "plan"), lines
    assert (results / "scaling_strong.png").is_file() and (results / "breakdown_strong.png").is_file()
