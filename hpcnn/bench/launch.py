"""Starting a benchmark's worker under `mpiexec -n R` with its BLAS, OpenMP and numba threads set."""
import os
import shutil
import subprocess
import sys

from ..threads import THREAD_VARIABLES, thread_environment

__all__ = ["THREAD_VARIABLES", "mpiexec", "thread_environment", "run_ranks"]


def mpiexec():
    """The mpiexec to start benchmark runs with: the one on PATH, else the one beside this Python (a venv's
    MPICH from PyPI)."""
    found = shutil.which("mpiexec")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(beside):
        return beside
    raise SystemExit("hpcnn bench: no mpiexec on PATH (pip install mpich, or load your MPI module)")


def run_ranks(ranks, threads, python_argv, timeout, prog, what):
    """Run `mpiexec -n ranks python *python_argv` with `threads` threads per rank; echo its output.

    A run that takes longer than `timeout` seconds or fails ends this process (SystemExit) with
    "{prog}: {what}, ..." and, on failure, the end of the run's output.
    """
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, *python_argv]
    try:
        p = subprocess.run(cmd, env=thread_environment(threads), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{prog}: {what}, took longer than --timeout {timeout:g} s") from None
    sys.stdout.write(p.stdout)
    if p.returncode != 0:
        raise SystemExit(f"{prog}: {what}, failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
