"""Process grids over (N, H, W) or (N, D, H, W), the uneven block rule, neighbours and sub-communicators.

A `Distribution` places the ranks of a communicator on a grid whose first entry splits the
batch and whose other entries split the spatial dimensions; channels are never split. Every
tensor is block-distributed over *its own* global shape by the same rule (`block_range`): a
strided layer's output is split over the output size, and each rank fetches the input rows
its output block needs (see `hpcnn.geometry` and `hpcnn.parallel.halo`).

Which axes of a tensor the grid splits depends on its rank (`nd` = number of spatial dims):
  (N, C, *S)  -> N by grid[0], S by grid[1:]            activations
  (N, *S)     -> N by grid[0], S by grid[1:]            per-pixel labels
  (N, F), (N,) -> N by grid[0]; replicated over the spatial group (every rank of a spatial
                 group holds the same rows: features after global pooling or flatten)
"""
import numpy as np

from ..geometry import block_range
from .mpi import Communicator

__all__ = ["Distribution"]

# Sub-communicators are collective to create: one set per (communicator, grid), made once.
_groups = {}


class Distribution:
    """Ranks of `comm` on `grid` = (Pn, Ph, Pw) or (Pn, Pd, Ph, Pw), in C order (last entry fastest).

    comm: an mpi4py communicator or an hpcnn.parallel.mpi.Communicator. Attributes: comm (the
    Communicator), grid, nd (spatial dims), rank, size, coords (this rank's grid coordinates),
    spatial_comm (ranks holding the same samples: same coords[0]), sample_comm (ranks holding
    the same spatial block of different samples: same coords[1:]); both are Communicators
    sharing comm's clock.
    """

    def __init__(self, comm, grid):
        comm = Communicator.of(comm)
        grid = tuple(int(g) for g in grid)
        if len(grid) not in (3, 4):
            raise ValueError(f"Distribution: grid must be (N, H, W) or (N, D, H, W), received {grid}")
        if any(g < 1 for g in grid):
            raise ValueError(f"Distribution: every grid entry must be at least 1, received {grid}")
        size = comm.size
        if int(np.prod(grid)) != size:
            raise ValueError(f"Distribution: grid {grid} has {int(np.prod(grid))} places but the "
                             f"communicator has {size} ranks")
        self.comm = comm
        self.grid = grid
        self.nd = len(grid) - 1
        self.rank = comm.rank
        self.size = size
        self.coords = tuple(int(c) for c in np.unravel_index(self.rank, grid))
        key = (comm.handle, id(comm) if comm.handle is None else None, grid)
        if key not in _groups:
            spatial_color = self.coords[0]
            sample_color = int(np.ravel_multi_index(self.coords[1:], grid[1:]))
            _groups[key] = (comm.split(spatial_color, self.rank), comm.split(sample_color, self.rank))
        self.spatial_comm, self.sample_comm = _groups[key]

    # --- the grid ---------------------------------------------------------------------------
    @property
    def spatial_grid(self):
        return self.grid[1:]

    @property
    def spatial_ranks(self):
        """Ranks in one spatial group (the replication factor of (N, F) tensors)."""
        return int(np.prod(self.grid[1:]))

    def rank_of(self, coords):
        """Rank (in `comm`) at grid coordinates `coords`."""
        return int(np.ravel_multi_index(tuple(coords), self.grid))

    def line(self, grid_axis):
        """Ranks that differ from this one only along `grid_axis`, indexed by that coordinate."""
        out = []
        for c in range(self.grid[grid_axis]):
            coords = list(self.coords)
            coords[grid_axis] = c
            out.append(self.rank_of(coords))
        return out

    def neighbours(self, grid_axis):
        """(lower, upper) neighbour ranks along `grid_axis`, None at the grid's edge."""
        c = self.coords[grid_axis]
        line = self.line(grid_axis)
        return (line[c - 1] if c > 0 else None, line[c + 1] if c + 1 < len(line) else None)

    # --- tensors ----------------------------------------------------------------------------
    def split_axes(self, ndim):
        """{tensor axis: grid axis} for a tensor of rank `ndim` (see the module docstring)."""
        if ndim == self.nd + 2:
            return {0: 0, **{2 + k: 1 + k for k in range(self.nd)}}
        if ndim == self.nd + 1:
            return {0: 0, **{1 + k: 1 + k for k in range(self.nd)}}
        return {0: 0}

    def is_replicated(self, ndim):
        """True when tensors of rank `ndim` are replicated over the spatial group."""
        return ndim < self.nd + 1 and self.spatial_ranks > 1

    def ranges_at(self, global_shape, coords):
        """[(start, stop)] per tensor axis of the block at grid coordinates `coords`."""
        axes = self.split_axes(len(global_shape))
        out = []
        for axis, size in enumerate(global_shape):
            g = axes.get(axis)
            out.append(block_range(size, self.grid[g], coords[g]) if g is not None else (0, size))
        return out

    def local_ranges(self, global_shape):
        """[(start, stop)] per axis of this rank's block."""
        return self.ranges_at(global_shape, self.coords)

    def local_slices(self, global_shape):
        return tuple(slice(a, b) for a, b in self.local_ranges(global_shape))

    def local_shape(self, global_shape):
        return tuple(b - a for a, b in self.local_ranges(global_shape))

    def axis_ranges(self, size, grid_axis):
        """[(start, stop)] of every block along one grid axis for a dimension of `size`."""
        return [block_range(size, self.grid[grid_axis], c) for c in range(self.grid[grid_axis])]

    def __eq__(self, other):
        return isinstance(other, Distribution) and self.grid == other.grid and self.comm == other.comm

    def __hash__(self):
        return hash((self.grid, self.comm.handle))

    def __repr__(self):
        return f"Distribution(grid={self.grid}, ranks={self.size})"
