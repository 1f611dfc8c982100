"""The cost of one layer under one grid: compute, halo, collectives, gradient allreduce, memory.

Everything here is a pure function of global shapes, a grid and a `MachineProfile`. A grid is
(Pn, Ph, Pw) or (Pn, Pd, Ph, Pw), or the long form (Pn, [Pd,] Ph, Pw, Pc, Pf) with channel and filter
splits, in the order of `hpcnn.parallel.Distribution`: ranks in C order, last entry fastest.
Under a long grid an activation's channels are split over Pc and replicated over Pf
(`local_numel`); what a channel- or filter-split convolution adds is in `perfmodel.kinds.conv`. Blocks and halos are `hpcnn.geometry`'s, the same functions the distributed
layers run on, so the model and the code agree on every row. Times are the slowest rank's (the
one with the largest block and the most halo rows), since every layer ends in a
synchronization (halo or collective) with the others.

Each layer kind's pricing is the function its registry entry names (`hpcnn.nn.registry`, field
`cost`, functions in `perfmodel.kinds`); this module holds what they share:
- halo forward (`halo_time`): per split dimension in turn, copy the block into the extended
  buffer, pack, one message per neighbour (alpha + bytes * beta), unpack, each copy priced with its
  contiguous runs (a split of the last, contiguous axis copies many short rows: the copy model's
  per-run layout term); backward: the adjoint,
  which sends the halo rows of dx back and adds them (zero, add, pack, message, add);
  `overlap.halo` of the profile is the fraction of the messages hidden behind interior compute;
- every leaf layer call, forward and backward, also costs the profile's per-call term
  (`MachineProfile.layer_call`: fixed + per byte of local input + output + parameters), the work
  of the layer code around its kernels, and, for arrays above the profile's fresh-memory
  threshold, the page faults of its new output (forward) and input gradient (backward);
- weight gradients as hpcnn.parallel.reducer moves them, in buckets, overlapped with backward
  (`perfmodel.iteration`; per layer the un-overlapped time is reported): an unsplit layer's whole
  gradient is allreduced over all ranks; a channel- or filter-split layer's (`split_gradient`) only
  its slice, over the ranks with the same (c, f), then one allgather of the whole over the Pc x Pf
  ranks (`gradient_reduction_time`). Every rank still holds the whole parameters, gradients and
  optimizer state, and the reducer one whole-sized buffer (the slices are summed and gathered in it).
Memory per rank: activations kept for backward (block bytes, extended blocks where halos are
exchanged, max-pool argmax), the largest transient workspace (a layer's output and input
gradients during its backward, plus a convolution's lowered columns, which the kernels bound:
about 2 MiB per call on CPU, on a GPU a share of the free memory: `hpcnn.backend.gpu_scratch_bytes`
of the rank's memory), parameters + gradients + optimizer
state + the reducer's bucket copy.
"""
import math
from dataclasses import dataclass, field
from functools import lru_cache

from hpcnn.geometry import (WindowGeometry, bilinear_halo, halo_pieces, own_rows_suffice, piece_padding, piece_taps,
                            slab_runs, upsample_halo, window_halo)
from hpcnn.grids import grid_parts
from hpcnn.nn import registry

__all__ = [
    "LayerCost", "layer_cost", "kernel_cost", "block_extra_cost", "local_numel", "ceil_div", "busy_ranks",
    "window_blocks", "halo_time", "conv_halo_pieces", "OPTIMIZER_STATE", "OPTIMIZER_STATES", "BUCKET_BYTES",
    "FLOAT64", "parts", "split_gradient", "gradient_reduction_time", "layer_point",
]

# Optimizer state per parameter, in parameter-sized arrays, by optimizer (hpcnn.train.optim): SGD with
# momentum keeps one buffer; Adam and AdamW two moments; with amsgrad a third (the per-parameter step
# counters are a few bytes). OPTIMIZER_STATE is the default, SGD with momentum.
OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "adam-amsgrad": 3, "adamw-amsgrad": 3}
OPTIMIZER_STATE = OPTIMIZER_STATES["sgd"]
# hpcnn.parallel.GradientReducer's default bucket size.
BUCKET_BYTES = 1 << 22
FLOAT64 = 8


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
    # the parameter gradients as the reducer moves them: this rank's piece (bytes), summed over grad_group ranks,
    # gathered over grad_gather ranks (1: the piece is the whole), grad_grid: the grid of a split layer (with
    # "samples" after it for a replicated Linear, summed over the sample line; None: unsplit), which keeps its
    # buckets apart
    grad_piece_bytes: float = 0.0
    grad_group: int = 1
    grad_gather: int = 1
    grad_grid: tuple = None
    details: dict = field(default_factory=dict)

    @property
    def communication(self):
        """Halo and collectives of forward and backward (the gradient allreduce is separate)."""
        return self.halo_forward + self.halo_backward + self.collective_forward + self.collective_backward

    @property
    def time(self):
        """Forward + backward + their communication (what the planner minimizes per vertex)."""
        return self.forward + self.backward + self.communication

    def directions(self):
        """(forward, backward) seconds, each with its halo and collectives."""
        return (self.forward + self.halo_forward + self.collective_forward,
                self.backward + self.halo_backward + self.collective_backward)

    def add(self, other):
        for name in ("forward", "backward", "halo_forward", "halo_backward", "collective_forward",
                     "collective_backward", "gradient_allreduce", "activation_bytes", "param_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.workspace_bytes = max(self.workspace_bytes, other.workspace_bytes)
        return self


def ceil_div(a, b):
    return -(-a // b)


def busy_ranks(machine, ranks):
    """Ranks sharing one node's memory bandwidth and cores."""
    return min(ranks, machine.ranks_per_node)


@lru_cache(maxsize=None)
def parts(grid):
    """hpcnn.grids.GridParts of a short or long grid (cached)."""
    return grid_parts(grid)


def local_numel(shape, grid):
    """Elements of the largest local block of a global (N, C, *S) or (N, F) tensor under `grid` (channels split
    over Pc)."""
    n = ceil_div(shape[0], grid[0])
    if len(shape) == 2:
        return n * shape[1]
    p = parts(tuple(grid))
    return n * ceil_div(shape[1], p.channels) * math.prod(ceil_div(s, g) for s, g in zip(shape[2:], p.spatial))


def layer_point(spec, grid):
    """A leaf's place among layers under `grid`: log of its local input and output elements, channels in and out,
    window taps and dilation, twice the log of its stride and twice its spatial dimensions (a 3-D layer is
    far from a 2-D one), three times the log of the grid's ranks and of its ranks that split the block (one
    rank is far from two, and a sample split from a spatial one)."""
    p = parts(tuple(grid))
    g = spec.geometry
    c_in = spec.in_shape[1] if len(spec.in_shape) == 2 else ceil_div(spec.in_shape[1], p.channels)
    c_out = spec.out_shape[1]
    if len(spec.out_shape) > 2:
        c_out = ceil_div(c_out, p.channels * (p.filters if spec.kind in ("conv", "conv_transpose") else 1))
    taps, stride, dilation = ((math.prod(g.kernel), math.prod(g.stride), math.prod(g.dilation)) if g is not None
                              else (1, 1, 1))
    ranks = math.prod(grid)
    return (math.log(max(local_numel(spec.in_shape, grid), 1)), math.log(max(local_numel(spec.out_shape, grid), 1)),
            math.log(max(c_in, 1)), math.log(max(c_out, 1)), math.log(taps), math.log(dilation),
            2.0 * math.log(stride), 2.0 * max(len(spec.in_shape) - 2, 0),
            3.0 * math.log(ranks), 3.0 * math.log(ranks // max(grid[0], 1)))


# --- windows and halos -------------------------------------------------------------------------------------------

def _piece_rows(o_lo, o_hi, r0, r1, size, kernel, stride, dilation, pad_lo):
    """(input rows, output rows, kernel taps) of one halo piece: DistConv cuts the kernel to the taps that reach
    the piece's rows (hpcnn.geometry.piece_taps)."""
    pads = piece_padding(o_lo, o_hi, r0, r1, size, kernel, stride, dilation, pad_lo)
    (t0, t1), _ = piece_taps(r1 - r0, o_hi - o_lo, kernel, stride, dilation, pads)
    return r1 - r0, o_hi - o_lo, t1 - t0


@lru_cache(maxsize=65536)
def _window_axis(size, parts, kernel, stride, dilation, pad_lo, pad_hi, upsample=0, linear=False):
    """Along one dimension split in `parts` (from hpcnn.geometry's blocks): (largest output block, largest
    extended input, largest owned input, the largest halo rows received (sum of both sides), sides, the
    halo pieces [(input rows, output rows, kernel taps)] of that block when a convolution's halo-piece path applies)."""
    if upsample:
        axis = (bilinear_halo if linear else upsample_halo)((parts,), (size,), (upsample,))[0]
    else:
        axis = window_halo((parts,), (size,), WindowGeometry(1, kernel, stride, ((pad_lo, pad_hi),), dilation))[0]
    out_max = ext_max = own_max = recv_max = 0
    sides = 0
    pieces = ()
    rows_path = not upsample and own_rows_suffice(axis)
    for h in axis:
        out_max = max(out_max, h.out[1] - h.out[0])
        own_max = max(own_max, h.own[1] - h.own[0])
        ext_max = max(ext_max, h.need[1] - h.need[0])
        lo, hi = (max(w, 0) for w in h.widths)
        if lo + hi >= recv_max:
            recv_max = lo + hi
            sides = max(sides, (lo > 0) + (hi > 0)) if parts > 1 else 0
            if rows_path and parts > 1:
                pieces = tuple(_piece_rows(o_lo, o_hi, r0, r1, size, kernel, stride, dilation, pad_lo)
                               for o_lo, o_hi, r0, r1 in halo_pieces(h, size, kernel, stride, dilation, pad_lo))
    return out_max, ext_max, own_max, (recv_max if parts > 1 else 0), sides, pieces


def window_blocks(spec, grid):
    """Per spatial dim: (out block, extended input, own input, halo rows, sides, pieces) for a window or
    upsample layer (see `_window_axis`)."""
    nd = spec.nd
    spatial = spec.in_shape[2:]
    if spec.kind == "upsample":
        linear = spec.options.get("mode", "nearest") != "nearest"
        return [_window_axis(spatial[k], grid[1 + k], 1, 1, 1, 0, 0, spec.options["scale"][k], linear)
                for k in range(nd)]
    g = spec.geometry
    if spec.kind == "conv_transpose":
        # the adjoint convolution's windows, from the transposed layer's output back to its input
        spatial = spec.out_shape[2:]
    return [_window_axis(spatial[k], grid[1 + k], *g.along(k)) for k in range(nd)]


def _axis_crosses_nodes(grid, axis, ranks_per_node):
    """True when some rank's neighbour along grid `axis` lives on another node."""
    if grid[axis] == 1:
        return False
    stride = math.prod(grid[axis + 1:])
    return ranks_per_node % (stride * grid[axis]) != 0


def halo_time(machine, grid, n, c, axes, ranks, backward):
    """Halo exchange of an (n, c, *block) tensor, one split dimension at a time (see the module docstring).

    axes: `window_blocks`. Dims exchanged earlier already carry their halo.
    """
    itemsize = machine.itemsize
    extent = [a[2] for a in axes]       # own blocks
    total = 0.0
    busy = busy_ranks(machine, ranks)
    for k, (out, ext, own, rows, sides, _) in enumerate(axes):
        extent[k] = ext
        if grid[1 + k] == 1 or rows == 0:
            continue   # nothing to exchange along k (a pointwise window): the layer uses its block as it is
        block = n * c * math.prod(extent) * itemsize
        halo = n * c * rows * math.prod(e for j, e in enumerate(extent) if j != k) * itemsize
        inter = _axis_crosses_nodes(grid, 1 + k, machine.ranks_per_node)

        # every copy along k walks the same number of contiguous runs (hpcnn.geometry.slab_runs): few long ones
        # along the first dimension, many short ones along the last (the layout term of the copy model)
        runs = slab_runs((n, c, *extent), k, 0)

        def copy(b):
            return machine.kernel_time("copy", busy, nbytes=b, runs=runs) if b > 0 else 0.0
        t = copy(block) + 2 * copy(halo)                       # extended buffer, pack, unpack
        if backward:
            t += copy(block) + copy(halo)                       # zero fill, accumulate received rows
        alpha, beta = machine.link(inter)
        t += (1.0 - machine.overlap["halo"]) * (max(sides, 1) * alpha + halo * beta)
        total += t
    return total


def conv_halo_pieces(grid, axes, kernel):
    """The thin halo-piece convolutions of hpcnn.parallel.conv.DistConv's one-split-dimension path, from
    hpcnn.geometry.halo_pieces: [(in_spatial, out_spatial, kernel)] of the slowest rank's pieces, the kernel
    cut to the taps that reach the piece (empty on the extended-block path: several exchanged dimensions,
    none, or blocks that do not read all their rows)."""
    exchanged = [k for k, a in enumerate(axes) if grid[1 + k] > 1 and a[3] > 0]
    if len(exchanged) != 1:
        return []
    k = exchanged[0]
    out = []
    for rows_in, rows_out, taps in axes[k][5]:
        in_sp = [a[2] for a in axes]
        out_sp = [a[0] for a in axes]
        cut = list(kernel)
        in_sp[k], out_sp[k], cut[k] = rows_in, rows_out, taps
        out.append((tuple(in_sp), tuple(out_sp), tuple(cut)))
    return out


# --- one layer ---------------------------------------------------------------------------------------------------

def layer_cost(spec, grid, machine):
    """LayerCost of a LayerSpec under `grid` on `machine`: its kind's pricing plus the per-call terms."""
    return _layer_cost_cached(spec.signature(), spec, tuple(grid), machine)


_COST_CACHE = {}


def _layer_cost_cached(signature, spec, grid, machine):
    key = (signature, grid, machine.cache_key)
    hit = _COST_CACHE.get(key)
    if hit is None:
        if len(_COST_CACHE) > 200000:
            _COST_CACHE.clear()
        hit = _COST_CACHE[key] = _layer_cost(spec, grid, machine)
    return hit


def _scratch_budget(machine):
    """The most a convolution's lowered columns take at once: hpcnn's kernels work in bounded chunks."""
    if machine.backend == "gpu":
        from hpcnn.backend import gpu_scratch_bytes
        return gpu_scratch_bytes(machine.memory_per_rank)
    from hpcnn.kernels.cpu.conv import SCRATCH_BYTES
    return SCRATCH_BYTES


def kernel_cost(spec, grid, machine):
    """The kind's own pricing of `spec` (kernels, halos, collectives, activation memory), without the
    per-call terms; the parameters' bytes and un-overlapped gradient allreduce are filled in."""
    ranks = math.prod(grid)
    cost = LayerCost()
    cost.param_bytes = cost.grad_piece_bytes = spec.params * machine.itemsize
    cost.grad_group = ranks
    price = registry.by_name(spec.kind).resolve("cost")
    price(spec, grid, machine, cost)
    if spec.params:
        cost.gradient_allreduce = gradient_reduction_time(machine, cost.param_bytes, cost.grad_piece_bytes,
                                                          cost.grad_group, cost.grad_gather, ranks)
    return cost


def split_gradient(cost, grid, piece_params, machine):
    """A channel- or filter-split layer's gradients (hpcnn.parallel.reducer): the largest rank's piece of
    `piece_params` parameters, summed over the ranks with the same (c, f), gathered over the Pc x Pf ranks."""
    p = parts(tuple(grid))
    q = p.channels * p.filters
    cost.grad_piece_bytes = piece_params * machine.itemsize
    cost.grad_group = math.prod(grid) // q
    cost.grad_gather = q
    cost.grad_grid = tuple(grid)


def gradient_reduction_time(machine, whole_bytes, piece_bytes, group, gather, ranks):
    """Seconds to sum a piece of `piece_bytes` over `group` ranks (spread over the job's `ranks`: the sample and
    spatial coordinates vary slowest) and gather the `whole_bytes` over `gather` consecutive ranks."""
    t = machine.allreduce(piece_bytes, group, machine.spans_nodes(ranks)) if group > 1 else 0.0
    if gather > 1:
        t += machine.allgather(whole_bytes, gather, gather > machine.ranks_per_node)
    return t


def _layer_cost(spec, grid, machine):
    cost = kernel_cost(spec, grid, machine)
    in_bytes = local_numel(spec.in_shape, grid) * machine.itemsize
    out_bytes = local_numel(spec.out_shape, grid) * machine.itemsize
    # transient while the layer runs backward: the gradients of its output and its input (both live
    # at once), plus the kernels' bounded scratch
    cost.workspace_bytes = min(cost.workspace_bytes, _scratch_budget(machine)) + in_bytes + out_bytes
    nbytes = in_bytes + out_bytes + spec.params * machine.itemsize
    # a fresh output in forward and a fresh input gradient in backward (page faults of large arrays)
    cost.forward += machine.fresh_memory_time(out_bytes)
    cost.backward += machine.fresh_memory_time(in_bytes)
    cost.forward += machine.layer_call(spec.kind, "forward", nbytes)
    cost.backward += machine.layer_call(spec.kind, "backward", nbytes)
    # the layers of random networks measured near this one (perfmodel.context), messages and waits included
    forward, backward = machine.context.factors(spec.kind, layer_point(spec, grid), cost.directions())
    cost.forward *= forward
    cost.halo_forward *= forward
    cost.collective_forward *= forward
    cost.backward *= backward
    cost.halo_backward *= backward
    cost.collective_backward *= backward
    return cost


def block_extra_cost(block, grid, machine):
    """A block's own work beyond its chains (the residual add, the skip's concatenation): its container
    kind's pricing."""
    cost = LayerCost()
    registry.by_name(block.kind).resolve("cost")(block, grid, machine, cost)
    return cost
