"""Distributed pointwise layers, global average pooling, flatten and linear layers.

Pointwise layers run on the local block as they are (on a channel split too: each rank's channels).
Global pooling and flatten turn blocks into (N, F) rows replicated over every grid axis but the
sample axis (spatial, C and F); Linear computes on those rows on every replica, and its gradient is summed
over the sample line only.
"""
import math

import numpy as np

from ..backend import array_module
from .module import DistModule
from .reducer import GradientSlice
from .tensor import DistTensor

__all__ = ["DistElementwise", "DistDropout", "DistGlobalAvgPool", "DistFlatten", "DistLinear"]


class DistElementwise(DistModule):
    """ReLU, LeakyReLU and other shape-keeping pointwise layers: the nn layer on the local block."""

    def _forward(self, t):
        return t.like(self.layer.forward(t.local))

    def _backward(self, g):
        return g.like(self.layer.backward(g.local))


class DistDropout(DistModule):
    """Dropout on the local block with the single process's mask for its elements (drawn from their global
    indices), on (N, C, *S) blocks and replicated (N, F) rows alike."""

    def _forward(self, t):
        offsets = tuple(s.start for s in self.d.local_slices(t.global_shape))
        return t.like(self.layer.forward_block(t.local, offsets, t.global_shape))

    def _backward(self, g):
        return g.like(self.layer.backward(g.local))


class DistGlobalAvgPool(DistModule):
    """Mean over the global spatial extent: a local sum and an allreduce over the spatial group (and, on a
    channel split, an allgather of the channels over the C line).

    (N, C, *S) blocks -> (N, C) rows replicated over every axis but the sample axis.
    """

    def _forward(self, t):
        x = t.local
        self.layer.check_input(x, ndim=(4, 5))
        self._in_shape, self._in_global = x.shape, t.global_shape
        self._count = math.prod(t.global_shape[2:])
        s = x.sum(axis=tuple(range(2, x.ndim)), dtype=np.float64)
        self.d.spatial_comm.allreduce_(s)
        y = (s / self._count).astype(x.dtype)
        if self.d.channels > 1:
            y = _gather_channels(self.d, y, t.global_shape[1])
        return DistTensor(y, self.d, t.global_shape[:2])

    def _backward(self, g):
        dy = g.local
        xp = array_module(dy)
        if self.d.channels > 1:
            c0, c1 = self.d.channel_range(self._in_global[1])
            dy = xp.ascontiguousarray(dy[:, c0:c1])
        scaled = (dy / self._count).reshape(dy.shape + (1,) * (len(self._in_shape) - 2))
        return DistTensor(xp.ascontiguousarray(xp.broadcast_to(scaled, self._in_shape)), self.d, self._in_global)


class DistFlatten(DistModule):
    """(N, *rest) -> (N, prod(rest)); spatially split blocks are first gathered over the spatial group."""

    def _forward(self, t):
        x = t.local
        self._in_global, self._in_ndim = t.global_shape, t.ndim
        d = self.d
        out_global = (t.global_shape[0], math.prod(t.global_shape[1:]))
        if t.ndim == 2 or (d.spatial_ranks == 1 and d.channels == 1):
            # whole samples already: a local reshape
            self._in_local_shape = x.shape
            return DistTensor(array_module(x).ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:])), d, out_global)
        whole = self._gather_samples(t)
        return DistTensor(whole.reshape(whole.shape[0], out_global[1]), d, out_global)

    def _gather_samples(self, t):
        """The full samples of this rank's sample block, assembled from the spatial group (and the C line)."""
        d = self.d
        xp = array_module(t.local)
        axes = d.spatial_axes + (() if d.channel_axis is None else (d.channel_axis,))
        group = d.group(axes) if d.channels > 1 else d.spatial_comm
        n0, n1 = d.local_ranges(t.global_shape)[0]
        sample_shape = (n1 - n0,) + t.global_shape[1:]
        boxes = []
        for varying in np.ndindex(*[d.grid[a] for a in axes]):
            coords = list(d.coords)
            for a, c in zip(axes, varying):
                coords[a] = int(c)
            boxes.append(d.ranges_at(t.global_shape, coords)[1:])
        # the group's ranks are ordered by world rank, which is C order over the varying coordinates
        counts = [(n1 - n0) * math.prod(b - a for a, b in box) for box in boxes]
        recv = xp.empty(sum(counts), t.local.dtype)
        group.allgatherv(xp.ascontiguousarray(t.local).reshape(-1), recv, counts)
        out = xp.empty(sample_shape, t.local.dtype)
        offset = 0
        for box, n in zip(boxes, counts):
            shape = (n1 - n0,) + tuple(b - a for a, b in box)
            out[(slice(None),) + tuple(slice(a, b) for a, b in box)] = recv[offset:offset + n].reshape(shape)
            offset += n
        self._boxes_local = tuple(slice(a, b) for a, b in self.d.local_ranges(t.global_shape)[1:])
        self._in_local_shape = None
        return out

    def _backward(self, g):
        dy = g.local
        if self._in_local_shape is not None:
            return DistTensor(dy.reshape(self._in_local_shape), self.d, self._in_global)
        whole = dy.reshape((dy.shape[0],) + self._in_global[1:])
        # every replica holds the whole gradient; each keeps its own block
        return DistTensor(array_module(whole).ascontiguousarray(whole[(slice(None),) + self._boxes_local]), self.d,
                          self._in_global)


def _gather_channels(d, y, channels):
    """(n, C) rows from this rank's (n, channel block) over the C line."""
    xp = array_module(y)
    n = y.shape[0]
    ranges = d.axis_ranges(channels, d.channel_axis)
    counts = [n * (b - a) for a, b in ranges]
    recv = xp.empty(sum(counts), y.dtype)
    d.channel_comm.allgatherv(xp.ascontiguousarray(y).reshape(-1), recv, counts)
    out = xp.empty((n, channels), y.dtype)
    offset = 0
    for (a, b), k in zip(ranges, counts):
        out[:, a:b] = recv[offset:offset + k].reshape(n, b - a)
        offset += k
    return out


class DistLinear(DistModule):
    """Linear on (N, F) rows. Rows are replicated over every axis but the sample axis, so every replica of a
    sample block computes the same weight gradient: it is summed over the sample line only (`gradient_slices`),
    the replicas' allreduces carrying identical inputs to identical sums."""

    def gradient_slices(self):
        """The whole weight and bias, summed over the ranks holding other samples (`Distribution.sample_comm`)."""
        if not self.d.is_replicated(2):
            return {}
        return {name: GradientSlice.whole(p.ndim, self.d.sample_comm) for name, p in self.layer.params.items()}

    def _forward(self, t):
        if t.ndim != 2:
            raise ValueError(f"{self.describe()}: expected an (N, F) tensor, received {t}")
        y = self.layer.forward(t.local)
        return DistTensor(array_module(y).ascontiguousarray(y), self.d, (t.global_shape[0], self.layer.out_features))

    def _backward(self, g):
        dx = self.layer.backward(g.local)
        return DistTensor(array_module(dx).ascontiguousarray(dx), self.d, (g.global_shape[0], self.layer.in_features))
