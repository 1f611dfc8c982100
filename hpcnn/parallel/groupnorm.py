"""Distributed group normalization: a group's statistics over the ranks that hold the other spatial blocks of its
samples (the spatial group), merged exactly; samples on other ranks are independent."""
import math

import numpy as np

from .. import kernels
from ..backend import array_module
from .module import DistModule

__all__ = ["DistGroupNorm"]


class DistGroupNorm(DistModule):
    """GroupNorm on (N, C, *S) blocks. Forward: one allgather over the spatial group of each rank's element count,
    (N, G) sums and centered sums of squares, merged as in `hpcnn.parallel.norm.DistBatchNorm._statistics`;
    backward: one allreduce of the two (N, G) sums. Every rank of the group joins, an empty block too."""

    def _forward(self, t):
        layer = self.layer
        x = t.local
        layer.check(x)
        group = self.d.spatial_comm
        xp = array_module(x)
        n, g = x.shape[0], layer.num_groups
        count, sums, m2 = kernels.group_moments(x, g)
        if group.size > 1:
            mine = xp.concatenate([xp.full(1, float(count)), sums.reshape(-1), m2.reshape(-1)])
            every = xp.empty(group.size * mine.size)
            group.allgatherv(mine, every, [mine.size] * group.size)
            every = every.reshape(group.size, mine.size)
            counts = every[:, :1].reshape(group.size, 1, 1)
            all_sums = every[:, 1:1 + n * g].reshape(group.size, n, g)
            all_m2 = every[:, 1 + n * g:].reshape(group.size, n, g)
            total = layer.num_channels // g * math.prod(t.global_shape[2:])
            sums = all_sums.sum(axis=0)
            mean = sums / max(total, 1)
            local_means = all_sums / xp.maximum(counts, 1.0)
            m2 = all_m2.sum(axis=0) + (counts * (local_means - mean) ** 2).sum(axis=0)
            count = total
        if not x.size:
            layer.x, layer.count = x, count
            layer.mean = layer.invstd = xp.zeros((n, g), x.dtype)
            return t.like(xp.zeros_like(x))
        return t.like(layer.normalize(x, count, sums, m2))

    def _backward(self, gt):
        layer = self.layer
        dy = gt.local
        xp = array_module(dy)
        n, g = dy.shape[0], layer.num_groups
        if dy.size:
            sum_g, sum_g_xhat = layer.backward_sums(dy)
        else:
            sum_g = sum_g_xhat = xp.zeros((n, g), np.float64)
            if layer.affine:
                layer.grads["weight"][...] = 0
                layer.grads["bias"][...] = 0
        group = self.d.spatial_comm
        if group.size > 1:
            sums = xp.concatenate([sum_g.reshape(-1), sum_g_xhat.reshape(-1)])
            group.allreduce_(sums)
            sum_g, sum_g_xhat = sums[:n * g].reshape(n, g), sums[n * g:].reshape(n, g)
        if not dy.size:
            return gt.like(xp.zeros_like(dy))
        return gt.like(layer.backward_apply(dy, sum_g, sum_g_xhat))

