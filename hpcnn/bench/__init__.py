"""Benchmark drivers behind `hpcnn bench NAME`: each module has add_arguments(parser) and run(args)."""
import csv
import importlib
import os
import shutil
import sys

__all__ = ["BENCHMARKS", "load", "mpiexec", "write_csv"]

# name -> module under hpcnn.bench; a benchmark is listed here once it runs.
BENCHMARKS = {"kernels": "kernels", "chaos": "chaos", "model": "model", "halo": "halo", "scaling": "scaling",
              "project": "project"}


def load(name):
    return importlib.import_module(f"hpcnn.bench.{BENCHMARKS[name]}")


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


def write_csv(path, columns, rows):
    """A CSV file with a header of `columns` and one line per dict of `rows`, floats to 6 significant figures."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
