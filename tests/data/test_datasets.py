"""Bundled and generated datasets: shapes, labels, determinism, blocks equal to cuts of whole samples."""
import numpy as np
import pytest

from hpcnn.data import open_dataset
from hpcnn.data.fields3d import spectral_index


def test_digits_split_is_a_seeded_partition():
    tr = open_dataset("digits", "train", seed=0)
    va = open_dataset("digits", "val", seed=0)
    assert len(tr) + len(va) == 1797 and len(va) == 359
    x, y = tr.read([0, 1, 2])
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64 and tr.task == "classify" and tr.num_classes == 10
    # disjoint and complete: every image appears once
    rows = {r.tobytes() for r in np.concatenate([tr.x, va.x]).reshape(1797, -1)}
    assert len(rows) >= 1790  # the digits hold a handful of duplicate images
    other = open_dataset("digits", "val", seed=1)
    assert not np.array_equal(other.y, va.y)
    up = open_dataset("digits", "train", seed=0, upscale=4)
    assert up.sample_shape == (1, 32, 32)
    assert np.array_equal(up.inputs([5])[0, 0, ::4, ::4], tr.inputs([5])[0, 0])


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_textures_blocks_equal_cuts_of_the_whole(task):
    ds = open_dataset("textures", "train", seed=3, size=96, samples=5, region=32, task=task)
    x, y = ds.read([0, 4])
    assert x.shape == (2, 1, 96, 96) and x.dtype == np.float32
    blk = (slice(13, 60), slice(40, 96))
    xb, yb = ds.read([0, 4], blk)
    assert np.array_equal(xb, x[(slice(None), slice(None)) + blk])
    if task == "segment":
        assert y.shape == (2, 96, 96) and set(np.unique(y)) <= {0, 1, 2}
        assert np.array_equal(yb, y[(slice(None),) + blk])
        assert len(np.unique(y[0])) >= 2  # a mosaic, not one texture
    else:
        assert y.shape == (2,) and np.array_equal(yb, y)
    again = open_dataset("textures", "train", seed=3, size=96, samples=5, region=32, task=task)
    assert np.array_equal(again.read([4])[0], x[1:])  # deterministic from (seed, index)
    other = open_dataset("textures", "train", seed=4, size=96, samples=5, region=32, task=task)
    assert not np.array_equal(other.read([4])[0], x[1:])


def test_textures_regions_carry_their_photograph():
    ds = open_dataset("textures", "val", seed=0, size=128, samples=2, region=48)
    x, y = ds.read([1])
    assert 0.3 < float(np.std(x)) < 3.0  # standardized photographs
    # each class's pixels come from a different photograph: their statistics differ
    means = [float(np.abs(np.diff(x[0, 0], axis=1))[y[0, :, 1:] == k].mean()) for k in np.unique(y)]
    assert len(set(np.round(means, 3))) == len(means)


def test_fields3d_spectrum_follows_the_label():
    ds = open_dataset("fields3d", "train", seed=0, size=24, samples=6)
    x, y = ds.read(range(6))
    assert x.shape == (6, 1, 24, 24, 24) and y.shape == (6, 1) and y.dtype == np.float32
    assert np.all(np.abs(y) <= 1)
    assert np.allclose(x.std(axis=(1, 2, 3, 4)), 1, atol=1e-3)
    # fit the log power spectrum's slope: it must recover -n
    k = np.fft.fftfreq(24)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shells = (kk > 0.05) & (kk < 0.4)
    for i in range(6):
        power = np.abs(np.fft.fftn(x[i, 0].astype(np.float64))) ** 2
        slope = np.polyfit(np.log(kk[shells]), np.log(power[shells]), 1)[0]
        assert abs(-slope - float(spectral_index(y[i, 0]))) < 0.35, (slope, y[i])
    blk = (slice(3, 10), slice(0, 24), slice(20, 24))
    assert np.array_equal(ds.inputs([2], blk), x[2:3, :, 3:10, :, 20:24])


def test_out_of_range_and_bad_blocks():
    ds = open_dataset("textures", "train", seed=0, size=32, samples=2, region=16)
    with pytest.raises(IndexError, match=r"sample index out of range \[0, 2\)"):
        ds.read([2])
    with pytest.raises(ValueError, match="lies outside a sample extent of 32"):
        ds.read([0], (slice(0, 40), slice(0, 8)))
    with pytest.raises(ValueError, match="needs 2 slices"):
        ds.read([0], (slice(0, 4),))
