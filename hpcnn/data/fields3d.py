"""Synthetic 3-D Gaussian random fields with a power-law spectrum; the task regresses the spectral index.

A sample is white noise (drawn from (seed, split, index)) shaped in Fourier space by
|k|^(-n/2), so that its power spectrum is P(k) ~ k^-n, then scaled to zero mean and unit
variance: only the spatial correlations tell n apart, as in CosmoFlow, where a 3-D network
reads cosmological parameters off a simulated matter density. The target is n mapped
linearly from [index_min, index_max] to [-1, 1].

A field is defined by a global FFT, so a block is cut from the whole generated sample, on every
rank (about 32 bytes per voxel while it is built: 0.5 GB at 256^3, 4.3 GB at 512^3). A training
job refuses sizes above `IN_MEMORY_SIZE` (`check_in_memory`), naming the command that writes the
dataset to a file instead (`hpcnn data generate fields3d`, one volume at a time, in one process),
which the ranks then read block by block (data.dataset = "hdf5").
"""
import numpy as np

from .dataset import Dataset

__all__ = ["Fields3D", "OPTIONS", "IN_MEMORY_SIZE", "open_split", "spectral_index", "check_in_memory"]

IN_MEMORY_SIZE = 256    # the largest side a training job generates in memory on every rank

OPTIONS = {
    "size": (int, 32, "positive", "side of the cubic volumes in voxels"),
    "samples": (int, 256, "positive", "number of training volumes"),
    "val_samples": (int, 64, "positive", "number of validation volumes"),
    "index_min": (float, 1.0, None, "smallest spectral index n"),
    "index_max": (float, 4.0, None, "largest spectral index n"),
}


def spectral_index(target, index_min=1.0, index_max=4.0):
    """The spectral index n of a target in [-1, 1] (the inverse of the label map)."""
    return index_min + (np.asarray(target) + 1.0) * 0.5 * (index_max - index_min)


class Fields3D(Dataset):
    """One split: x (n, 1, S, S, S) float32, y (n, 1) float32 in [-1, 1]."""

    task = "regress"
    num_classes = 1

    def __init__(self, split="train", seed=0, size=32, samples=256, val_samples=64, index_min=1.0, index_max=4.0):
        if not index_max > index_min:
            raise ValueError(f"fields3d: index_max ({index_max}) must exceed index_min ({index_min})")
        self.split = split
        self.seed = int(seed)
        self.size = int(size)
        self.index_range = (float(index_min), float(index_max))
        self.length = int(val_samples if split == "val" else samples)
        self.sample_shape = (1, self.size, self.size, self.size)
        self.name = f"fields3d[{split}]"
        k = np.fft.fftfreq(self.size)
        kr = np.fft.rfftfreq(self.size)
        self._k = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
        self._k[0, 0, 0] = 1.0  # the mean is removed below; avoid 0**-n
        self._cache = (None, None)

    def _rng(self, index):
        return np.random.default_rng([self.seed, 1 if self.split == "val" else 0, index, 0xF1E1D])

    def _target(self, index):
        return float(self._rng(index).uniform(-1.0, 1.0))

    def _field(self, index):
        if self._cache[0] == index:
            return self._cache[1]
        rng = self._rng(index)
        t = rng.uniform(-1.0, 1.0)
        n = spectral_index(t, *self.index_range)
        noise = rng.standard_normal((self.size,) * 3)
        spec = np.fft.rfftn(noise) * self._k ** (-n / 2.0)
        spec[0, 0, 0] = 0.0
        field = np.fft.irfftn(spec, s=(self.size,) * 3, axes=(0, 1, 2))
        field = (field / field.std()).astype(np.float32)
        self._cache = (index, field)
        return field

    def _inputs(self, index, spatial):
        return self._field(index)[spatial][None]

    def _labels(self, index, spatial):
        return np.float32(self._target(index))


def check_in_memory(size, samples, val_samples):
    """Refuse (ValueError) a training job whose volumes are too large to build whole on every rank."""
    if size > IN_MEMORY_SIZE:
        gib = 32 * size ** 3 / 2 ** 30
        raise ValueError(
            f"fields3d: size {size} would build every {size}^3 volume whole on every rank (about {gib:.1f} GiB "
            f"each; at most {IN_MEMORY_SIZE} is generated in memory); write the dataset to a file first, "
            f"`hpcnn data generate fields3d --size {size} --samples {samples} --val-samples {val_samples} "
            f"-o fields3d-{size}.h5`, and train from it with data.dataset = \"hdf5\", data.path = "
            f"\"fields3d-{size}.h5\" (each rank then reads only its block)")


def open_split(split, seed=0, **options):
    return Fields3D(split, seed=seed, **options)
