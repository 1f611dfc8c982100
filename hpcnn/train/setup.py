"""Building a job's parts, the same on every rank: its datasets, its model, and errors agreed over ranks."""
import os

import numpy as np

from .. import data as hdata
from ..nn import models
from . import checkpoint as ckpt
from .config import JobError

__all__ = ["agree", "open_data", "build_model", "model_label", "auto_grid"]


def agree(comm, fn):
    """Run fn() on every rank of Communicator `comm`; if it raises a setup error on any rank, raise it on all.

    Setup errors (a bad field, a missing file on one node) are reported once, by every rank alike,
    instead of leaving the healthy ranks waiting in a collective.
    """
    try:
        result, error = fn(), None
    except (JobError, hdata.DataError, ckpt.CheckpointError) as e:
        result, error = None, e
    if comm.size > 1:
        errors = comm.allgather_object(None if error is None else (type(error).__name__, str(error)))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            rank = errors.index(first)
            raise JobError(first[1] if error is not None or rank == 0 else f"rank {rank}: {first[1]}")
    elif error is not None:
        raise error
    return result


def open_data(job):
    """(train set, val set) of a job's [data] section."""
    d = job["data"]
    if d["dataset"] == "fields3d":
        o = d["options"]
        try:
            hdata.fields3d.check_in_memory(o["size"], o["samples"], o["val_samples"])
        except ValueError as e:
            raise JobError(f"job file {job.path}: data.size: {e}") from None
    try:
        train_set = hdata.open_dataset(d["dataset"], "train", seed=d["seed"], **d["options"])
        val_set = hdata.open_dataset(d["dataset"], "val", seed=d["seed"], **d["options"])
    except hdata.DataError as e:
        raise JobError(f"job file {job.path}: data: {e}") from None
    if val_set.sample_shape != train_set.sample_shape:
        raise JobError(f"job file {job.path}: data: training samples {train_set.sample_shape} and "
                       f"validation samples {val_set.sample_shape} differ in shape")
    return train_set, val_set


def model_label(job):
    """The name of a job's model: the zoo name, or "FILE.py:FUNCTION" of its own network."""
    m = job["model"]
    return m["name"] or _factory(job).label


def _factory(job):
    from ..nn.factory import FactoryError, load_factory
    try:
        return load_factory(job["model"]["factory"], os.path.dirname(os.path.abspath(job.path)))
    except FactoryError as e:
        raise JobError(f"job file {job.path}: model.factory: {e}") from None


def build_model(job, dataset, dtype):
    """The job's model (a zoo model or an own network's factory), with in_channels, num_classes /
    num_outputs and input_size from `dataset`, seed from training.seed."""
    name = job["model"]["name"]
    factory = None if name else _factory(job)
    given = dict(job["model"]["options"])
    known = models.options(name) if name else factory.options()
    derived = {"in_channels": dataset.in_channels, "seed": job["training"]["seed"], "dtype": dtype}
    if dataset.task == "regress":
        derived["num_outputs"] = dataset.num_classes
    else:
        derived["num_classes"] = dataset.num_classes
    if "input_size" in known and len(set(dataset.spatial_shape)) == 1:
        derived["input_size"] = dataset.spatial_shape[0]
    for key, value in derived.items():
        if key not in known and key not in ("seed", "dtype"):
            continue
        if key in given and key not in ("seed",) and given[key] != value:
            what = {"in_channels": "channels", "num_classes": "classes", "num_outputs": "targets",
                    "input_size": "pixels per side"}[key]
            raise JobError(f"job file {job.path}: model.{key} = {given[key]!r}, but dataset "
                           f"{job['data']['dataset']} has {value} {what}")
        if key in known or factory is not None:
            given.setdefault(key, value)
    try:
        if factory is not None:
            return factory.build(**given)
        return models.build(name, **given)
    except (ValueError, TypeError) as e:
        raise JobError(f"job file {job.path}: model: {e}") from None


def auto_grid(ranks, batch, spatial_shape):
    """The grid of `grid = "auto"`: split the batch when every rank gets whole samples of a small image;
    split space (as square as possible, over the last axes) when samples are large (>= 256^2 pixels
    or 64^3 voxels) or the batch is smaller than the ranks."""
    nd = len(spatial_shape)
    pixels = int(np.prod(spatial_shape))
    large = pixels >= (256 * 256 if nd == 2 else 64 ** 3)
    if ranks == 1:
        return (1,) * (nd + 1)
    if not large and batch % ranks == 0:
        return (ranks,) + (1,) * nd
    # split the spatial axes: give factors of `ranks` to the currently least split longest axis
    grid = [1] * nd
    for f in _prime_factors(ranks):
        k = max(range(nd), key=lambda a: (spatial_shape[a] / grid[a], a))
        grid[k] *= f
    return (1,) + tuple(grid)


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return sorted(out, reverse=True)
