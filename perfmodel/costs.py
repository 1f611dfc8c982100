"""The cost of one layer under one distribution: compute, halo, collectives, gradient allreduce, shuffle, memory.

Everything here is a pure function of global shapes, a grid and a `MachineProfile`. A grid is
(Pn, Ph, Pw) or (Pn, Pd, Ph, Pw) in the order of `hpcnn.dist.Distribution`: ranks in C order,
last entry fastest. Blocks follow `hpcnn.dist.block_range` (the first size % parts blocks get one
more row) and halos follow `hpcnn.dist.window_halo` / `upsample_halo`, which are called here on a
stand-in for a Distribution, so the model and the code agree on every row. Times are the
slowest rank's (the one with the largest block and the most neighbours), since every layer
ends in a synchronization (halo or collective) with the others.

What the layer's time is made of, as the distributed layers do it:
- compute: the kernels on the local block extended by its halo (e.g. conv_forward on the
  extended input; backward = conv_backward_data + conv_backward_filter [+ bias reduction]);
- halo forward: per split dimension in turn, copy the block into the extended buffer, pack,
  one message per neighbour (alpha + bytes * beta), unpack; backward: the adjoint, which sends
  the halo rows of dx back and adds them (zero, add, pack, message, add);
  `overlap.halo` of the profile is the fraction of the messages hidden behind interior compute;
- batch-norm: statistics over every rank: an allreduce of 2C float64 forward and backward;
  global average pooling: an allreduce of (n, C) float64 over the spatial group;
- flatten of a spatially split tensor: an allgather over the spatial group (the (N, F)
  features are replicated there); linear layers compute redundantly on every replica;
- weight gradients: allreduce over all ranks, in buckets, overlapped with backward
  (`iteration_time` below; per layer the un-overlapped time is reported);
- a convolution with exactly one exchanged spatial dimension runs hpcnn.dist.DistConv's halo-row
  path: the owned block's kernels plus, per side with halo rows, one thin piece in each direction
  (conv_forward; conv_backward_data + conv_backward_filter + adding the piece's filter gradient
  into dw), each a full-window kernel call over the output rows the halo reaches;
- every leaf layer call, forward and backward, also costs the profile's per-call term
  (`MachineProfile.layer_call`: fixed + per byte of local input + output + parameters), the work
  of the layer code around its kernels, and, for arrays above the profile's fresh-memory
  threshold, the page faults of its new output (forward) and input gradient (backward);
- a shuffle between two grids: one Alltoallv (each rank sends what it owns and the other
  grid's rank needs), pack and unpack; its adjoint costs the same in backward.
Memory per rank: activations kept for backward (block bytes, extended blocks where halos are
exchanged, max-pool argmax), the largest transient workspace (a layer's output and input
gradients during its backward, plus a convolution's lowered columns, which the kernels bound:
about 2 MiB per call on CPU, HPCNN_GPU_SCRATCH_MB on GPU), parameters + gradients + optimizer
state + the reducer's bucket copy.
"""
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hpcnn.dist.distribution import block_range
from hpcnn.dist.halo import upsample_halo, window_halo

from .layers import Block, LayerSpec

__all__ = [
    "LayerCost", "GridShape", "layer_cost", "block_extra_cost", "shuffle_time", "shuffle_bytes", "shuffle_parts",
    "shuffle_matrix",
    "gradient_allreduce_time", "iteration_time", "candidate_grids", "grid_refusal", "OPTIMIZER_STATE",
    "BUCKET_BYTES",
]

# Optimizer state per parameter, in parameter-sized arrays (SGD with momentum: one buffer).
OPTIMIZER_STATE = 1
# hpcnn.dist.GradientReducer's default bucket size.
BUCKET_BYTES = 1 << 22
_FLOAT64 = 8


@dataclass
class LayerCost:
    """Seconds and bytes per rank for one layer under one grid (the slowest rank)."""
    forward: float = 0.0            # compute
    backward: float = 0.0           # compute
    halo_forward: float = 0.0
    halo_backward: float = 0.0
    collective_forward: float = 0.0
    collective_backward: float = 0.0
    gradient_allreduce: float = 0.0  # un-overlapped, reported per layer
    activation_bytes: float = 0.0   # kept for backward
    workspace_bytes: float = 0.0    # transient, the largest one counts
    param_bytes: float = 0.0        # parameters only
    details: dict = field(default_factory=dict)

    @property
    def communication(self):
        """Halo and collectives of forward and backward (the gradient allreduce is separate)."""
        return self.halo_forward + self.halo_backward + self.collective_forward + self.collective_backward

    @property
    def time(self):
        """Forward + backward + their communication (what the planner minimizes per vertex)."""
        return self.forward + self.backward + self.communication

    def add(self, other):
        for name in ("forward", "backward", "halo_forward", "halo_backward", "collective_forward",
                     "collective_backward", "gradient_allreduce", "activation_bytes", "param_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.workspace_bytes = max(self.workspace_bytes, other.workspace_bytes)
        return self


class GridShape:
    """What `window_halo` and `upsample_halo` need of a Distribution: blocks along a grid axis."""

    def __init__(self, grid):
        self.grid = tuple(grid)

    def axis_ranges(self, size, grid_axis):
        return [block_range(size, self.grid[grid_axis], c) for c in range(self.grid[grid_axis])]


def _ceil_div(a, b):
    return -(-a // b)


@lru_cache(maxsize=65536)
def _window_axis(size, parts, kernel, stride, dilation, pad_lo, pad_hi, upsample=0):
    """Along one dimension split in `parts`: (largest output block, largest extended input,
    largest owned input, the largest halo rows received (sum of both sides), sides)."""
    grid = GridShape((1, parts))
    if upsample:
        axis = upsample_halo(grid, (size,), (upsample,))[0]
    else:
        from hpcnn.kernels.shapes import WindowGeometry
        geom = WindowGeometry(1, kernel, stride, ((pad_lo, pad_hi),), dilation)
        axis = window_halo(grid, (size,), geom)[0]
    out_max = ext_max = own_max = recv_max = 0
    sides = 0
    for h in axis:
        out_max = max(out_max, h.out[1] - h.out[0])
        own_max = max(own_max, h.own[1] - h.own[0])
        ext_max = max(ext_max, h.need[1] - h.need[0])
        lo = max(h.own[0] - h.need[0], 0)
        hi = max(h.need[1] - h.own[1], 0)
        if lo + hi >= recv_max:
            recv_max = lo + hi
            sides = max(sides, (lo > 0) + (hi > 0)) if parts > 1 else 0
    return out_max, ext_max, own_max, (recv_max if parts > 1 else 0), sides


def _axis_crosses_nodes(grid, axis, ranks_per_node):
    """True when some rank's neighbour along grid `axis` lives on another node."""
    if grid[axis] == 1:
        return False
    stride = math.prod(grid[axis + 1:])
    return ranks_per_node % (stride * grid[axis]) != 0


def _busy(machine, ranks):
    return min(ranks, machine.ranks_per_node)


def _window_blocks(spec, grid):
    """Per spatial dim: (out block, extended input, own input, halo rows, sides) for a window or upsample layer."""
    nd = spec.nd
    spatial = spec.in_shape[2:]
    if spec.kind == "upsample":
        return [_window_axis(spatial[k], grid[1 + k], 1, 1, 1, 0, 0, spec.options["scale"][k]) for k in range(nd)]
    g = spec.geometry
    return [_window_axis(spatial[k], grid[1 + k], g.kernel[k], g.stride[k], g.dilation[k], *g.padding[k])
            for k in range(nd)]


def _halo_time(machine, grid, n, c, axes, ranks, backward):
    """Halo exchange of an (n, c, *block) tensor, one split dimension at a time (see module docstring).

    axes: per spatial dim (out, ext, own, rows, sides). Dims exchanged earlier already carry their halo.
    """
    itemsize = machine.itemsize
    extent = [a[2] for a in axes]       # own blocks
    total = 0.0
    busy = _busy(machine, ranks)
    for k, (out, ext, own, rows, sides) in enumerate(axes):
        extent[k] = ext
        if grid[1 + k] == 1 or rows == 0:
            continue   # nothing to exchange along k (a pointwise window): the layer uses its block as it is
        block = n * c * math.prod(extent) * itemsize
        halo = n * c * rows * math.prod(e for j, e in enumerate(extent) if j != k) * itemsize
        inter = _axis_crosses_nodes(grid, 1 + k, machine.ranks_per_node)
        copy = lambda b: machine.kernel_time("copy", busy, nbytes=b) if b > 0 else 0.0
        t = copy(block) + 2 * copy(halo)                       # extended buffer, pack, unpack
        if backward:
            t += copy(block) + copy(halo)                       # zero fill, accumulate received rows
        alpha, beta = machine.link(inter)
        t += (1.0 - machine.overlap["halo"]) * (max(sides, 1) * alpha + halo * beta)
        total += t
    return total


def layer_cost(spec, grid, machine):
    """LayerCost of a LayerSpec under `grid` on `machine` (see the module docstring)."""
    return _layer_cost_cached(spec.signature(), spec, tuple(grid), machine)


_COST_CACHE = {}


def _layer_cost_cached(signature, spec, grid, machine):
    key = (signature, grid, id(machine))
    hit = _COST_CACHE.get(key)
    if hit is None:
        if len(_COST_CACHE) > 200000:
            _COST_CACHE.clear()
        hit = _COST_CACHE[key] = _layer_cost(spec, grid, machine)
    return hit


def _local_numel(shape, grid):
    """Elements of the largest local block of a global (N, C, *S) or (N, F) tensor under `grid`."""
    n = _ceil_div(shape[0], grid[0])
    if len(shape) == 2:
        return n * shape[1]
    return n * shape[1] * math.prod(_ceil_div(s, g) for s, g in zip(shape[2:], grid[1:]))


def _scratch_budget(backend):
    """The most a convolution's lowered columns take at once: hpcnn's kernels work in bounded chunks."""
    if backend == "gpu":
        from hpcnn.backend import GPU_SCRATCH_BYTES
        return GPU_SCRATCH_BYTES
    from hpcnn.kernels.cpu.conv import SCRATCH_BYTES
    return SCRATCH_BYTES


def _layer_cost(spec, grid, machine):
    cost = _kernel_cost(spec, grid, machine)
    in_bytes = _local_numel(spec.in_shape, grid) * machine.itemsize
    out_bytes = _local_numel(spec.out_shape, grid) * machine.itemsize
    # transient while the layer runs backward: the gradients of its output and its input (both live
    # at once), plus the kernels' bounded scratch
    cost.workspace_bytes = min(cost.workspace_bytes, _scratch_budget(machine.backend)) + in_bytes + out_bytes
    nbytes = in_bytes + out_bytes + spec.params * machine.itemsize
    cost.forward += machine.layer_call(spec.kind, "forward", nbytes)
    cost.backward += machine.layer_call(spec.kind, "backward", nbytes)
    # a fresh output in forward and a fresh input gradient in backward (page faults of large arrays)
    cost.forward += machine.fresh_memory_time(out_bytes)
    cost.backward += machine.fresh_memory_time(in_bytes)
    return cost


def _halo_pieces(spec, grid, axes):
    """The thin halo-piece convolutions of hpcnn.dist.DistConv's one-split-dimension path.

    When exactly one spatial dimension exchanges a halo, the owned block is convolved with the halo
    rows taken as zero padding, and each side's halo rows are convolved on their own into the few
    output rows they reach (padded to the full window, so each piece costs a full-window kernel
    call over those output rows). Returns [(in_spatial, out_spatial)] of those pieces (empty on
    the extended-block path: several exchanged dimensions, or none)."""
    exchanged = [k for k, a in enumerate(axes) if grid[1 + k] > 1 and a[3] > 0]
    if len(exchanged) != 1:
        return []
    k = exchanged[0]
    out, ext, own, rows, sides = axes[k]
    stride = spec.geometry.stride[k]
    pieces = []
    for side in range(max(sides, 1)):
        r = rows // max(sides, 1) + (1 if side < rows % max(sides, 1) else 0)
        if r <= 0:
            continue
        in_sp = [a[2] for a in axes]
        out_sp = [a[0] for a in axes]
        in_sp[k] = r
        out_sp[k] = min(out, _ceil_div(r, stride))
        pieces.append((tuple(in_sp), tuple(out_sp)))
    return pieces


def _kernel_cost(spec, grid, machine):
    ranks = math.prod(grid)
    busy = _busy(machine, ranks)
    inter_all = machine.spans_nodes(ranks)
    item = machine.itemsize
    kt = machine.kernel_time
    cost = LayerCost()
    n = _ceil_div(spec.in_shape[0], grid[0])
    cost.param_bytes = spec.params * item
    if spec.params:
        cost.gradient_allreduce = machine.allreduce(spec.params * item, ranks, inter_all)
    kind = spec.kind
    spatial_split = math.prod(grid[1:])

    if len(spec.in_shape) == 2 or kind in ("global_avgpool", "flatten"):
        # (N, F) tensors, or the layers that produce them from a block.
        f_in = spec.in_shape[1]
        if kind == "linear":
            f_out = spec.out_shape[1]
            cost.forward = kt("gemm", busy, m=n, gemm_k=f_in, gemm_n=f_out)
            cost.backward = (kt("gemm", busy, m=n, gemm_k=f_out, gemm_n=f_in)
                             + kt("gemm", busy, m=f_out, gemm_k=n, gemm_n=f_in))
            cost.activation_bytes = n * f_out * item if spec.keeps_output else 0.0
            return cost
        if kind == "global_avgpool":
            block = [_ceil_div(s, g) for s, g in zip(spec.in_shape[2:], grid[1:])]
            c = spec.in_shape[1]
            cost.forward = kt("elementwise", busy, n=n, c=c, in_spatial=block)
            cost.backward = kt("elementwise", busy, n=n, c=c, in_spatial=block)
            if spatial_split > 1:
                cost.collective_forward = machine.allreduce(n * c * _FLOAT64, spatial_split,
                                                            spatial_split > machine.ranks_per_node)
            cost.activation_bytes = n * c * item
            return cost
        if kind == "flatten":
            if len(spec.in_shape) > 2 and spatial_split > 1:
                block = [_ceil_div(s, g) for s, g in zip(spec.in_shape[2:], grid[1:])]
                mine = n * spec.in_shape[1] * math.prod(block) * item
                alpha, beta = machine.link(spatial_split > machine.ranks_per_node)
                # allgather (ring) of the blocks into the replicated (n, F) rows, and the slice back
                cost.collective_forward = ((spatial_split - 1) * (alpha + mine * beta)
                                           + kt("copy", busy, nbytes=mine * spatial_split))
                cost.collective_backward = kt("copy", busy, nbytes=mine)
            cost.activation_bytes = 0
            return cost
        # element-wise layers on (N, F)
        cost.forward = kt("elementwise", busy, n=n, c=f_in)
        cost.backward = kt("elementwise", busy, n=n, c=f_in)
        cost.activation_bytes = n * f_in * item if spec.keeps_output else 0
        return cost

    c_in, c_out = spec.in_shape[1], spec.out_shape[1]
    own_in = [_ceil_div(s, g) for s, g in zip(spec.in_shape[2:], grid[1:])]
    out_block = [_ceil_div(s, g) for s, g in zip(spec.out_shape[2:], grid[1:])]
    out_bytes = n * c_out * math.prod(out_block) * item
    in_bytes = n * c_in * math.prod(own_in) * item
    cost.activation_bytes = out_bytes if spec.keeps_output else 0.0

    if kind in ("conv", "maxpool", "avgpool", "upsample"):
        axes = _window_blocks(spec, grid)
        out_block = [a[0] for a in axes]
        ext = [a[1] for a in axes]
        if any(o < 1 for o in out_block):
            cost.details["empty"] = True
        exchanged = any(grid[1 + k] > 1 and a[3] > 0 for k, a in enumerate(axes))
        cost.halo_forward = _halo_time(machine, grid, n, c_in, axes, ranks, backward=False)
        cost.halo_backward = _halo_time(machine, grid, n, c_in, axes, ranks, backward=True)
        if exchanged:
            cost.activation_bytes += n * c_in * math.prod(ext) * item     # the extended input is kept
        cost.details["halo_bytes"] = n * c_in * item * sum(
            a[3] * math.prod(e for j, e in enumerate(ext) if j != k) for k, a in enumerate(axes) if grid[1 + k] > 1)
        if kind == "conv":
            g = spec.geometry
            shape = dict(n=n, c=c_in, k=c_out, in_spatial=ext, kernel=g.kernel, out_spatial=out_block)
            cost.forward = kt("conv_forward", busy, **shape)
            cost.backward = kt("conv_backward_data", busy, **shape) + kt("conv_backward_filter", busy, **shape)
            w_bytes = c_out * c_in * math.prod(g.kernel) * item
            for p_in, p_out in _halo_pieces(spec, grid, axes):
                piece = dict(n=n, c=c_in, k=c_out, in_spatial=p_in, kernel=g.kernel, out_spatial=p_out)
                cost.forward += kt("conv_forward", busy, **piece)
                # the piece's data gradient, its filter gradient, and adding that into dw
                cost.backward += (kt("conv_backward_data", busy, **piece) + kt("conv_backward_filter", busy, **piece)
                                  + kt("elementwise", busy, n=1, c=1, in_spatial=(w_bytes // item,)))
            if spec.options.get("bias"):
                cost.forward += kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
                cost.backward += kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
            cost.workspace_bytes = float(n * c_in * math.prod(g.kernel) * math.prod(out_block) * item)
        elif kind in ("maxpool", "avgpool"):
            g = spec.geometry
            shape = dict(n=n, c=c_in, in_spatial=ext, kernel=g.kernel, out_spatial=out_block)
            cost.forward = kt("pool_forward", busy, **shape)
            cost.backward = kt("pool_backward", busy, **shape)
            if kind == "maxpool":
                cost.activation_bytes += n * c_out * math.prod(out_block) * 8
        else:
            cost.forward = kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
            cost.backward = kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
        return cost

    if kind == "batchnorm":
        c = c_in
        cost.forward = kt("batchnorm_forward", busy, n=n, c=c, in_spatial=own_in)
        cost.backward = kt("batchnorm_backward", busy, n=n, c=c, in_spatial=own_in)
        # statistics over every rank: (sum, centered sum of squares) forward, (sum_dy, sum_dy_xhat) backward
        cost.collective_forward = 2 * machine.allreduce(c * _FLOAT64, ranks, inter_all)
        cost.collective_backward = machine.allreduce(2 * c * _FLOAT64, ranks, inter_all)
        cost.activation_bytes += in_bytes if spec.keeps_output else 0.0
        return cost

    if kind in ("relu", "leaky_relu"):
        cost.forward = kt("elementwise", busy, n=n, c=c_in, in_spatial=own_in)
        cost.backward = kt("elementwise", busy, n=n, c=c_in, in_spatial=own_in)
        return cost

    raise ValueError(f"layer {spec.name!r}: no cost model for kind {kind!r}")


def block_extra_cost(block, grid, machine):
    """The block's own work beyond its chains: the residual add, or the skip's concatenation."""
    ranks = math.prod(grid)
    busy = _busy(machine, ranks)
    n = _ceil_div(block.in_shape[0], grid[0])
    out_block = [_ceil_div(s, g) for s, g in zip(block.out_shape[2:], grid[1:])]
    c_out = block.out_shape[1]
    cost = LayerCost()
    kt = machine.kernel_time
    if block.kind == "residual":
        cost.forward = kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
        cost.backward = kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
    else:
        nbytes = n * c_out * math.prod(out_block) * machine.itemsize
        cost.forward = kt("copy", busy, nbytes=nbytes)
        cost.backward = kt("copy", busy, nbytes=nbytes) + kt("elementwise", busy, n=n, c=block.in_shape[1],
                                                            in_spatial=out_block)
        cost.activation_bytes = 0.0
    return cost


def _block_index(size, parts, x):
    """The block (of `block_range(size, parts, .)`) that holds row x."""
    base, extra = divmod(size, parts)
    big = extra * (base + 1)
    return x // (base + 1) if x < big else extra + (x - big) // max(base, 1)


@lru_cache(maxsize=65536)
def _axis_meets(size, a, b):
    """Along one axis split in `a` blocks (old) and `b` blocks (new): the most new blocks an old block meets."""
    if a == b:
        return 1
    meets = 1
    for i in range(a):
        lo, hi = block_range(size, a, i)
        if hi > lo:
            meets = max(meets, _block_index(size, b, hi - 1) - _block_index(size, b, lo) + 1)
    return meets


def _split_dims(shape):
    """Tensor axes a grid splits: N and the spatial axes of (N, C, *S); only N of (N, F)."""
    return [0] + list(range(2, len(shape))) if len(shape) > 2 else [0]


def shuffle_parts(shape, src_grids, dst_grids, itemsize):
    """Arrays for moving a tensor of global `shape` from each grid of src_grids to each of dst_grids.

    Returns (sent (S, D) bytes of the busiest rank, partners (S, D), block (S,) bytes of a source
    block). Ranks are in C order in both grids and the part of a rank's old block that its new
    block also covers stays put; the rank at coordinate 0 of both grids (which holds the largest
    blocks under the uneven rule) stands for all. An (N, F) tensor is replicated over the spatial
    group: one replica sends, every replica of the target grid receives.
    """
    dims = _split_dims(shape)
    src = np.asarray(src_grids, dtype=np.int64)[:, :len(dims)]
    dst = np.asarray(dst_grids, dtype=np.int64)[:, :len(dims)]
    old = np.ones(len(src))
    kept = np.ones((len(src), len(dst)))
    partners = np.ones((len(src), len(dst)))
    for axis, dim in enumerate(dims):
        size = shape[dim]
        o = -(-size // src[:, axis])
        nw = -(-size // dst[:, axis])
        old = old * o
        kept = kept * np.minimum(o[:, None], nw[None, :])
        meets = np.array([[_axis_meets(size, int(a), int(b)) for b in dst[:, axis]] for a in src[:, axis]])
        partners = partners * meets
    rest = math.prod(s for i, s in enumerate(shape) if i not in dims)
    same = (np.asarray(src_grids)[:, None, :] == np.asarray(dst_grids)[None, :, :]).all(axis=2)
    sent = (old[:, None] - kept) * rest * itemsize
    if len(shape) == 2:
        replicas = np.prod(np.asarray(dst_grids)[:, 1:], axis=1).astype(float)
        sent = sent * replicas[None, :]
        partners = partners * replicas[None, :]
    sent = np.where(same, 0.0, sent)
    partners = np.where(same, 0, np.maximum(partners - 1, 1))
    return sent, partners, old * rest * itemsize


def shuffle_bytes(shape, src, dst, itemsize):
    """(bytes the busiest rank sends, partners) moving a tensor of global `shape` from grid `src` to `dst`."""
    sent, partners, _ = shuffle_parts(tuple(shape), [tuple(src)], [tuple(dst)], itemsize)
    return float(sent[0, 0]), int(partners[0, 0])


def shuffle_matrix(shape, src_grids, dst_grids, machine):
    """(S, D) seconds of one shuffle (Alltoallv + pack + unpack) from each source grid to each target grid."""
    shape = tuple(shape)
    sent, partners, block = shuffle_parts(shape, src_grids, dst_grids, machine.itemsize)
    ranks = math.prod(src_grids[0])
    busy = _busy(machine, ranks)
    inter = machine.spans_nodes(ranks)
    t = machine.alltoall_array(sent, ranks, inter, partners)
    copy = np.array([machine.kernel_time("copy", busy, nbytes=float(b)) for b in block])
    # pack the send buffer and unpack the receive buffer (about one block each)
    return np.where(sent > 0, t + 2 * copy[:, None], 0.0)


def shuffle_time(shape, src, dst, machine):
    """Seconds of one shuffle of a tensor of global `shape` from grid src to grid dst."""
    src, dst = tuple(src), tuple(dst)
    if src == dst:
        return 0.0
    return float(shuffle_matrix(shape, [src], [dst], machine)[0, 0])


def gradient_allreduce_time(param_bytes_backward_order, ready_times, machine, ranks, backward_end):
    """(exposed seconds, total seconds) of the bucketed gradient allreduce after backward.

    param_bytes_backward_order[i] is layer i's gradient bytes, in the order backward produces them,
    ready at ready_times[i] (seconds since backward began). Buckets of BUCKET_BYTES are reduced in
    order, each starting when its last layer is ready and the previous bucket is done;
    `overlap.gradient_allreduce` of the profile says how much of that pipelining the MPI library
    really achieves (0: every allreduce runs after backward, 1: perfect overlap).
    """
    if ranks <= 1:
        return 0.0, 0.0
    inter = machine.spans_nodes(ranks)
    buckets, nbytes, ready = [], 0.0, 0.0
    for b, t in zip(param_bytes_backward_order, ready_times):
        if b <= 0:
            continue
        if nbytes and nbytes + b > BUCKET_BYTES:
            buckets.append((nbytes, ready))
            nbytes = 0.0
        nbytes += b
        ready = t
    if nbytes:
        buckets.append((nbytes, ready))
    end = 0.0
    total = 0.0
    for size, t_ready in buckets:
        t = machine.allreduce(size, ranks, inter)
        total += t
        end = max(end, t_ready) + t
    pipelined = max(end - backward_end, 0.0)
    f = machine.overlap["gradient_allreduce"]
    return f * pipelined + (1.0 - f) * total, total


def iteration_time(layer_costs, shuffles, machine, ranks):
    """(seconds, parts) of one training iteration from per-layer costs in forward order and the shuffle times.

    layer_costs: [(LayerCost)] of every leaf layer in forward order; shuffles: total seconds of the
    shuffles (forward + backward). The optimizer step is an element-wise pass over the parameters.
    """
    fwd = sum(c.forward + c.halo_forward + c.collective_forward for c in layer_costs)
    bwd_each = [c.backward + c.halo_backward + c.collective_backward for c in reversed(layer_costs)]
    ready, t = [], 0.0
    for b in bwd_each:
        t += b
        ready.append(t)
    grads = [c.param_bytes for c in reversed(layer_costs)]
    exposed, total = gradient_allreduce_time(grads, ready, machine, ranks, t)
    params = sum(c.param_bytes for c in layer_costs) / machine.itemsize
    busy = _busy(machine, ranks)
    step = 3 * machine.kernel_time("elementwise", busy, n=1, c=int(params)) if params else 0.0
    parts = {"forward": fwd, "backward": t, "shuffle": shuffles, "gradient_allreduce": exposed,
             "gradient_allreduce_total": total, "optimizer": step}
    return fwd + t + shuffles + exposed + step, parts


def _factorizations(p, parts):
    if parts == 1:
        yield (p,)
        return
    for d in range(1, p + 1):
        if p % d == 0:
            for rest in _factorizations(p // d, parts - 1):
                yield (d,) + rest


def grid_refusal(spec, grid):
    """None if `spec` can run under `grid`, else the reason (a block smaller than its halo, or empty)."""
    if isinstance(spec, Block):
        for node in spec.body + (spec.shortcut or []):
            why = grid_refusal(node, grid)
            if why:
                return why
        return None
    n = spec.in_shape[0]
    if grid[0] > n:
        return f"{grid[0]} sample blocks for a batch of {n}"
    if len(spec.in_shape) == 2 or len(spec.in_shape) - 2 != len(grid) - 1:
        return None
    for k, (size, osize) in enumerate(zip(spec.in_shape[2:], spec.out_shape[2:])):
        g = grid[1 + k]
        if g == 1:
            continue
        if osize < g or size < g:
            return f"{g} blocks along spatial dim {k} of size {size} (output {osize})"
        if spec.kind in ("conv", "maxpool", "avgpool"):
            geo = spec.geometry
            halo = max(max(geo.padding[k]), geo.dilation[k] * (geo.kernel[k] - 1) - min(geo.padding[k]))
            if size // g < halo:
                return f"blocks of {size // g} rows along spatial dim {k} are smaller than the halo ({halo})"
    return None


def candidate_grids(ranks, nd):
    """Every grid (Pn, *Ps) with product `ranks` over 1 + nd entries: fewest sample blocks first, and for the
    same Pn the grids that split outer (slower-varying) spatial dimensions more first.

    The order breaks ties, which are exact for square inputs (the model prices a split along H and one
    along W alike): the planner and `best_uniform` keep the first of equal costs. Outer splits keep
    blocks and halo pieces contiguous, which the CPU kernels run faster (one-plane halo pieces of a
    3-D convolution cost 3-7x more per element along W than along D)."""
    grids = list(_factorizations(int(ranks), nd + 1))
    return sorted(grids, key=lambda g: (g[0], tuple(-p for p in g[1:])))
