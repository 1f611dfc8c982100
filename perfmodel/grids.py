"""Which grids the planner considers for a layer: every factorization of P (hpcnn.geometry), less those a
layer refuses."""
from hpcnn.geometry import WindowGeometry, candidate_grids, halo_reach, window_halo

from .layers import Block

__all__ = ["candidate_grids", "grid_refusal"]


def grid_refusal(spec, grid):
    """None if `spec` can run under `grid` as the model prices it, else the reason.

    Refused: more sample blocks than samples; more blocks along a dimension than its rows (empty
    blocks); and a window whose halo reaches past the neighbouring block (the exchange would
    assemble it from several ranks, which the code does, but the model prices one message per side).
    """
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
