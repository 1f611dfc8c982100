"""Distributed batch-norm: BatchNorm2d/3d with statistics over every rank, the spatial group, or the local block.

Batch-norm statistics are taken over `bn_stats` = 'global' (every rank: equal to single-process
batch-norm over the whole batch; the default), 'spatial' (the spatial group: per sample block) or
'local' (this rank's block only). Running statistics follow the same group. The kernels return
float64 partial sums: forward gathers each rank's count, sums and centered sums of squares in one
collective and merges them exactly (`DistBatchNorm._statistics`); backward allreduces its two sums
in one buffer.

On a channel split (a long grid with Pc > 1) each rank normalizes its own channels, so the
statistics need no reduction over C: 'global' is over the ranks with the same (c, f), 'spatial' over
the spatial group. The statistics of every channel are gathered over the C line (2C values) so that
every rank keeps the same running statistics; the affine gradients are the rank's channel slice,
counted on F coordinate 0 only (the F replicas compute the same), and summed over the ranks with the
same (c, f) only (`gradient_slices`, `hpcnn.parallel.reducer`).
"""
import math

import numpy as np

from .. import kernels
from ..backend import array_module
from ..geometry import block_range
from .module import DistModule
from .reducer import GradientSlice

__all__ = ["DistBatchNorm", "BN_STATS"]

BN_STATS = ("global", "spatial", "local")


class DistBatchNorm(DistModule):
    """BatchNorm2d/3d with statistics over the group `context.bn_stats` names (see the module docstring)."""

    def gradient_slices(self):
        """gamma and beta [c-range] of rank (c, 0) on a C x F split (the F replicas compute none)."""
        d, layer = self.d, self.layer
        if d.channels * d.filters == 1 or not layer.affine:
            return {}

        def piece(c, f):
            return (slice(*block_range(layer.num_features, d.channels, c)) if f == 0 else slice(0, 0),)
        s = GradientSlice.channel_filter(d, piece)
        return {"weight": s, "bias": s}

    def _group(self):
        mode = self.context.bn_stats
        if mode == "global":
            return self.d.slice_comm
        if mode == "spatial":
            return self.d.spatial_comm
        return None

    def _count(self, t):
        mode = self.context.bn_stats
        per_sample = math.prod(t.global_shape[2:])
        if mode == "global":
            return t.global_shape[0] * per_sample
        if mode == "spatial":
            return t.local.shape[0] * per_sample
        return t.local.size // t.local.shape[1] if t.local.shape[1] else 0

    def _statistics(self, x, group, count):
        """(mean, biased variance) per channel, float64, over `group` (None: this block) in one collective
        (none when the group is one rank).

        Each rank sends its element count, channel sums and sums of squares about its own mean; the
        merge (Chan et al.'s pairwise update, summed) is M2 = sum M2_i + sum n_i (mean_i - mean)^2,
        as accurate as two passes over the whole group (no sum-of-squares cancellation).
        """
        xp = array_module(x)
        c = x.shape[1]
        n = x.size // c if c else 0
        s = kernels.channel_sum(x) if x.size else xp.zeros(c)
        m2 = kernels.channel_centered_sumsq(x, s / n) if x.size else xp.zeros(c)
        mine = xp.concatenate([xp.full(1, float(n)), s.astype(np.float64), m2.astype(np.float64)])
        if group is None or group.size == 1:
            every = mine[None]
        else:
            every = xp.empty(group.size * mine.size)
            group.allgatherv(mine, every, [mine.size] * group.size)
            every = every.reshape(group.size, mine.size)
        counts, sums, m2s = every[:, :1], every[:, 1:1 + c], every[:, 1 + c:]
        mean = sums.sum(axis=0) / count
        # ranks with an empty block add nothing: their sums are zero and so is their weight
        local_means = sums / xp.maximum(counts, 1.0)
        m2 = m2s.sum(axis=0) + (counts * (local_means - mean) ** 2).sum(axis=0)
        return mean, m2 / count

    def _forward(self, t):
        layer = self.layer
        x = t.local
        c0, c1 = self.d.channel_range(layer.num_features)
        self._channels = (c0, c1)
        if t.global_shape[1] != layer.num_features:
            raise ValueError(f"{layer.describe()}: expects {layer.num_features} channels, received global "
                             f"shape {t.global_shape}")
        layer.check_input(x, ndim=self.d.nd + 2, channels=c1 - c0)
        group = self._group()
        xp = array_module(x)
        if layer.training:
            count = self._count(t)
            if count < 2:
                raise ValueError(f"{layer.describe()}: training needs more than one value per channel, "
                                 f"received global shape {t.global_shape}")
            mean, var = self._statistics(x, group, count)
            full_mean, full_var = self._every_channel(mean, var)
            layer.update_running_stats(full_mean, full_var, count)
        else:
            count = 0
            mean = layer.running_mean[c0:c1].astype(np.float64)
            var = layer.running_var[c0:c1].astype(np.float64)
        invstd = 1.0 / xp.sqrt(var + layer.eps)
        self.x, self.count, self.batch_statistics = x, count, layer.training
        self.mean, self.invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
        gamma, beta = (p[c0:c1] for p in layer._gamma_beta(xp))
        if not x.size:
            return t.like(xp.zeros_like(x))
        return t.like(kernels.batchnorm_apply(x, self.mean, self.invstd, gamma, beta))

    def _every_channel(self, mean, var):
        """(mean, var) of every channel from this rank's channel slice (gathered over the C line)."""
        d, c = self.d, self.layer.num_features
        if d.channels == 1:
            return mean, var
        xp = array_module(mean)
        counts = [b - a for a, b in d.axis_ranges(c, d.channel_axis)]
        every = xp.empty(2 * c)
        d.channel_comm.allgatherv(xp.concatenate([mean, var]).astype(np.float64), every,
                                  [2 * n for n in counts])
        parts, offset = [], 0
        for n in counts:
            parts.append(every[offset:offset + 2 * n].reshape(2, n))
            offset += 2 * n
        both = xp.concatenate(parts, axis=1)
        return both[0], both[1]

    def _backward(self, g):
        layer = self.layer
        dy = g.local
        xp = array_module(dy)
        c0, c1 = self._channels
        c = c1 - c0
        gamma = layer._gamma_beta(xp)[0][c0:c1]
        if dy.size:
            sum_dy, sum_dy_xhat = kernels.batchnorm_backward_reduce(dy, self.x, self.mean, self.invstd)
        else:
            sum_dy, sum_dy_xhat = xp.zeros(c), xp.zeros(c)
        if layer.affine:
            # local partial sums of this rank's channels: the gradient allreduce adds the other ranks' parts
            for key, value in (("weight", sum_dy_xhat), ("bias", sum_dy)):
                grad = layer.grads[key]
                if c != layer.num_features or self.d.filter_coord != 0:
                    grad[...] = 0
                if self.d.filter_coord == 0:
                    grad[c0:c1] = value
        if not self.batch_statistics:
            zeros = xp.zeros(c, dy.dtype)
            return g.like(kernels.batchnorm_apply(dy, zeros, self.invstd, gamma, zeros) if dy.size else dy.copy())
        sums = xp.concatenate([sum_dy.astype(np.float64), sum_dy_xhat.astype(np.float64)])
        group = self._group()
        if group is not None:
            # every rank joins, an empty block too
            group.allreduce_(sums)
        if not dy.size:
            return g.like(xp.zeros_like(dy))
        return g.like(kernels.batchnorm_backward_apply(dy, self.x, self.mean, self.invstd, gamma, sums[:c],
                                                       sums[c:], self.count))
