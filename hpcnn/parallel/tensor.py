"""DistTensor (a rank's block of a global array) with scatter and gather."""
import numpy as np

from ..backend import array_module

__all__ = ["DistTensor", "scatter", "gather"]


class DistTensor:
    """This rank's block `local` of a global array of `global_shape` under `distribution`.

    local: the block `distribution.local_slices(global_shape)` of the global array (for (N, F)
    tensors, the rows of this rank's samples, identical on every rank of a spatial group).
    """

    __slots__ = ("local", "distribution", "global_shape")

    def __init__(self, local, distribution, global_shape):
        global_shape = tuple(int(s) for s in global_shape)
        expected = distribution.local_shape(global_shape)
        if tuple(local.shape) != expected:
            raise ValueError(f"DistTensor: local block of shape {tuple(local.shape)} does not match the block "
                             f"{expected} of global shape {global_shape} under {distribution}")
        self.local = local
        self.distribution = distribution
        self.global_shape = global_shape

    @property
    def dtype(self):
        return self.local.dtype

    @property
    def ndim(self):
        return len(self.global_shape)

    def like(self, local, global_shape=None):
        """A DistTensor with the same distribution and a new block (and global shape)."""
        return DistTensor(local, self.distribution, self.global_shape if global_shape is None else global_shape)

    def gather(self):
        """The whole array, on every rank."""
        return gather(self)

    def __repr__(self):
        return (f"DistTensor(global_shape={self.global_shape}, local_shape={tuple(self.local.shape)}, "
                f"dtype={self.local.dtype}, {self.distribution})")


def scatter(x, distribution):
    """DistTensor of the global array `x`, which every rank holds; each keeps its own block (a copy).

    x: (N, C, *S), (N, *S) or (N, F), on any device (the block stays on x's device).
    """
    return DistTensor(array_module(x).ascontiguousarray(x[distribution.local_slices(x.shape)]), distribution,
                      x.shape)


def gather(t):
    """The global array of DistTensor `t` on every rank, on its device (one Allgatherv over all ranks)."""
    d = t.distribution
    xp = array_module(t.local)
    shape = t.global_shape
    shapes = [tuple(b - a for a, b in d.ranges_at(shape, d_coords)) for d_coords in _all_coords(d)]
    counts = [int(np.prod(s)) for s in shapes]
    recv = xp.empty(sum(counts), dtype=t.local.dtype)
    d.comm.allgatherv(xp.ascontiguousarray(t.local).reshape(-1), recv, counts)
    out = xp.empty(shape, dtype=t.local.dtype)
    offset = 0
    for coords, s, n in zip(_all_coords(d), shapes, counts):
        out[tuple(slice(a, b) for a, b in d.ranges_at(shape, coords))] = recv[offset:offset + n].reshape(s)
        offset += n
    return out


def _all_coords(d):
    """Grid coordinates of rank 0, 1, ... of the distribution's communicator."""
    return [tuple(int(c) for c in np.unravel_index(r, d.grid)) for r in range(d.size)]
