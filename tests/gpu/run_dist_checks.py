"""The distributed checks on GPU arrays without pytest: ranks sharing the GPU equal one CPU process.

    mpiexec -n P python tests/gpu/run_dist_checks.py [--device gpu]

Rank 0 prints one line per check and 'N passed, N failed'. The bodies are the MPI tests' own
(`tests.mpi.compare.run_both`, `tests.mpi.jobs.segmentation_job`), on a representative set of layers,
models and grids: the batch split, each spatial axis split, and (at 4 ranks) both at once. Checks
assert collectively, so a failure is reported by every rank; any other error aborts the job.
"""
import io
import os
import shutil
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from hpcnn import models, nn  # noqa: E402
from hpcnn.backend import to_host  # noqa: E402
from hpcnn.train.trainer import Trainer  # noqa: E402
from tests.mpi.collective import CollectiveFailure, assert_close_all  # noqa: E402
from tests.mpi.compare import run_both  # noqa: E402
from tests.mpi.jobs import segmentation_job  # noqa: E402

F64, F32 = np.float64, np.float32


def _x(shape, dtype=F64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _grids(size):
    grids = [(size, 1, 1), (1, size, 1), (1, 1, size)] if size > 1 else [(1, 1, 1)]
    return grids + ([(1, 2, 2), (2, 2, 1)] if size == 4 else [])


def _layer_cases():
    rng = np.random.default_rng(1)
    return {
        "conv2d-k3": (lambda: nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64), (3, 2, 13, 11), F64),
        "conv2d-k5-stride2": (lambda: nn.Conv2d(2, 2, 5, stride=2, rng=rng, dtype=F64), (3, 2, 15, 12), F64),
        "conv2d-dilated": (lambda: nn.Conv2d(2, 2, 3, padding=2, dilation=2, rng=rng, dtype=F64), (2, 2, 12, 9), F64),
        "conv2d-1x1-float32": (lambda: nn.Conv2d(3, 4, 1, rng=rng), (2, 3, 37, 33), F32),
        "conv2d-odd-float32": (lambda: nn.Conv2d(2, 3, 3, padding=1, rng=rng), (2, 2, 37, 53), F32),
        "maxpool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (3, 2, 11, 9), F64),
        "avgpool2d": (lambda: nn.AvgPool2d(2), (3, 2, 10, 9), F64),
        "batchnorm2d": (lambda: nn.BatchNorm2d(3, dtype=F64), (3, 3, 7, 5), F64),
        "upsample": (lambda: nn.Upsample(2), (2, 2, 5, 7), F64),
        "resnet18": (lambda: models.build("resnet18", in_channels=3, num_classes=5, small_input=True, width=4,
                                          dtype=F64), (2, 3, 12, 10), F64),
        "unet2d": (lambda: models.build("unet2d", in_channels=2, num_classes=3, width=4, depth=2, dtype=F64),
                   (2, 2, 12, 20), F64),
    }


def _checks(device, size):
    for grid in _grids(size):
        for name, (make, shape, dtype) in _layer_cases().items():
            steps = 2 if name == "batchnorm2d" else 1
            yield f"{name} grid {'x'.join(map(str, grid))}", \
                lambda make=make, shape=shape, dtype=dtype, grid=grid, steps=steps: run_both(
                    make(), _x(shape, dtype), grid, dtype, device=device, steps=steps)
    grid = (1, size, 1) if size > 1 else (1, 1, 1)
    yield f"trainer (unet2d, 4 steps) grid {'x'.join(map(str, grid))}", lambda: _trainer(device, grid)


def _trainer(device, grid):
    """The trainer on `device` over `grid` follows the single-process CPU run: every parameter after 4 steps."""
    w = MPI.COMM_WORLD
    root = w.bcast(tempfile.mkdtemp(prefix="hpcnn-dist-check-") if w.rank == 0 else None)
    try:
        ref = Trainer(segmentation_job(os.path.join(root, f"cpu{w.rank}")), comm=MPI.COMM_SELF, stream=io.StringIO())
        ref.run()
        job = segmentation_job(os.path.join(root, device), device)
        job["distribution"]["grid"] = list(grid)
        t = Trainer(job, comm=w, stream=io.StringIO())
        t.run()
        got = {n: to_host(p) for n, p, _ in t.model.parameters()}
        for name, p, _ in ref.model.parameters():
            assert_close_all(got[name], p, F32, f"trainer on {device}, grid {grid}: parameter {name}")
    finally:
        w.Barrier()
        if w.rank == 0:
            shutil.rmtree(root, ignore_errors=True)


def main():
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "gpu"
    w = MPI.COMM_WORLD
    if device == "gpu":
        from hpcnn.backend import select_gpu_for_rank
        select_gpu_for_rank()
    passed = failed = 0
    for name, run in _checks(device, w.size):
        try:
            run()
        except CollectiveFailure as e:
            failed += 1
            if w.rank == 0:
                print(f"FAILED {name}: {e}", flush=True)
        except Exception:
            sys.stderr.write(f"[rank {w.rank}] {name} raised; aborting:\n{traceback.format_exc()}")
            sys.stderr.flush()
            w.Abort(1)
        else:
            passed += 1
            if w.rank == 0:
                print(f"ok {name}", flush=True)
    if w.rank == 0:
        print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
