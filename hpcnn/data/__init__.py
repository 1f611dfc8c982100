"""Datasets and readers: bundled real data, synthetic generators, HDF5/.npy files read block by block.

Each dataset is registered by name with its options (type, default, rule, meaning: checked by
hpcnn.train.config) and an `open_split(split, seed, **options)` that returns a `Dataset`.
"""
from . import digits, fields3d, files, textures
from .dataset import TASKS, DataError, Dataset, block_slices

__all__ = ["DATASETS", "OPTIONS", "TASKS", "DataError", "Dataset", "block_slices", "open_dataset", "generate"]

# name -> (options schema, opener); the order is the order in help texts.
DATASETS = {
    "digits": (digits.OPTIONS, digits.open_split),
    "textures": (textures.OPTIONS, textures.open_split),
    "fields3d": (fields3d.OPTIONS, fields3d.open_split),
    "hdf5": (files.HDF5_OPTIONS, files.HDF5Dataset),
    "npy": (files.NPY_OPTIONS, files.NpyDataset),
}
OPTIONS = {name: spec[0] for name, spec in DATASETS.items()}


def open_dataset(name, split, seed=0, **options):
    """The `split` ("train" or "val") of dataset `name`, configured by its options."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name][1](split, seed=seed, **options)


def generate(name, out, fmt="hdf5", seed=0, progress=None, **options):
    """Write the train and val splits of a generated dataset to `out` (an .h5 file or a .npy folder)."""
    splits = {s: open_dataset(name, s, seed=seed, **options) for s in ("train", "val")}
    if fmt == "hdf5":
        files.write_hdf5(out, splits, progress=progress)
    elif fmt == "npy":
        files.write_npy(out, splits, progress=progress)
    else:
        raise ValueError(f"unknown format {fmt!r}: expected hdf5 or npy")
    return splits
