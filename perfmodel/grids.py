"""Which grids the planner considers for a layer: every factorization of P over the batch and the spatial
dimensions (hpcnn.geometry), channel and filter splits beside them (`channel_grids`), less those a layer
refuses."""
from hpcnn.geometry import WindowGeometry, halo_reach, window_halo
from hpcnn.grids import candidate_grids
from hpcnn.nn import registry

from .costs import parts
from .layers import Block, iter_layers

__all__ = ["candidate_grids", "channel_grids", "planner_grids", "grid_refusal"]


def _divisors(p):
    return [d for d in range(1, p + 1) if p % d == 0]


def _spatial_split(s, spatial_shape):
    """s ranks over the spatial dims: each prime factor (largest first) to the dim with the largest block."""
    grid = [1] * len(spatial_shape)
    factors, p, left = [], 2, s
    while left > 1:
        while left % p == 0:
            factors.append(p)
            left //= p
        p += 1
    for f in sorted(factors, reverse=True):
        k = max(range(len(grid)), key=lambda a: (spatial_shape[a] / grid[a], -a))
        grid[k] *= f
    return tuple(grid)


def channel_grids(ranks, spatial_shape, batch, max_channels):
    """Long grids (N, *S, C, F) with C x F = q > 1 that the planner considers beside the short ones.

    For every q dividing `ranks`: the two largest sample splits n <= batch of the rest, its spatial split as
    square as the input allows (`_spatial_split`), and (C, F) = (q, 1), (1, q) and the most even C x F, the
    ones with C at most `max_channels`. F may exceed a layer's filters: a convolution then runs on the
    ranks that hold filters and the others keep copies (replication, which serves any rank count).
    Every factorization would be O(ranks^(1 + nd)) grids; these keep the plan's DP small while offering
    pure channel, pure filter and mixed splits at every scale."""
    out = []
    for q in _divisors(ranks):
        if q == 1:
            continue
        rest = ranks // q
        ns = [d for d in _divisors(rest) if d <= batch][-2:]
        c_even = max(d for d in _divisors(q) if d * d <= q)
        cf = sorted(cf for cf in {(q, 1), (1, q), (c_even, q // c_even)} if cf[0] <= max_channels)
        for n in reversed(ns):
            spatial = _spatial_split(rest // n, spatial_shape)
            for c, f in cf:
                out.append((n,) + spatial + (c, f))
    return out


def planner_grids(chain, ranks, channel_splits=True):
    """The planner's candidates for `chain` at `ranks` ranks: the short grids with no more sample blocks than
    samples, then (unless channel_splits is False) `channel_grids`."""
    first = chain[0]
    nd = len(first.in_shape) - 2
    batch = first.in_shape[0]
    short = [g for g in candidate_grids(ranks, nd) if g[0] <= batch]
    if not channel_splits:
        return short
    max_channels = max((max(s.in_shape[1], s.out_shape[1]) for s in iter_layers(chain) if len(s.in_shape) > 2),
                       default=1)
    return short + channel_grids(ranks, first.in_shape[2:], batch, max_channels)


_REFUSALS = {}


def grid_refusal(spec, grid):
    """None if `spec` can run under `grid` as the model prices it, else the reason.

    Refused: more sample blocks than samples; more blocks along a dimension than its rows (empty
    blocks); a window whose halo reaches past the neighbouring block (the exchange would
    assemble it from several ranks, which the code does, but the model prices one message per side);
    more channel blocks than channels. More filter blocks than a convolution's filters run (the ranks
    without filters idle and receive the output, priced so).
    """
    if isinstance(spec, Block):
        for node in spec.body + (spec.shortcut or []):
            why = grid_refusal(node, grid)
            if why:
                return why
        return None
    key = (spec.signature(), tuple(grid))
    if key not in _REFUSALS:
        if len(_REFUSALS) > 200000:
            _REFUSALS.clear()
        _REFUSALS[key] = _refusal(spec, tuple(grid))
    return _REFUSALS[key]


def _channel_splits(kind):
    """Whether a layer kind runs on channel or filter splits (its registry entry says)."""
    try:
        return registry.by_name(kind).channel_splits
    except ValueError:
        return True


def _refusal(spec, grid):
    n = spec.in_shape[0]
    if grid[0] > n:
        return f"{grid[0]} sample blocks for a batch of {n}"
    p = parts(grid)
    if p.channels * p.filters > 1 and not _channel_splits(spec.kind):
        return f"{spec.kind} has no channel or filter split"
    if len(spec.in_shape) > 2 and p.channels > spec.in_shape[1]:
        return f"{p.channels} channel blocks for {spec.in_shape[1]} channels"
    if len(spec.in_shape) == 2 or len(spec.in_shape) - 2 != p.nd:
        return None
    for k, (size, osize) in enumerate(zip(spec.in_shape[2:], spec.out_shape[2:])):
        g = grid[1 + k]
        if g == 1:
            continue
        if osize < g or size < g:
            return f"{g} blocks along spatial dim {k} of size {size} (output {osize})"
        if spec.geometry is not None:
            axis = window_halo((g,), (size,), WindowGeometry(1, *_one_dim(spec.geometry, k)))[0]
            if halo_reach(axis) > 1:
                widest = max(max(h.widths) for h in axis)
                return (f"blocks of {size // g} rows along spatial dim {k} are smaller than the halo "
                        f"({widest} rows)")
    return None


def _one_dim(geometry, k):
    kernel, stride, dilation, lo, hi = geometry.along(k)
    return kernel, stride, ((lo, hi),), dilation
