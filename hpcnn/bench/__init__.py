"""Benchmark drivers behind `hpcnn bench NAME`: each module has add_arguments(parser) and run(args).

The CLI lists them from `BENCHMARKS` and imports a benchmark's module only when it runs. Shared by the
benchmarks: `launch` (worker runs under mpiexec), `output` (CSV files, matplotlib) and `host_profile` (the
machine profile of the predictions); a benchmark too large for one file has modules named after it
(project_*, scaling_*, chaos_*).
"""
import importlib

__all__ = ["BENCHMARKS", "load"]

# name -> (module under hpcnn.bench, one line of help); a benchmark is listed here once it runs.
BENCHMARKS = {
    "kernels": ("kernels", "kernel timings: hpcnn's convolution, pooling and batch-norm against PyTorch"),
    "chaos": ("chaos", "CHAOS thread-parallel training: images/s, speedup, accuracy, the model's prediction"),
    "model": ("model", "the performance model against measurement, per layer and per iteration"),
    "halo": ("halo", "halo exchange in training, with and without overlap"),
    "scaling": ("scaling", "strong and weak scaling over ranks, measured beside the model's prediction"),
    "project": ("project", "predicted strong and weak scaling on a machine profile (perfmodel only)"),
    "step": ("step", "whole training steps of the zoo models against PyTorch CPU, per-layer breakdown"),
}


def load(name):
    """The module of benchmark `name`."""
    return importlib.import_module(f"hpcnn.bench.{BENCHMARKS[name][0]}")
