"""HDF5 and .npy files: written by `hpcnn data generate`, read block by block (only the block), refused
with their path when missing, truncated or wrongly shaped."""
import os

import numpy as np
import pytest

from hpcnn.data import DataError, generate, open_dataset
from hpcnn.data.files import NpyBlockReader

OPTS = dict(size=40, samples=3, val_samples=2, region=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    h5 = str(root / "tex.h5")
    npy = str(root / "tex-npy")
    generate("textures", h5, fmt="hdf5", seed=2, **OPTS)
    generate("textures", npy, fmt="npy", seed=2, **OPTS)
    return h5, npy


@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_files_hold_the_generated_samples(files, fmt):
    path = files[0] if fmt == "hdf5" else files[1]
    src = open_dataset("textures", "val", seed=2, **OPTS)
    ds = open_dataset(fmt, "val", path=path)
    assert (ds.task, ds.num_classes, ds.sample_shape, len(ds)) == ("segment", 3, (1, 40, 40), 2)
    x, y = ds.read([0, 1])
    xs, ys = src.read([0, 1])
    assert np.array_equal(x, xs) and np.array_equal(y, ys)
    blk = (slice(5, 23), slice(17, 40))
    xb, yb = ds.read([1], blk)
    assert np.array_equal(xb, xs[1:2, :, 5:23, 17:40]) and np.array_equal(yb, ys[1:2, 5:23, 17:40])


class _RecordingDataset:
    """Stands in for an h5py dataset and records the selections read from it."""

    def __init__(self, real):
        self.real, self.keys = real, []
        self.shape, self.dtype = real.shape, real.dtype

    def __getitem__(self, key):
        self.keys.append(key)
        return self.real[key]


def test_hdf5_reads_only_the_hyperslab(files):
    ds = open_dataset("hdf5", "train", path=files[0])
    ds._x = _RecordingDataset(ds._x)
    ds._y = _RecordingDataset(ds._y)
    ds.read([2, 0], (slice(8, 20), slice(30, 40)))
    assert ds._x.keys == [(2, slice(None), slice(8, 20), slice(30, 40)), (0, slice(None), slice(8, 20), slice(30, 40))]
    assert ds._y.keys == [(2, slice(8, 20), slice(30, 40)), (0, slice(8, 20), slice(30, 40))]


def _rchar():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_npy_reads_only_the_block_bytes(tmp_path):
    x = np.arange(3 * 2 * 50 * 60, dtype=np.float32).reshape(3, 2, 50, 60)
    np.save(tmp_path / "a.npy", x)
    r = NpyBlockReader(str(tmp_path / "a.npy"))
    before = None
    if os.path.exists("/proc/self/io"):
        overhead = -(_rchar() - _rchar())  # reading /proc/self/io counts too
        before = _rchar()
    block = r.read(1, (slice(0, 2), slice(10, 30), slice(7, 19)))
    assert np.array_equal(block, x[1, :, 10:30, 7:19])
    expect = 2 * 20 * 12 * 4  # channels x rows x columns x bytes: nothing else
    assert r.bytes_read == expect
    if before is not None:
        assert _rchar() - before - overhead == expect
    # full rows are read as one run per channel
    r.bytes_read = 0
    assert np.array_equal(r.read(2, (slice(1, 2), slice(5, 9), slice(0, 60))), x[2, 1:2, 5:9])
    assert r.bytes_read == 4 * 60 * 4


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=f"data file {tmp_path}/none.h5 does not exist"):
        open_dataset("hdf5", "train", path=str(tmp_path / "none.h5"))
    with pytest.raises(DataError, match=f"data folder {tmp_path}/none does not exist"):
        open_dataset("npy", "train", path=str(tmp_path / "none"))


def test_truncated_files_are_named(files, tmp_path):
    h5, npy = files
    cut = tmp_path / "cut.h5"
    cut.write_bytes(open(h5, "rb").read()[:4000])
    with pytest.raises(DataError, match=f"data file {cut} cannot be read as HDF5"):
        open_dataset("hdf5", "train", path=str(cut))
    folder = tmp_path / "cutnpy"
    folder.mkdir()
    for name in ("train_x.npy", "train_y.npy"):
        data = open(os.path.join(npy, name), "rb").read()
        (folder / name).write_bytes(data[:len(data) - 100] if name == "train_x.npy" else data)
    with pytest.raises(DataError, match=f"data file {folder}/train_x.npy is truncated"):
        open_dataset("npy", "train", path=str(folder))


def test_wrongly_shaped_files_are_named(tmp_path):
    import h5py
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["train/x"] = np.zeros((4, 64), np.float32)
        f["train/y"] = np.zeros(4, np.int64)
    with pytest.raises(DataError, match=rf"data file {path} \(train/x, train/y\): inputs must be laid out "
                                        r"\(N, C, H, W\) or \(N, C, D, H, W\), found shape \(4, 64\)"):
        open_dataset("hdf5", "train", path=str(path))
    with pytest.raises(DataError, match=rf"data file {path} has no dataset 'val/x'"):
        open_dataset("hdf5", "val", path=str(path))
    folder = tmp_path / "mismatch"
    folder.mkdir()
    np.save(folder / "train_x.npy", np.zeros((4, 1, 8, 8), np.float32))
    np.save(folder / "train_y.npy", np.zeros((4, 8, 7), np.int64))
    with pytest.raises(DataError, match=f"data folder {folder}: cannot tell the task"):
        open_dataset("npy", "train", path=str(folder))
    np.save(folder / "train_y.npy", np.zeros(5, np.int64))
    with pytest.raises(DataError, match="4 inputs but 5 labels"):
        open_dataset("npy", "train", path=str(folder))
