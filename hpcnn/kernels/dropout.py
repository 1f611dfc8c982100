"""Dropout masks that depend on (seed, step, global element index) only, on any device (array-module operations).

An element's keep decision is a counter-based hash (splitmix64) of its flat index in the global tensor
and a key from the seed and the step, so a rank that holds any block of the tensor draws exactly the
mask the single process draws for those elements, whatever the grid.
"""
import numpy as np

__all__ = ["dropout_mask"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix(z):
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _salt(seed, step):
    """A 64-bit salt of (seed, step), computed on the host with Python integers."""
    z = (int(seed) * 0x100000001B3 + int(step) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return np.uint64(((z + 1) * 0x9E3779B97F4A7C15) & _MASK64)


def dropout_mask(xp, shape, offsets, global_shape, seed, step, p, dtype):
    """The mask of a block: (shape) array of dtype, 1 / (1 - p) where an element is kept and 0 where dropped.

    shape: the block's shape; offsets: its first index along every axis of the global tensor `global_shape`.
    Element e is dropped when the top 53 bits of mix(index(e) + salt(seed, step)) as a fraction
    of 2^53 fall below p.
    """
    index = xp.zeros(tuple(shape), np.uint64)
    stride = 1
    for axis in reversed(range(len(shape))):
        along = xp.arange(offsets[axis], offsets[axis] + shape[axis], dtype=np.uint64) * np.uint64(stride)
        index = index + along.reshape((1,) * axis + (shape[axis],) + (1,) * (len(shape) - axis - 1))
        stride *= int(global_shape[axis])
    u = (_mix(index + _salt(seed, step)) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    keep = (u >= p).astype(dtype)
    return keep * dtype.type(1.0 / (1.0 - p)) if p < 1 else keep
