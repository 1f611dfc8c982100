"""The trainer on P ranks follows the single-process CPU run on every device: losses, validation scores, parameters;
resume on another grid, another number of ranks and another device."""
import io
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from hpcnn.backend import to_host
from hpcnn.train.config import parse_job
from hpcnn.train.trainer import Trainer
from tests.devices import device_params
from tests.mpi.collective import SIZE, assert_close_all, check_all, grid_id, world
from tests.mpi.jobs import segmentation_job as _segmentation_job

pytestmark = pytest.mark.mpi

F32 = np.float32


def _shared_dir():
    w = world()
    path = tempfile.mkdtemp(prefix="hpcnn-trainer-") if w.Get_rank() == 0 else None
    return w.bcast(path, root=0)


def _classification_job(folder, device="cpu"):
    return parse_job({
        "model": {"name": "lenet"}, "data": {"dataset": "digits"},
        "training": {"steps": 3, "batch": 8, "optimizer": {"lr": 0.1, "momentum": 0.9}, "val_every": 3,
                     "device": device},
        "logging": {"dir": folder, "every": 1},
    }, "classification.toml")


def _run(job, comm, grid=None, resume=None):
    if grid is not None:
        job["distribution"]["grid"] = list(grid)
    t = Trainer(job, comm=comm, resume=resume, stream=io.StringIO())
    t.run()
    return t


def _train_losses(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def _grids(size):
    if size == 1:
        return [(1, 1, 1)]
    # channel and filter splits too (long grids (N, H, W, C, F)): a job's grid in the long notation
    grids = [(size, 1, 1), (1, size, 1), (1, 1, size), (1, 1, 1, size, 1), (1, 1, 1, 1, size)]
    if size == 4:
        grids += [(2, 1, 2), (1, 2, 1, 1, 2)]
    return grids


def _compare(t, ref, where):
    assert_close_all(np.array([h["train_loss"] for h in t.history]),
                     np.array([h["train_loss"] for h in ref.history]), F32, f"{where} losses at validation")
    for key in ref.history[-1]:
        assert_close_all(np.array(t.history[-1][key]), np.array(ref.history[-1][key]), F32, f"{where} {key}")
    got = {n: to_host(p) for n, p, _ in t.model.parameters()}
    for name, p, _ in ref.model.parameters():
        assert_close_all(got[name], p, F32, f"{where} parameter {name}")
    check_all(t.step == ref.step, f"{where}: step {t.step} != {ref.step}")


@pytest.fixture(scope="module")
def root():
    """A folder every rank sees (the same path on every rank), removed after the module."""
    w = world()
    path = _shared_dir()
    yield path
    w.Barrier()
    if w.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def serial(root):
    """The uninterrupted single-process segmentation run, once per rank (on COMM_SELF: no collective)."""
    folder = os.path.join(root, f"serial{world().Get_rank()}")
    return _run(_segmentation_job(folder), MPI.COMM_SELF), folder


@pytest.mark.parametrize("grid", _grids(SIZE), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_segmentation_losses_agree_on_every_grid(root, serial, grid, device):
    w = world()
    ref, ref_folder = serial
    folder = os.path.join(root, f"{device}-" + "x".join(map(str, grid)))
    t = _run(_segmentation_job(folder, device), w, grid)
    _compare(t, ref, f"grid {grid} on {device}")
    # rank 0 writes the metrics file: it compares the curves, every rank learns the verdict
    ok, message = True, ""
    if w.Get_rank() == 0:
        try:
            assert_close_all(np.array(_train_losses(folder)), np.array(_train_losses(ref_folder)), F32,
                             f"grid {grid}: the loss curve", comm=MPI.COMM_SELF)
        except AssertionError as e:
            ok, message = False, str(e)
    check_all(ok, message)


@pytest.mark.parametrize("device", device_params())
def test_classification_agrees_with_a_batch_split(root, device):
    w = world()
    ref = _run(_classification_job(os.path.join(root, f"lenet-serial-{device}{w.Get_rank()}")), MPI.COMM_SELF)
    grid = (w.Get_size(), 1, 1)
    t = _run(_classification_job(os.path.join(root, f"split-{device}"), device), w, grid)
    _compare(t, ref, f"lenet grid {grid} on {device}")


# (written on, resumed on): a checkpoint is host arrays, so it moves between devices as between grids
_DEVICE_PAIRS = [("cpu", "emulated-gpu"), ("emulated-gpu", "cpu"), ("emulated-gpu", "emulated-gpu")]


@pytest.mark.parametrize("first, second", _DEVICE_PAIRS, ids=[f"{a}-to-{b}" for a, b in _DEVICE_PAIRS])
def test_resume_on_another_grid_and_device_equals_an_uninterrupted_run(root, serial, first, second):
    w = world()
    size = w.Get_size()
    ref, _ = serial
    folder = os.path.join(root, f"moved-{first}-{second}")
    first_grid = (1, size, 1)
    second_grid = (size, 1, 1) if size > 1 else (1, 1, 1)
    _run(_segmentation_job(folder, first, steps=2), w, first_grid)
    t = _run(_segmentation_job(folder, second), w, second_grid, resume="latest")
    check_all(t.resumed_from.endswith("step-000000002.npz"), f"resumed from {t.resumed_from}")
    got = {n: to_host(p) for n, p, _ in t.model.parameters()}
    for name, p, _ in ref.model.parameters():
        assert_close_all(got[name], p, F32, f"resumed {first_grid} on {first} -> {second_grid} on {second}: "
                         f"parameter {name}")


@pytest.mark.parametrize("device", device_params())
def test_resume_on_another_number_of_ranks(root, serial, device):
    """Stopped on one rank, continued on all of them (any grid): the same parameters as never stopping."""
    w = world()
    ref, _ = serial
    folder = os.path.join(root, f"grown-{device}")
    if w.Get_rank() == 0:
        _run(_segmentation_job(folder, steps=2), MPI.COMM_SELF)
    w.Barrier()
    grid = (1, 1, w.Get_size())
    t = _run(_segmentation_job(folder, device), w, grid, resume="latest")
    got = {n: to_host(p) for n, p, _ in t.model.parameters()}
    for name, p, _ in ref.model.parameters():
        assert_close_all(got[name], p, F32, f"resumed 1 rank -> grid {grid}: parameter {name}")


def _unet_job(folder, device="cpu"):
    """jobs/unet-gn-textures.toml (an own network with transposed convolutions, GroupNorm and AdamW), shortened:
    only the data and the length differ, and float64, since Adam's step m / sqrt(v) turns float32 rounding in
    near-zero gradients into differences of the order of lr."""
    from hpcnn.train.config import load_job
    return load_job("jobs/unet-gn-textures.toml", [
        "data.size=24", "data.samples=8", "data.val_samples=2", "data.region=8", "training.epochs=0",
        "training.steps=3", "training.val_every=3", "training.dtype='float64'", f"training.device='{device}'", f"logging.dir='{folder}'",
        "logging.progress=false", "checkpoint.every=0"])


@pytest.mark.parametrize("grid", [g for g in _grids(SIZE) if len(g) == 3], ids=grid_id)  # GroupNorm: C = F = 1
@pytest.mark.parametrize("device", device_params())
def test_unet_groupnorm_adamw_job_agrees_on_every_grid(root, grid, device):
    w = world()
    ref = _run(_unet_job(os.path.join(root, f"unet-serial-{device}-{'x'.join(map(str, grid))}{w.Get_rank()}")),
               MPI.COMM_SELF)
    t = _run(_unet_job(os.path.join(root, f"unet-{device}-" + "x".join(map(str, grid))), device), w, grid)
    _compare(t, ref, f"unet-gn grid {grid} on {device}")
