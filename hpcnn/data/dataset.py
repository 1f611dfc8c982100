"""The dataset protocol: global sample shapes, a task, and reads of any samples' spatial block."""
import numpy as np

__all__ = ["Dataset", "TASKS", "DataError", "block_slices", "epoch_order"]

# classify: one integer label per sample; segment: one integer label per pixel (voxel);
# regress: a float vector of `num_outputs` targets per sample.
TASKS = ("classify", "segment", "regress")


class DataError(ValueError):
    """A dataset or data file that cannot be used (missing, truncated, wrongly shaped); names the path."""


def block_slices(spatial, shape):
    """`spatial` as a tuple of concrete slices over the spatial `shape` (None: the whole extent).

    Each slice must have step 1 and lie inside the sample; a block is never clipped silently.
    """
    if spatial is None:
        return tuple(slice(0, n) for n in shape)
    spatial = tuple(spatial)
    if len(spatial) != len(shape):
        raise ValueError(f"a block of a sample of spatial shape {tuple(shape)} needs {len(shape)} slices, "
                         f"received {len(spatial)}")
    out = []
    for s, n in zip(spatial, shape):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"block slices must be slices with step 1, received {s!r}")
        lo = 0 if s.start is None else s.start
        hi = n if s.stop is None else s.stop
        if not 0 <= lo <= hi <= n:
            raise ValueError(f"block {lo}:{hi} lies outside a sample extent of {n}")
        out.append(slice(lo, hi))
    return tuple(out)


class Dataset:
    """A list of samples of one shape, each readable block by block.

    Subclasses set `task` (one of TASKS), `num_classes` (classes, or outputs for "regress"),
    `sample_shape` = (C, *S) and `length`, and implement `_inputs(index, spatial)` and
    `_labels(index, spatial)` for one sample. Inputs are float32; labels are int64 (classify:
    scalar; segment: the block of the label map) or float32 of shape (num_outputs,) (regress).
    """

    task = "classify"
    num_classes = 0
    sample_shape = ()
    length = 0
    name = "dataset"

    def __len__(self):
        return self.length

    @property
    def spatial_shape(self):
        return tuple(self.sample_shape[1:])

    @property
    def in_channels(self):
        return self.sample_shape[0]

    def label_shape(self, spatial=None):
        """The shape of one sample's label (block)."""
        if self.task == "segment":
            return tuple(s.stop - s.start for s in block_slices(spatial, self.spatial_shape))
        if self.task == "regress":
            return (self.num_classes,)
        return ()

    def _check_indices(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.length):
            raise IndexError(f"{self.name}: sample index out of range [0, {self.length}): {idx.min()}..{idx.max()}")
        return idx

    def inputs(self, indices, spatial=None):
        """x: (len(indices), C, *block) float32, the given samples' spatial block."""
        idx = self._check_indices(indices)
        sl = block_slices(spatial, self.spatial_shape)
        out = np.empty((idx.size, self.sample_shape[0]) + tuple(s.stop - s.start for s in sl), np.float32)
        for k, i in enumerate(idx):
            out[k] = self._inputs(int(i), sl)
        return out

    def labels(self, indices, spatial=None):
        """y: (n,) int64, (n, *block) int64 or (n, num_outputs) float32, as the task says."""
        idx = self._check_indices(indices)
        sl = block_slices(spatial, self.spatial_shape)
        dtype = np.float32 if self.task == "regress" else np.int64
        out = np.empty((idx.size,) + self.label_shape(sl), dtype)
        for k, i in enumerate(idx):
            out[k] = self._labels(int(i), sl)
        return out

    def read(self, indices, spatial=None):
        """(x, y) for the given samples, inputs and (per-pixel) labels cut to the same block."""
        return self.inputs(indices, spatial), self.labels(indices, spatial)

    def describe(self):
        shape = "x".join(str(s) for s in self.spatial_shape)
        return (f"{self.name}: {self.length} samples of {self.in_channels} channel(s) at {shape}, "
                f"task {self.task} ({self.num_classes} {'outputs' if self.task == 'regress' else 'classes'})")

    # --- to be provided by datasets -------------------------------------------------------
    def _inputs(self, index, spatial):
        raise NotImplementedError

    def _labels(self, index, spatial):
        raise NotImplementedError


def epoch_order(n, epoch, seed=0):
    """The sample order of one epoch: a permutation of range(n) drawn from (seed, epoch) alone.

    Every rank and every engine (spatial trainer, CHAOS) draws the same order, which is what makes
    a run reproducible on any grid and a resumed run continue exactly.
    """
    return np.random.default_rng([int(seed), int(epoch), 0xDA7A]).permutation(int(n))
