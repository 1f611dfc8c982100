"""A step's inputs and labels: the whole arrays in one process, or this rank's block of them as DistTensors.

What makes a run on P ranks follow the run on one process, step for step: a step's global batch
is the same B samples whatever the grid, and every rank reads only its block of them (its
samples, its spatial block) straight from the dataset. The block is read on the host and moved to
the rank's device once per step, here (`Device.put`).
"""
import numpy as np

from ..parallel import DistTensor

__all__ = ["Batches"]


class Batches:
    """Reads batches of `task` ("classify", "segment", "regress") samples in `dtype` onto `device`
    (an hpcnn.backend.Device)."""

    def __init__(self, task, dtype, device):
        self.task = task
        self.dtype = np.dtype(dtype)
        self.device = device

    def inputs(self, dataset, idx, d=None):
        """The inputs of samples idx: the whole array, or this rank's block under distribution d as a DistTensor."""
        put = self.device.put
        if d is None:
            return put(dataset.inputs(idx).astype(self.dtype, copy=False))
        shape = (len(idx), dataset.in_channels) + dataset.spatial_shape
        sl = d.local_slices(shape)
        x = dataset.inputs(idx[sl[0]], sl[2:]).astype(self.dtype, copy=False)
        if d.channels > 1:
            # the readers read every channel of a block; a channel split keeps its own
            x = np.ascontiguousarray(x[:, sl[1]])
        return DistTensor(put(x), d, shape)

    def labels(self, dataset, idx, d=None):
        """The labels of samples idx: the whole array, or the block of them that distribution d gives this rank."""
        put = self.device.put
        if d is None:
            return put(self._cast(dataset.labels(idx)))
        shape = (len(idx),) + dataset.label_shape()
        sl = d.local_slices(shape)
        spatial = sl[1:] if self.task == "segment" else None
        y = self._cast(dataset.labels(idx[sl[0]], spatial))
        if self.task == "regress":
            y = np.ascontiguousarray(y[(slice(None),) + sl[1:]])
        return DistTensor(put(y), d, shape)

    def _cast(self, y):
        return y.astype(self.dtype, copy=False) if self.task == "regress" else y
