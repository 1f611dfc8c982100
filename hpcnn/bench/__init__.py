"""Benchmark drivers behind `hpcnn bench NAME`: each module has add_arguments(parser) and run(args).

The CLI lists them from `BENCHMARKS` and imports a benchmark's module only when it runs.
"""
import csv
import importlib
import os
import shutil
import sys

__all__ = ["BENCHMARKS", "load", "mpiexec", "write_csv"]

# name -> (module under hpcnn.bench, one line of help); a benchmark is listed here once it runs.
BENCHMARKS = {
    "kernels": ("kernels", "kernel timings: hpcnn's convolution, pooling and batch-norm against PyTorch"),
    "chaos": ("chaos", "CHAOS thread-parallel training: images/s, speedup, accuracy, the model's prediction"),
    "model": ("model", "the performance model against measurement, per layer and per iteration"),
    "halo": ("halo", "halo exchange in training, with and without overlap"),
    "scaling": ("scaling", "strong and weak scaling over ranks, measured beside the model's prediction"),
    "project": ("project", "predicted strong and weak scaling on a machine profile (perfmodel only)"),
}


def load(name):
    """The module of benchmark `name`."""
    return importlib.import_module(f"hpcnn.bench.{BENCHMARKS[name][0]}")


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
