"""Benchmark drivers behind `hpcnn bench NAME`: each module has add_arguments(parser) and run(args)."""
import importlib

__all__ = ["BENCHMARKS", "load"]

# name -> module under hpcnn.bench; a benchmark is listed here once it runs.
BENCHMARKS = {"kernels": "kernels", "chaos": "chaos", "model": "model", "halo": "halo", "scaling": "scaling"}


def load(name):
    return importlib.import_module(f"hpcnn.bench.{BENCHMARKS[name]}")
