"""Each layer kind's pricing: what its distributed form does under a grid, in kernel time, messages and bytes.

One function per entry of the layer registry's `cost` field (`hpcnn.nn.registry`), called as
price(spec, grid, machine, cost): it fills the LayerCost `cost` (whose parameter bytes and
gradient allreduce `perfmodel.costs.kernel_cost` has set) for a LayerSpec, or, for containers,
for a `perfmodel.layers.Block`'s own work. Each mirrors its form in hpcnn.parallel:
- conv (parallel/conv.py): the kernels on the extended block, or on the owned block plus the thin
  halo pieces when exactly one dimension exchanges rows and every block reads all of its own
  (conv_forward; conv_backward_data + conv_backward_filter + adding the piece's filter gradient);
- conv_transpose (parallel/conv_transpose.py): the adjoint convolution's kernels and halo, reversed;
- pool, upsample (parallel/windows.py): the halo exchange, then the kernel on the extended block;
- batchnorm (parallel/norm.py): statistics over every rank, one collective forward (an allgather
  of 2C+1 float64 per rank) and one allreduce of 2C float64 backward, each with the wait for the slowest
  rank (the profile's sync_wait times the layer's compute);
- groupnorm (parallel/groupnorm.py): statistics per (sample, group) over the spatial group: one
  allgather forward, one allreduce backward;
- global_avgpool, flatten, linear, pointwise (parallel/dense.py): an allreduce of (n, C) float64
  over the spatial group; an allgather of the blocks into (N, F) rows replicated there; Linear
  computing redundantly on every replica; elementwise passes;
- residual, skip, sequential (parallel/containers.py): the add, the concatenation, nothing.
Under a long grid (Pc, Pf) every activation layer works on its ceil(C / Pc) channels (the same on each
of the Pf replicas); the convolution computes ceil(C / Pc) x ceil(K / Pf) of the weights and adds the
channel moves of `hpcnn.parallel.channels` (`_channel_moves`); batch-norm's statistics go over the
ranks with the same channels only; global pooling adds an allgather of the channels over Pc, flatten
gathers over the channel ranks too. A split convolution's and batch-norm's parameter gradients are their
slices (`perfmodel.costs.split_gradient`).
"""
import math

from .costs import FLOAT64, busy_ranks, ceil_div, conv_halo_pieces, halo_time, parts, split_gradient, window_blocks

__all__ = ["conv", "conv_transpose", "pool", "upsample", "batchnorm", "groupnorm", "dropout", "pointwise", "global_avgpool", "flatten", "linear",
           "residual", "skip", "sequential"]


class _Local:
    """A layer's largest local block under a grid: batch n, channels (of its Pc block), own input and output
    blocks; pc, pf: the channel and filter splits."""

    def __init__(self, spec, grid, machine):
        p = parts(tuple(grid))
        self.ranks = math.prod(grid)
        self.busy = busy_ranks(machine, self.ranks)
        self.n = ceil_div(spec.in_shape[0], grid[0])
        self.spatial_split = math.prod(p.spatial)
        self.pc, self.pf = p.channels, p.filters
        rows = len(spec.in_shape) == 2
        self.c_in = spec.in_shape[1] if rows else ceil_div(spec.in_shape[1], self.pc)
        self.c_out = spec.out_shape[1] if len(spec.out_shape) == 2 else ceil_div(spec.out_shape[1], self.pc)
        self.own_in = [ceil_div(s, g) for s, g in zip(spec.in_shape[2:], p.spatial)]
        self.out_block = [ceil_div(s, g) for s, g in zip(spec.out_shape[2:], p.spatial)]


def _window_common(spec, grid, machine, cost, local):
    """Halo times and the activation memory shared by window layers; returns (axes, out block, extended input)."""
    item = machine.itemsize
    n, c_in = local.n, local.c_in
    cost.activation_bytes = n * local.c_out * math.prod(local.out_block) * item if spec.keeps_output else 0.0
    axes = window_blocks(spec, grid)
    out_block = [a[0] for a in axes]
    ext = [a[1] for a in axes]
    if any(o < 1 for o in out_block):
        cost.details["empty"] = True
    exchanged = any(grid[1 + k] > 1 and a[3] > 0 for k, a in enumerate(axes))
    cost.halo_forward = halo_time(machine, grid, n, c_in, axes, local.ranks, backward=False)
    cost.halo_backward = halo_time(machine, grid, n, c_in, axes, local.ranks, backward=True)
    if exchanged:
        cost.activation_bytes += n * c_in * math.prod(ext) * item     # the extended input is kept
    cost.details["halo_bytes"] = n * c_in * item * sum(
        a[3] * math.prod(e for j, e in enumerate(ext) if j != k) for k, a in enumerate(axes) if grid[1 + k] > 1)
    return axes, out_block, ext


def _channel_moves(spec, local, machine, cost, k_part, out_block):
    """The channel moves of a channel- or filter-split convolution (hpcnn.parallel.conv, .channels): forward,
    every rank sends its partial sums of k_part filters to the Pf replicas of their output channel blocks and
    adds what it receives (one Alltoallv over the Pc x Pf ranks, then the sums); backward, the lead replicas send
    dy's channels to the ranks computing those filters, and the input gradient is summed over the F line
    (an allreduce of the input block)."""
    q = local.pc * local.pf
    item, kt, busy = machine.itemsize, machine.kernel_time, local.busy
    inter = q > machine.ranks_per_node
    plane = local.n * math.prod(out_block) * item
    k_own = ceil_div(spec.out_shape[1], local.pc)
    sent = plane * (k_part * local.pf - min(k_part, k_own))            # my partials to every replica needing them
    recv = plane * k_own * local.pc
    cost.collective_forward += machine.alltoall(max(sent, recv), q, inter, q - 1)
    cost.forward += kt("copy", busy, nbytes=sent + recv) + kt("elementwise", busy, n=local.n, c=k_own * local.pc,
                                                             in_spatial=out_block)
    back = plane * k_own * local.pc                                      # a lead replica's dy to the ranks using it
    cost.collective_backward += machine.alltoall(back, q, inter, min(q - 1, local.pc * local.pf))
    cost.backward += kt("copy", busy, nbytes=2 * back)
    if local.pf > 1:
        dx = local.n * local.c_in * math.prod(local.own_in) * item
        cost.collective_backward += machine.allreduce(dx, local.pf, local.pf > machine.ranks_per_node)
    cost.details["channel_bytes"] = max(sent, recv) + back


def conv(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    axes, out_block, ext = _window_common(spec, grid, machine, cost, local)
    kt, busy, item = machine.kernel_time, local.busy, machine.itemsize
    n, c_in = local.n, local.c_in
    # the filters this rank computes (partial sums over its input channels when Pc > 1)
    c_out = ceil_div(spec.out_shape[1], local.pf) if local.pc * local.pf > 1 else local.c_out
    g = spec.geometry
    shape = dict(n=n, c=c_in, k=c_out, in_spatial=ext, kernel=g.kernel, out_spatial=out_block)
    cost.forward = kt("conv_forward", busy, **shape)
    cost.backward = kt("conv_backward_data", busy, **shape) + kt("conv_backward_filter", busy, **shape)
    for p_in, p_out, p_kernel in conv_halo_pieces(grid, axes, g.kernel):
        piece = dict(n=n, c=c_in, k=c_out, in_spatial=p_in, kernel=p_kernel, out_spatial=p_out)
        cost.forward += kt("conv_forward", busy, **piece)
        # the piece's data gradient, its filter gradient, and adding that into dw
        cost.backward += (kt("conv_backward_data", busy, **piece) + kt("conv_backward_filter", busy, **piece)
                          + kt("elementwise", busy, n=1, c=1, in_spatial=(c_out * c_in * math.prod(p_kernel),)))
    if spec.options.get("bias"):
        cost.forward += kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
        cost.backward += kt("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
    cost.workspace_bytes = float(n * c_in * math.prod(g.kernel) * math.prod(out_block) * item)
    if local.pc * local.pf > 1:
        _channel_moves(spec, local, machine, cost, c_out, out_block)
        # its weight slice W[f-range, c-range], and on c = 0 the bias of its filters
        split_gradient(cost, grid, c_out * c_in * math.prod(g.kernel) + (c_out if spec.options.get("bias") else 0),
                       machine)


def conv_transpose(spec, grid, machine, cost):
    """parallel/conv_transpose.py: the adjoint convolution's halo used the other way round. Forward: its
    data-gradient kernel into the extended output block, then the adjoint exchange (halo rows sent back and
    added); backward: the halo of the output gradient fetched, its forward and filter-gradient kernels."""
    local = _Local(spec, grid, machine)
    kt, busy, item = machine.kernel_time, local.busy, machine.itemsize
    n, c_in, c_out = local.n, local.c_in, local.c_out
    axes = window_blocks(spec, grid)        # blocks of the adjoint: out = this layer's input block
    in_block = [a[0] for a in axes]
    ext = [a[1] for a in axes]
    own_out = [a[2] for a in axes]
    if any(o < 1 for o in own_out):
        cost.details["empty"] = True
    # the adjoint convolution maps (c_out channels, ext) -> (c_in channels, in_block)
    shape = dict(n=n, c=c_out, k=c_in, in_spatial=ext, kernel=spec.geometry.kernel, out_spatial=in_block)
    cost.forward = kt("conv_backward_data", busy, **shape)
    cost.backward = kt("conv_forward", busy, **shape) + kt("conv_backward_filter", busy, **shape)
    cost.halo_forward = halo_time(machine, grid, n, c_out, axes, local.ranks, backward=True)
    cost.halo_backward = halo_time(machine, grid, n, c_out, axes, local.ranks, backward=False)
    if spec.options.get("bias"):
        cost.forward += kt("elementwise", busy, n=n, c=c_out, in_spatial=own_out)
        cost.backward += kt("elementwise", busy, n=n, c=c_out, in_spatial=own_out)
    # keeps its input for the filter gradient; the output when the next layer keeps it
    cost.activation_bytes = n * c_in * math.prod(in_block) * item
    if spec.keeps_output:
        cost.activation_bytes += n * c_out * math.prod(own_out) * item
    cost.workspace_bytes = float(n * c_out * math.prod(ext) * item
                                 + n * c_out * math.prod(spec.geometry.kernel) * math.prod(in_block) * item)


def pool(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    _, out_block, ext = _window_common(spec, grid, machine, cost, local)
    kt = machine.kernel_time
    shape = dict(n=local.n, c=local.c_in, in_spatial=ext, kernel=spec.geometry.kernel, out_spatial=out_block)
    cost.forward = kt("pool_forward", local.busy, **shape)
    cost.backward = kt("pool_backward", local.busy, **shape)
    if spec.kind == "maxpool":
        cost.activation_bytes += local.n * local.c_out * math.prod(out_block) * 8    # int64 argmax


def upsample(spec, grid, machine, cost):
    """Nearest: one pass over the output; linear (bilinear, trilinear): per dimension a two-tap pass over the
    output so far (priced as two elementwise passes per dimension), and the same backward."""
    local = _Local(spec, grid, machine)
    _, out_block, _ = _window_common(spec, grid, machine, cost, local)
    kt = machine.kernel_time
    passes = 1 if spec.options.get("mode", "nearest") == "nearest" else 2 * spec.nd
    cost.forward = passes * kt("elementwise", local.busy, n=local.n, c=local.c_out, in_spatial=out_block)
    cost.backward = passes * kt("elementwise", local.busy, n=local.n, c=local.c_out, in_spatial=out_block)


def batchnorm(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    kt, c = machine.kernel_time, local.c_in
    # the statistics group: the ranks holding the same channels (all of them on a short grid)
    group = local.ranks // (local.pc * local.pf)
    inter_all = machine.spans_nodes(local.ranks)
    in_bytes = local.n * c * math.prod(local.own_in) * machine.itemsize
    cost.forward = kt("batchnorm_forward", local.busy, n=local.n, c=c, in_spatial=local.own_in)
    cost.backward = kt("batchnorm_backward", local.busy, n=local.n, c=c, in_spatial=local.own_in)
    # statistics over the group: forward one allgather of each rank's (count, sums, centered sums of squares),
    # priced as a collective over the gathered bytes; backward one allreduce of (sum_dy, sum_dy_xhat)
    cost.collective_forward = machine.allreduce((2 * c + 1) * FLOAT64 * group, group, inter_all)
    cost.collective_backward = machine.allreduce(2 * c * FLOAT64, group, inter_all)
    if group > 1:
        # ranks finish their blocks at different times: the allreduce waits for the slowest (the profile's sync_wait)
        cost.collective_forward += machine.sync_wait * cost.forward
        cost.collective_backward += machine.sync_wait * cost.backward
    if local.pc > 1:
        # every channel's statistics, for the running statistics every rank keeps
        cost.collective_forward += machine.allreduce(2 * spec.in_shape[1] * FLOAT64, local.pc,
                                                     local.pc * local.pf > machine.ranks_per_node)
    # the output (kept by the next layer) and the input this layer keeps
    cost.activation_bytes = 2 * in_bytes if spec.keeps_output else 0.0
    if local.pc * local.pf > 1 and spec.params:
        # gamma and beta of its channels, on f = 0
        split_gradient(cost, grid, spec.params // spec.in_shape[1] * c, machine)


def groupnorm(spec, grid, machine, cost):
    """parallel/groupnorm.py: statistics per (sample, group) over the spatial group, one allgather of
    1 + 2 n G float64 per rank forward and one allreduce of 2 n G float64 backward (none without a spatial split);
    the kernels are elementwise passes: two forward (moments, apply), two backward (reduce, apply)."""
    local = _Local(spec, grid, machine)
    kt, n, c = machine.kernel_time, local.n, local.c_in
    groups = spec.options["groups"]
    block = dict(n=n, c=c, in_spatial=local.own_in)
    cost.forward = 2 * kt("elementwise", local.busy, **block)
    cost.backward = 2 * kt("elementwise", local.busy, **block)
    p = local.spatial_split
    if p > 1:
        inter = p > machine.ranks_per_node
        cost.collective_forward = machine.allreduce((1 + 2 * n * groups) * FLOAT64 * p, p, inter)
        cost.collective_backward = machine.allreduce(2 * n * groups * FLOAT64, p, inter)
        cost.collective_forward += machine.sync_wait * cost.forward      # waiting for the slowest rank
        cost.collective_backward += machine.sync_wait * cost.backward
    in_bytes = n * c * math.prod(local.own_in) * machine.itemsize
    cost.activation_bytes = in_bytes + (in_bytes if spec.keeps_output else 0.0)


def pointwise(spec, grid, machine, cost):
    """ReLU, LeakyReLU and other shape-keeping elementwise layers, on blocks or on (N, F) rows."""
    local = _Local(spec, grid, machine)
    kt = machine.kernel_time
    if len(spec.in_shape) == 2:
        cost.forward = kt("elementwise", local.busy, n=local.n, c=local.c_in)
        cost.backward = kt("elementwise", local.busy, n=local.n, c=local.c_in)
        cost.activation_bytes = local.n * local.c_in * machine.itemsize if spec.keeps_output else 0
        return
    cost.activation_bytes = (local.n * local.c_out * math.prod(local.out_block) * machine.itemsize
                             if spec.keeps_output else 0.0)
    cost.forward = kt("elementwise", local.busy, n=local.n, c=local.c_in, in_spatial=local.own_in)
    cost.backward = kt("elementwise", local.busy, n=local.n, c=local.c_in, in_spatial=local.own_in)


def dropout(spec, grid, machine, cost):
    """parallel/dense.py DistDropout: the mask from the elements' global indices (a few integer passes, priced
    as three elementwise passes) and the multiply forward, the multiply backward; the mask is kept."""
    pointwise(spec, grid, machine, cost)
    cost.forward *= 4
    local = _Local(spec, grid, machine)
    numel = local.n * local.c_in * (math.prod(local.own_in) if len(spec.in_shape) > 2 else 1)
    cost.activation_bytes += numel * machine.itemsize


def global_avgpool(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    kt, n, c = machine.kernel_time, local.n, local.c_in
    cost.forward = kt("elementwise", local.busy, n=n, c=c, in_spatial=local.own_in)
    cost.backward = kt("elementwise", local.busy, n=n, c=c, in_spatial=local.own_in)
    if local.spatial_split > 1:
        cost.collective_forward = machine.allreduce(n * c * FLOAT64, local.spatial_split,
                                                    local.spatial_split > machine.ranks_per_node)
    if local.pc > 1:
        # the channels gathered over the C line (an allgather, priced as the allreduce of the whole rows)
        cost.collective_forward += machine.allreduce(n * spec.in_shape[1] * machine.itemsize, local.pc,
                                                     local.pc * local.pf > machine.ranks_per_node)
    cost.activation_bytes = n * c * machine.itemsize


def flatten(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    if len(spec.in_shape) > 2 and local.spatial_split * local.pc > 1:
        p = local.spatial_split * local.pc
        mine = local.n * local.c_in * math.prod(local.own_in) * machine.itemsize
        alpha, beta = machine.link(p > machine.ranks_per_node)
        # allgather (ring) of the blocks into the replicated (n, F) rows, and the slice back
        cost.collective_forward = (p - 1) * (alpha + mine * beta) + machine.kernel_time("copy", local.busy,
                                                                                         nbytes=mine * p)
        cost.collective_backward = machine.kernel_time("copy", local.busy, nbytes=mine)
    cost.activation_bytes = 0


def linear(spec, grid, machine, cost):
    local = _Local(spec, grid, machine)
    kt, n = machine.kernel_time, local.n
    f_in, f_out = spec.in_shape[1], spec.out_shape[1]
    cost.forward = kt("gemm", local.busy, m=n, gemm_k=f_in, gemm_n=f_out)
    cost.backward = (kt("gemm", local.busy, m=n, gemm_k=f_out, gemm_n=f_in)
                     + kt("gemm", local.busy, m=f_out, gemm_k=n, gemm_n=f_in))
    cost.activation_bytes = n * f_out * machine.itemsize if spec.keeps_output else 0.0
    if math.prod(grid) > grid[0]:
        # replicated rows: the gradient is summed over the sample line only (DistLinear.gradient_slices), in
        # buckets of its own
        cost.grad_group = grid[0]
        cost.grad_grid = tuple(grid) + ("samples",)


# --- containers: a Block's own work ---------------------------------------------------------------------------

def _block_local(block, grid, machine):
    """(busy ranks, n, out block, channel split Pc) of a container's own work under `grid`."""
    p = parts(tuple(grid))
    n = ceil_div(block.in_shape[0], grid[0])
    out_block = [ceil_div(s, g) for s, g in zip(block.out_shape[2:], p.spatial)]
    return busy_ranks(machine, math.prod(grid)), n, out_block, p.channels


def residual(block, grid, machine, cost):
    """The add of body and shortcut, forward; the gradient passes to both, backward."""
    busy, n, out_block, pc = _block_local(block, grid, machine)
    c_out = ceil_div(block.out_shape[1], pc)
    cost.forward = machine.kernel_time("elementwise", busy, n=n, c=c_out, in_spatial=out_block)
    cost.backward = machine.kernel_time("elementwise", busy, n=n, c=c_out, in_spatial=out_block)


def skip(block, grid, machine, cost):
    """The concatenation forward; the split and the add of the skip's gradient backward."""
    busy, n, out_block, pc = _block_local(block, grid, machine)
    nbytes = n * ceil_div(block.out_shape[1], pc) * math.prod(out_block) * machine.itemsize
    cost.forward = machine.kernel_time("copy", busy, nbytes=nbytes)
    cost.backward = machine.kernel_time("copy", busy, nbytes=nbytes) + machine.kernel_time(
        "elementwise", busy, n=n, c=ceil_div(block.in_shape[1], pc), in_spatial=out_block)
    cost.activation_bytes = 0.0


def sequential(block, grid, machine, cost):
    """A chain does no work of its own: its layers are priced one by one."""
