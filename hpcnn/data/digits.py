"""scikit-learn's bundled 8x8 handwritten digits (real scans), optionally upscaled, with a seeded split."""
import numpy as np

from .dataset import Dataset, block_slices

__all__ = ["Digits", "OPTIONS", "open_split"]

# name -> (type, default, rule, meaning); checked by hpcnn.train.config.
OPTIONS = {
    "upscale": (int, 1, "positive", "integer factor of nearest-neighbour upscaling (1: 8x8, 4: 32x32)"),
    "val_fraction": (float, 0.2, "fraction", "share of the 1797 images held out for validation"),
}


def _load(upscale):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # values 0..16 -> [0, 1]
    if upscale > 1:
        x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


class Digits(Dataset):
    """One split of the digits: x (n, 1, 8u, 8u) in [0, 1], y (n,) in 0..9.

    The split is a permutation drawn from `seed`, the same for every rank and run.
    """

    task = "classify"
    num_classes = 10

    def __init__(self, split="train", seed=0, upscale=1, val_fraction=0.2):
        x, y = _load(int(upscale))
        order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(y))
        n_val = int(round(len(y) * float(val_fraction)))
        keep = order[len(y) - n_val:] if split == "val" else order[:len(y) - n_val]
        keep = np.sort(keep)
        self.x, self.y = x[keep], y[keep]
        self.name = f"digits[{split}]"
        self.sample_shape = tuple(self.x.shape[1:])
        self.length = len(self.y)

    def inputs(self, indices, spatial=None):
        idx = self._check_indices(indices)
        if spatial is None:
            return self.x[idx]
        return np.ascontiguousarray(self.x[idx][(slice(None), slice(None)) + block_slices(spatial, self.spatial_shape)])

    def labels(self, indices, spatial=None):
        return self.y[self._check_indices(indices)]

    def arrays(self):
        """(x, y): the whole split in memory (the CHAOS engine's input)."""
        return self.x, self.y


def open_split(split, seed=0, upscale=1, val_fraction=0.2):
    return Digits(split, seed=seed, upscale=upscale, val_fraction=val_fraction)
