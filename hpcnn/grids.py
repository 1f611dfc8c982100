"""Grids: how the ranks of a job are arranged over the batch, the spatial dimensions, channels and filters.

A grid is (Pn, Ph, Pw) or (Pn, Pd, Ph, Pw): ranks over the batch and each spatial dimension, in C
order (`factorizations`, `candidate_grids`); the long form (Pn, [Pd,] Ph, Pw, Pc, Pf) adds the
channel split Pc and the filter split Pf (`grid_parts`, `short_grid`, `long_grid`, `GRID_NOTATION`).
Text writes a grid with `x` between its entries: 4x2x1 (short), 1x2x2x2x1 (long). Pure index
math, no MPI (the block and halo geometry of a grid is `hpcnn.geometry`'s).
"""
from collections import namedtuple

__all__ = ["factorizations", "candidate_grids", "GRID_NOTATION", "GridParts", "grid_parts", "short_grid", "long_grid"]


def factorizations(p, parts):
    """Every ordered tuple of `parts` positive ints whose product is p."""
    if parts == 1:
        yield (p,)
        return
    for d in range(1, p + 1):
        if p % d == 0:
            for rest in factorizations(p // d, parts - 1):
                yield (d,) + rest


def candidate_grids(ranks, nd):
    """Every grid (Pn, *Ps) with product `ranks` over 1 + nd entries: fewest sample blocks first, and for the
    same Pn the grids that split outer (slower-varying) spatial dimensions more first.

    The order breaks ties, which are exact for square inputs: the planner keeps the first of equal
    costs. Outer splits keep blocks and halo pieces contiguous, which the CPU kernels run faster."""
    grids = list(factorizations(int(ranks), nd + 1))
    return sorted(grids, key=lambda g: (g[0], tuple(-p for p in g[1:])))


GRID_NOTATION = ("a grid is (N, H, W) or (N, D, H, W) ranks over the batch and each spatial dimension, or the "
                 "long form (N, [D,] H, W, C, F) that adds C, the ranks splitting a tensor's channels, and F, "
                 "the ranks splitting a convolution's filters (its output channels); e.g. 4x2x1, 1x2x2x2x1")


class GridParts(namedtuple("GridParts", "nd samples spatial channels filters")):
    """A grid's entries by meaning: nd spatial dims, Pn, (Ps, ...), Pc, Pf."""

    __slots__ = ()


def grid_parts(grid, nd=None):
    """GridParts of a short (N, *S) or long (N, *S, C, F) grid; nd: the spatial dims when known (2 or 3).

    Lengths 3 and 4 are short (2-D, 3-D), 5 and 6 long (2-D, 3-D)."""
    grid = tuple(int(g) for g in grid)
    length = len(grid)
    if length not in (3, 4, 5, 6) or (nd is not None and length not in (nd + 1, nd + 3)):
        want = "3 to 6" if nd is None else f"{nd + 1} or {nd + 3}"
        raise ValueError(f"grid {grid}: expected {want} entries ({GRID_NOTATION})")
    if any(g < 1 for g in grid):
        raise ValueError(f"grid {grid}: every entry must be at least 1")
    if length <= 4:
        return GridParts(length - 1, grid[0], grid[1:], 1, 1)
    return GridParts(length - 3, grid[0], grid[1:-2], grid[-2], grid[-1])


def short_grid(grid):
    """The grid in its shortest form: (N, *S) when it splits neither channels nor filters."""
    p = grid_parts(grid)
    return long_grid(grid) if (p.channels, p.filters) != (1, 1) else (p.samples,) + p.spatial


def long_grid(grid):
    """The grid in its long form (N, *S, C, F)."""
    p = grid_parts(grid)
    return (p.samples,) + p.spatial + (p.channels, p.filters)
