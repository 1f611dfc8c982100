"""Distributed layers: the hpcnn.nn layers run on local blocks, with halos, shuffles and reductions between.

Each distributed layer wraps the nn layer it was built from and shares its parameters, gradients
and running statistics, so `dm.parameters()` is `model.parameters()`. forward/backward take and
return `DistTensor`s. A layer owns a distribution; an input under another distribution is first
shuffled to it (and the gradient shuffled back), which is how a plan changes grids between layers.

Output blocks: every output is block-distributed over its own global shape (see `halo`).
Replicated tensors: (N, F) tensors (after global pooling or flatten) are held whole by every rank
of a spatial group, and so are their gradients; a layer computing on replicated rows (Linear)
counts its parameter gradient on spatial rank 0 only, and a loss on them sums over the sample
group, so nothing is counted twice.

Batch-norm statistics are taken over `bn_stats` = 'global' (every rank: equal to single-process
batch-norm over the whole batch; the default), 'spatial' (the spatial group: per sample block) or
'local' (this rank's block only). Running statistics follow the same group.
"""
import math

import numpy as np

from .. import kernels
from . import comm as _comm
from .halo import HaloExchange, upsample_halo, window_halo, window_input_range
from .shuffle import Shuffle
from .tensor import DistTensor

__all__ = [
    "DistModule", "DistConv", "DistMaxPool", "DistAvgPool", "DistBatchNorm", "DistElementwise",
    "DistUpsample", "DistGlobalAvgPool", "DistFlatten", "DistLinear", "DistSequential", "DistResidual",
    "DistSkipConcat", "DistCrossEntropyLoss", "DistMSELoss", "BN_STATS",
]

BN_STATS = ("global", "spatial", "local")


def _is_empty(shape):
    return any(s == 0 for s in shape)


class DistModule:
    """A distributed layer or container. `layer` is the nn module it runs; `d` its distribution."""

    def __init__(self, layer, d, context):
        self.layer = layer
        self.d = d
        self.context = context
        self._arrivals = {}
        self._arrival = None

    # --- grid changes ----------------------------------------------------------------------
    def _arrive(self, t):
        """t under this layer's distribution (shuffled when it arrives under another)."""
        if t.distribution == self.d:
            self._arrival = None
            return t
        key = (t.distribution.grid, t.global_shape)
        if key not in self._arrivals:
            self._arrivals[key] = Shuffle(t.distribution, self.d, t.global_shape)
        self._arrival = self._arrivals[key]
        return self._arrival.forward(t)

    def _leave(self, g):
        """Adjoint of `_arrive` for the gradient of the input."""
        return g if self._arrival is None else self._arrival.backward(g)

    def forward(self, t):
        t = self._arrive(t)
        return self._forward(t)

    def backward(self, g):
        dx = self._backward(g)
        if self.layer.params:
            self.context.ready(self.layer)
        return self._leave(dx)

    def modules(self):
        yield self

    def describe(self):
        return f"{type(self).__name__}[{self.layer.describe()}] on grid {self.d.grid}"


class _WindowLayer(DistModule):
    """Convolution or pooling: halo exchange, then the kernel on the extended block."""

    def __init__(self, layer, d, context):
        super().__init__(layer, d, context)
        self.geometry = layer.geometry
        self._exchanges = {}

    def _exchange(self, spatial):
        if spatial not in self._exchanges:
            self._exchanges[spatial] = HaloExchange(self.d, window_halo(self.d, spatial, self.geometry))
        return self._exchanges[spatial]

    def _input_box(self, out_box, spatial, origin):
        """Slices (relative to an array starting at global rows `origin`) and per-side padding for outputs `out_box`."""
        g = self.geometry
        index, pads = [slice(None), slice(None)], []
        for k, ((o0, o1), size) in enumerate(zip(out_box, spatial)):
            a, b, plo, phi = window_input_range(o0, o1, size, g.kernel[k], g.stride[k], g.dilation[k],
                                                g.padding[k][0])
            index.append(slice(a - origin[k], b - origin[k]))
            pads.append((plo, phi))
        return tuple(index), tuple(pads)

    def _compute(self, x, spatial, out_shape_local, lead, dtype):
        """y over this rank's output block from the extended block (every rank of a line exchanges)."""
        ex = self._exchange(spatial)
        if _is_empty(lead + out_shape_local):
            ex.forward(x)
            return np.zeros(lead + out_shape_local, dtype)
        ext = ex.forward(x)
        index, pads = self._input_box([h.out for h in ex.mine], spatial, [h.need[0] for h in ex.mine])
        return self._kernel(ext[index], pads)

    def _global_out(self, t, channels):
        return t.global_shape[:1] + (channels,) + self.geometry.output_shape(t.global_shape[2:])


class DistConv(_WindowLayer):
    """Conv2d/Conv3d on (N, C, *S) blocks: any stride, dilation, kernel and per-side padding.

    When one spatial dimension is split and every block of the line reads all of its own rows,
    the convolution uses its linearity instead of an extended block: the owned block is convolved
    with the halo rows counted as zero padding while the halos travel, then the thin halo rows add
    their part to the few output rows they reach. Backward likewise: the data gradient of the
    owned rows comes straight from the kernel, the halo rows' part goes back to their owners as
    thin pieces, and the filter gradient is the owned block's plus the halo pieces'. No copy of
    the owned block is made, and no activation-sized buffer is added. Otherwise (several split
    dimensions, trimmed rows, empty blocks) the extended block is assembled and used.
    """

    def _kernel(self, x, pads):
        g = self.geometry
        return kernels.conv_forward(x, self.layer.params["weight"], self.layer.params.get("bias"), g.stride,
                                    pads, g.dilation)

    def _rows_dim(self, ex, batch):
        """The split dimension when the halo-row decomposition applies on the whole line, else None."""
        if len(ex.comm_dims) != 1 or batch == 0:
            return None
        k = ex.comm_dims[0]
        for h in ex.halo[k]:
            if h.own[1] <= h.own[0] or h.need[0] > h.own[0] or h.need[1] < h.own[1]:
                return None
        return k

    def _row_pads(self, k, o_lo, o_hi, r0, r1):
        """Padding along dim k that makes rows [r0, r1) the only input of outputs [o_lo, o_hi)."""
        g = self.geometry
        ra, rb, plo, phi = window_input_range(o_lo, o_hi, self._spatial[k], g.kernel[k], g.stride[k],
                                              g.dilation[k], g.padding[k][0])
        return plo + r0 - ra, phi + rb - r1

    def _halo_pieces(self, k, h):
        """[(o_lo, o_hi, r0, r1)]: halo rows [r0, r1) on each side and the outputs whose windows reach them."""
        g = self.geometry
        s, p, span = g.stride[k], g.padding[k][0], g.dilation[k] * (g.kernel[k] - 1) + 1
        (i0, i1), (a, b), (o0, o1) = h.own, h.need, h.out
        pieces = []
        if a < i0:
            o_hi = min(o1, max(o0, -(-(i0 + p) // s)))
            if o_hi > o0:
                rb = window_input_range(o0, o_hi, self._spatial[k], g.kernel[k], s, g.dilation[k], p)[1]
                if min(i0, rb) > a:
                    pieces.append((o0, o_hi, a, min(i0, rb)))
        if b > i1:
            o_lo = max(o0, min(o1, (i1 + p - span) // s + 1))
            if o1 > o_lo:
                ra = window_input_range(o_lo, o1, self._spatial[k], g.kernel[k], s, g.dilation[k], p)[0]
                if b > max(i1, ra):
                    pieces.append((o_lo, o1, max(i1, ra), b))
        return pieces

    @staticmethod
    def _rows_index(ndim, k, lo, hi):
        index = [slice(None)] * ndim
        index[2 + k] = slice(lo, hi)
        return tuple(index)

    def _forward_rows(self, x, ex, k):
        geo, w = self.geometry, self.layer.params["weight"]
        h = ex.mine[k]
        overlap = self.context.overlap
        ex.start(x)
        if not overlap:
            ex.wait_halo()
        pads = list(ex.pads)
        pads[k] = self._row_pads(k, h.out[0], h.out[1], h.own[0], h.own[1])
        y = self._kernel(ex.trimmed(x), tuple(pads))
        if overlap:
            ex.wait_halo()
        for o_lo, o_hi, r0, r1 in self._halo_pieces(k, h):
            pads[k] = self._row_pads(k, o_lo, o_hi, r0, r1)
            part = kernels.conv_forward(ex.rows(r0, r1), w, None, geo.stride, tuple(pads), geo.dilation)
            y[self._rows_index(y.ndim, k, o_lo - h.out[0], o_hi - h.out[0])] += part
        return y

    def _backward_rows(self, dy, ex, k):
        geo, layer = self.geometry, self.layer
        w = layer.params["weight"]
        h = ex.mine[k]
        overlap = self.context.overlap
        xt = ex.trimmed(self.x)
        pads_own = list(ex.pads)
        pads_own[k] = self._row_pads(k, h.out[0], h.out[1], h.own[0], h.own[1])
        pads_own = tuple(pads_own)
        # the input's halo travels again (for the filter gradient) while the data gradients are computed
        ex.start(self.x)
        pieces = []
        for o_lo, o_hi, r0, r1 in self._halo_pieces(k, h):
            pads = list(ex.pads)
            pads[k] = self._row_pads(k, o_lo, o_hi, r0, r1)
            dy_part = np.ascontiguousarray(dy[self._rows_index(dy.ndim, k, o_lo - h.out[0], o_hi - h.out[0])])
            spatial = list(xt.shape[2:])
            spatial[k] = r1 - r0
            dx_part = kernels.conv_backward_data(dy_part, w, tuple(spatial), geo.stride, tuple(pads), geo.dilation)
            pieces.append((r0, r1, tuple(pads), dy_part, dx_part))
        if overlap:
            # the halo rows' data gradient travels to its owners while the owned block's is computed
            ex.reverse_pieces_start([(r0, dx_part) for r0, _, _, _, dx_part in pieces], xt.shape[:2], dy.dtype)
        dx_own = kernels.conv_backward_data(dy, w, xt.shape[2:], geo.stride, pads_own, geo.dilation)
        ex.wait_halo()
        dw = kernels.conv_backward_filter(xt, dy, geo.kernel, geo.stride, pads_own, geo.dilation)
        for r0, r1, pads, dy_part, _ in pieces:
            dw += kernels.conv_backward_filter(ex.rows(r0, r1), dy_part, geo.kernel, geo.stride, pads, geo.dilation)
        layer.grads["weight"][...] = dw
        if "bias" in layer.params:
            layer.grads["bias"][...] = kernels.conv_backward_bias(dy)
        if not overlap:
            ex.reverse_pieces_start([(r0, dx_part) for r0, _, _, _, dx_part in pieces], xt.shape[:2], dy.dtype)
        return ex.reverse_pieces_finish(dx_own)

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=self.d.nd + 2, channels=self.layer.in_channels)
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, self.layer.out_channels)
        ex = self._exchange(self._spatial)
        self._rows_k = self._rows_dim(ex, t.local.shape[0])
        if self._rows_k is not None:
            y = self._forward_rows(t.local, ex, self._rows_k)
        else:
            y = self._compute(t.local, self._spatial, self.d.local_shape(out_global)[2:], t.local.shape[:1] +
                              (self.layer.out_channels,), t.local.dtype)
        # the owned block only: the halo is fetched again in backward rather than kept
        self.x = t.local
        self._in_global = t.global_shape
        return DistTensor(y, self.d, out_global)

    def _backward(self, g):
        geo, layer = self.geometry, self.layer
        ex = self._exchange(self._spatial)
        dy = g.local
        if self._rows_k is not None:
            return DistTensor(self._backward_rows(dy, ex, self._rows_k), self.d, self._in_global)
        w = layer.params["weight"]
        compute = not _is_empty(dy.shape)
        ext = ex.forward(self.x)
        pads = ex.pads
        if compute:
            dx_ext = kernels.conv_backward_data(dy, w, ex.need_shape, geo.stride, pads, geo.dilation)
            layer.grads["weight"][...] = kernels.conv_backward_filter(ext, dy, geo.kernel, geo.stride, pads,
                                                                      geo.dilation)
        else:
            dx_ext = np.zeros(self.x.shape[:2] + ex.need_shape, dy.dtype)
            layer.grads["weight"][...] = 0
        if "bias" in layer.params:
            layer.grads["bias"][...] = kernels.conv_backward_bias(dy) if compute else 0
        del ext  # before the adjoint allocates dx: one activation less at the peak
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistMaxPool(_WindowLayer):
    """MaxPool2d/3d: windows that cross blocks read the halo; padding is -inf at the global edges only."""

    def _kernel(self, x, pads):
        g = self.geometry
        y, self.argmax = kernels.maxpool_forward(x, g.kernel, g.stride, pads)
        return y

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=self.d.nd + 2)
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, t.global_shape[1])
        ex = self._exchange(self._spatial)
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        if _is_empty(out_local):
            self.argmax = None
            return DistTensor(np.zeros(out_local, t.local.dtype), self.d, out_global)
        return DistTensor(self._kernel(ext, ex.pads), self.d, out_global)

    def _backward(self, g):
        ex = self._exchange(self._spatial)
        if self.argmax is None:
            dx_ext = np.zeros(self._in_shape[:2] + ex.need_shape, g.local.dtype)
        else:
            dx_ext = kernels.maxpool_backward(g.local, self.argmax, ex.need_shape)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistAvgPool(_WindowLayer):
    """AvgPool2d/3d with count_include_pad=True: the divisor is the full window everywhere."""

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=self.d.nd + 2)
        g = self.geometry
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, t.global_shape[1])
        ex = self._exchange(self._spatial)
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        self._empty = _is_empty(out_local)
        if self._empty:
            return DistTensor(np.zeros(out_local, t.local.dtype), self.d, out_global)
        return DistTensor(kernels.avgpool_forward(ext, g.kernel, g.stride, ex.pads), self.d, out_global)

    def _backward(self, gt):
        g = self.geometry
        ex = self._exchange(self._spatial)
        if self._empty:
            dx_ext = np.zeros(self._in_shape[:2] + ex.need_shape, gt.local.dtype)
        else:
            dx_ext = kernels.avgpool_backward(gt.local, ex.need_shape, g.kernel, g.stride, ex.pads)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistBatchNorm(DistModule):
    """BatchNorm2d/3d with statistics over the group `context.bn_stats` names (see the module docstring)."""

    def _group(self):
        mode = self.context.bn_stats
        if mode == "global":
            return self.d.comm
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

    def _forward(self, t):
        layer = self.layer
        x = t.local
        layer.check_input(x, ndim=self.d.nd + 2, channels=layer.num_features)
        group = self._group()
        if layer.training:
            count = self._count(t)
            if count < 2:
                raise ValueError(f"{layer.describe()}: training needs more than one value per channel, "
                                 f"received global shape {t.global_shape}")
            s = kernels.channel_sum(x) if x.size else np.zeros(layer.num_features)
            if group is not None:
                _comm.allreduce_(group, s)
            mean = s / count
            ss = kernels.channel_centered_sumsq(x, mean) if x.size else np.zeros(layer.num_features)
            if group is not None:
                _comm.allreduce_(group, ss)
            var = ss / count
            layer.update_running_stats(mean, var, count)
        else:
            count = 0
            mean = layer.running_mean.astype(np.float64)
            var = layer.running_var.astype(np.float64)
        invstd = 1.0 / np.sqrt(var + layer.eps)
        self.x, self.count, self.batch_statistics = x, count, layer.training
        self.mean, self.invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
        gamma, beta = layer._gamma_beta(np)
        if not x.size:
            return t.like(np.zeros_like(x))
        return t.like(kernels.batchnorm_apply(x, self.mean, self.invstd, gamma, beta))

    def _backward(self, g):
        layer = self.layer
        dy = g.local
        gamma, _ = layer._gamma_beta(np)
        if dy.size:
            sum_dy, sum_dy_xhat = kernels.batchnorm_backward_reduce(dy, self.x, self.mean, self.invstd)
        else:
            sum_dy, sum_dy_xhat = np.zeros(layer.num_features), np.zeros(layer.num_features)
        if layer.affine:
            # local partial sums: the gradient allreduce adds the other ranks' parts
            layer.grads["weight"][...] = sum_dy_xhat
            layer.grads["bias"][...] = sum_dy
        if not self.batch_statistics:
            zeros = np.zeros(layer.num_features, dy.dtype)
            return g.like(kernels.batchnorm_apply(dy, zeros, self.invstd, gamma, zeros) if dy.size else dy.copy())
        sums = np.concatenate([np.asarray(sum_dy, np.float64), np.asarray(sum_dy_xhat, np.float64)])
        group = self._group()
        if group is not None:
            # every rank joins, an empty block too
            _comm.allreduce_(group, sums)
        if not dy.size:
            return g.like(np.zeros_like(dy))
        c = layer.num_features
        return g.like(kernels.batchnorm_backward_apply(dy, self.x, self.mean, self.invstd, gamma, sums[:c],
                                                       sums[c:], self.count))


class DistElementwise(DistModule):
    """ReLU, LeakyReLU and other shape-keeping pointwise layers: the nn layer on the local block."""

    def _forward(self, t):
        return t.like(self.layer.forward(t.local))

    def _backward(self, g):
        return g.like(self.layer.backward(g.local))


class DistUpsample(DistModule):
    """Nearest upsampling: each output block reads the input rows under it (a halo of at most one row)."""

    def _scale(self, nd):
        s = self.layer.scale_factor
        return (s,) * nd if isinstance(s, int) else tuple(s)

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=(4, 5))
        nd = self.d.nd
        scale = self._scale(nd)
        spatial = t.global_shape[2:]
        key = (spatial, scale)
        if not hasattr(self, "_exchanges"):
            self._exchanges = {}
        if key not in self._exchanges:
            self._exchanges[key] = HaloExchange(self.d, upsample_halo(self.d, spatial, scale))
        self.ex = ex = self._exchanges[key]
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_global = t.global_shape[:2] + tuple(s * f for s, f in zip(spatial, scale))
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        if _is_empty(out_local):
            return DistTensor(np.zeros(out_local, t.local.dtype), self.d, out_global)
        y = kernels.upsample_nearest_forward(np.ascontiguousarray(ext), scale)
        index = (slice(None), slice(None)) + tuple(slice(h.out[0] - h.need[0] * f, h.out[1] - h.need[0] * f)
                                                   for h, f in zip(ex.mine, scale))
        return DistTensor(np.ascontiguousarray(y[index]), self.d, out_global)

    def _backward(self, g):
        ex = self.ex
        scale = self._scale(self.d.nd)
        if _is_empty(g.local.shape):
            dx_ext = np.zeros(self._in_shape[:2] + ex.need_shape, g.local.dtype)
        else:
            # place dy in the scale-aligned frame of the extended block, then sum each scale block
            full = np.zeros(g.local.shape[:2] + tuple(n * f for n, f in zip(ex.need_shape, scale)), g.local.dtype)
            index = (slice(None), slice(None)) + tuple(slice(h.out[0] - h.need[0] * f, h.out[1] - h.need[0] * f)
                                                       for h, f in zip(ex.mine, scale))
            full[index] = g.local
            dx_ext = kernels.upsample_nearest_backward(full, scale)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistGlobalAvgPool(DistModule):
    """Mean over the global spatial extent: a local sum and an allreduce over the spatial group.

    (N, C, *S) blocks -> (N, C) rows replicated over the spatial group.
    """

    def _forward(self, t):
        x = t.local
        self.layer.check_input(x, ndim=(4, 5))
        self._in_shape, self._in_global = x.shape, t.global_shape
        self._count = math.prod(t.global_shape[2:])
        s = x.sum(axis=tuple(range(2, x.ndim)), dtype=np.float64)
        _comm.allreduce_(self.d.spatial_comm, s)
        return DistTensor((s / self._count).astype(x.dtype), self.d, t.global_shape[:2])

    def _backward(self, g):
        dy = g.local
        scaled = (dy / self._count).reshape(dy.shape + (1,) * (len(self._in_shape) - 2))
        return DistTensor(np.ascontiguousarray(np.broadcast_to(scaled, self._in_shape)), self.d, self._in_global)


class DistFlatten(DistModule):
    """(N, *rest) -> (N, prod(rest)); spatially split blocks are first gathered over the spatial group."""

    def _forward(self, t):
        x = t.local
        self._in_global, self._in_ndim = t.global_shape, t.ndim
        d = self.d
        out_global = (t.global_shape[0], math.prod(t.global_shape[1:]))
        if t.ndim == 2 or d.spatial_ranks == 1:
            # whole samples already: a local reshape
            self._in_local_shape = x.shape
            return DistTensor(np.ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:])), d, out_global)
        whole = self._gather_samples(t)
        return DistTensor(whole.reshape(whole.shape[0], out_global[1]), d, out_global)

    def _gather_samples(self, t):
        """The full samples of this rank's sample block, assembled from the spatial group."""
        d = self.d
        group = d.spatial_comm
        n0, n1 = d.local_ranges(t.global_shape)[0]
        sample_shape = (n1 - n0,) + t.global_shape[1:]
        boxes = []
        for coords_spatial in np.ndindex(*d.spatial_grid):
            coords = (d.coords[0],) + tuple(int(c) for c in coords_spatial)
            boxes.append(d.ranges_at(t.global_shape, coords)[1:])
        # spatial_comm ranks are ordered by world rank, which is C order over the spatial coordinates
        counts = [(n1 - n0) * math.prod(b - a for a, b in box) for box in boxes]
        recv = np.empty(sum(counts), t.local.dtype)
        _comm.allgatherv(group, np.ascontiguousarray(t.local).reshape(-1), recv, counts)
        out = np.empty(sample_shape, t.local.dtype)
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
        return DistTensor(np.ascontiguousarray(whole[(slice(None),) + self._boxes_local]), self.d, self._in_global)


class DistLinear(DistModule):
    """Linear on (N, F) rows; with replicated rows only spatial rank 0 contributes the weight gradient."""

    def _forward(self, t):
        if t.ndim != 2:
            raise ValueError(f"{self.describe()}: expected an (N, F) tensor, received {t}")
        y = self.layer.forward(t.local)
        return DistTensor(np.ascontiguousarray(y), self.d, (t.global_shape[0], self.layer.out_features))

    def _backward(self, g):
        dx = self.layer.backward(g.local)
        if self.d.is_replicated(2) and self.d.spatial_comm.Get_rank() != 0:
            for key in self.layer.grads:
                self.layer.grads[key][...] = 0
        return DistTensor(np.ascontiguousarray(dx), self.d, (g.global_shape[0], self.layer.in_features))


class _Container(DistModule):
    def modules(self):
        yield self
        for child in self.children:
            yield from child.modules()


class DistSequential(_Container):
    def __init__(self, layer, d, context, children):
        super().__init__(layer, d, context)
        self.children = children

    def forward(self, t):
        for child in self.children:
            t = child.forward(t)
        return t

    def backward(self, g):
        for child in reversed(self.children):
            g = child.backward(g)
        return g


def _match(t, d, cache):
    """t under distribution d (a cached shuffle), and the Shuffle used (None when none was needed)."""
    if t.distribution == d:
        return t, None
    key = (t.distribution.grid, d.grid, t.global_shape)
    if key not in cache:
        cache[key] = Shuffle(t.distribution, d, t.global_shape)
    return cache[key].forward(t), cache[key]


class DistResidual(_Container):
    """body(x) + shortcut(x); the shortcut's output joins the body's distribution."""

    def __init__(self, layer, d, context, body, shortcut):
        super().__init__(layer, d, context)
        self.body, self.shortcut = body, shortcut
        self.children = [body] + ([shortcut] if shortcut is not None else [])
        self._shuffles = {}

    def forward(self, t):
        y = self.body.forward(t)
        s = t if self.shortcut is None else self.shortcut.forward(t)
        if y.global_shape != s.global_shape:
            raise ValueError(f"{self.layer.describe()}: the body gives global shape {y.global_shape} but the "
                             f"shortcut gives {s.global_shape}")
        s, self._moved = _match(s, y.distribution, self._shuffles)
        self._input_d = t.distribution
        return y.like(y.local + s.local)

    def backward(self, g):
        dx = self.body.backward(g)
        ds = g if self._moved is None else self._moved.backward(g)
        if self.shortcut is not None:
            ds = self.shortcut.backward(ds)
        ds, _ = _match(ds, dx.distribution, self._shuffles)
        return dx.like(dx.local + ds.local)


class DistSkipConcat(_Container):
    """concat([x, inner(x)], axis=1) under x's distribution."""

    def __init__(self, layer, d, context, inner):
        super().__init__(layer, d, context)
        self.inner = inner
        self.children = [inner]
        self._shuffles = {}

    def forward(self, t):
        z = self.inner.forward(t)
        if z.global_shape[0] != t.global_shape[0] or z.global_shape[2:] != t.global_shape[2:]:
            raise ValueError(f"{self.layer.describe()}: the inner branch gives global shape {z.global_shape} for "
                             f"input {t.global_shape}; batch and spatial sizes must match")
        z, self._moved = _match(z, t.distribution, self._shuffles)
        self._c = t.global_shape[1]
        out_global = t.global_shape[:1] + (t.global_shape[1] + z.global_shape[1],) + t.global_shape[2:]
        return DistTensor(np.concatenate([t.local, z.local], axis=1), t.distribution, out_global)

    def backward(self, g):
        c = self._c
        dz_global = g.global_shape[:1] + (g.global_shape[1] - c,) + g.global_shape[2:]
        dz = DistTensor(np.ascontiguousarray(g.local[:, c:]), g.distribution, dz_global)
        if self._moved is not None:
            dz = self._moved.backward(dz)
        dx = self.inner.backward(dz)
        dx, _ = _match(dx, g.distribution, self._shuffles)
        return dx.like(dx.local + g.local[:, :c])


class _DistLoss:
    """A loss over DistTensors, normalized as in a single process (sums and counts over all ranks)."""

    def __init__(self, loss, d):
        self.loss = loss
        self.d = d
        self._arrivals = {}

    def _reduce_comm(self, t):
        return self.d.sample_comm if self.d.is_replicated(t.ndim) else self.d.comm

    def _arrive(self, t):
        t, self._moved = _match(t, self.d, self._arrivals)
        return t

    def __call__(self, *args):
        return self.forward(*args)

    def _result(self, t, grad):
        g = t.like(grad)
        return g if self._moved is None else self._moved.backward(g)


class DistCrossEntropyLoss(_DistLoss):
    """Mean cross-entropy over the non-ignored elements of the whole batch.

    forward(logits, labels) -> float (the same on every rank); backward() -> DistTensor dlogits.
    logits: (N, C) with labels (N,), or (N, C, *S) with labels (N, *S), under the same distribution.
    """

    def forward(self, logits, labels):
        logits = self._arrive(logits)
        if labels.distribution != self.d:
            from .shuffle import shuffle
            labels = shuffle(labels, self.d)
        x, lab = logits.local, labels.local
        if x.size:
            loss_sum, dlogits, count = kernels.softmax_cross_entropy(x, lab, self.loss.ignore_index)
        else:
            loss_sum, dlogits, count = 0.0, np.zeros_like(x), 0
        sums = np.array([float(loss_sum), float(count)])
        _comm.allreduce_(self._reduce_comm(logits), sums)
        total = int(round(sums[1]))
        self._logits = logits
        if total == 0:
            dlogits[...] = 0
            self.dlogits = dlogits
            return float("nan")
        dlogits *= dlogits.dtype.type(1.0 / total)
        self.dlogits = dlogits
        return float(sums[0]) / total

    def backward(self):
        return self._result(self._logits, self.dlogits)


class DistMSELoss(_DistLoss):
    """Mean of (pred - target)**2 over every element of the global tensors."""

    def forward(self, pred, target):
        pred = self._arrive(pred)
        if target.distribution != self.d:
            from .shuffle import shuffle
            target = shuffle(target, self.d)
        n = math.prod(pred.global_shape)
        if pred.local.size:
            loss_sum, dpred = kernels.squared_error(pred.local, target.local)
        else:
            loss_sum, dpred = 0.0, np.zeros_like(pred.local)
        s = _comm.allreduce_scalar(self._reduce_comm(pred), float(loss_sum))
        dpred *= dpred.dtype.type(1.0 / n)
        self._pred, self.dpred = pred, dpred
        return s / n

    def backward(self):
        return self._result(self._pred, self.dpred)
