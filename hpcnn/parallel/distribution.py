"""Process grids over samples, spatial dimensions, channels and filters; the uneven block rule, neighbours and
sub-communicators.

A `Distribution` places the ranks of a communicator on a grid (`hpcnn.grids.GRID_NOTATION`):
(N, [D,] H, W) splits the batch and the spatial dimensions; the long form (N, [D,] H, W, C, F) adds
C, the ranks that split a tensor's channels, and F, the ranks that split a convolution's filters (its
output channels; see `hpcnn.parallel.conv`). Every tensor is block-distributed over *its own* global
shape by the same rule (`block_range`): a strided layer's output is split over the output size, and
each rank fetches the input rows its output block needs (see `hpcnn.geometry` and `hpcnn.parallel.halo`).

Which axes of a tensor the grid splits depends on its rank (`nd` = number of spatial dims):
  (N, C, *S)  -> N by grid N, S by the spatial entries, C by grid C;   activations
                 replicated over F (every rank of an F line holds the same block)
  (N, *S)     -> N and S; replicated over C and F                       per-pixel labels
  (N, F), (N,) -> N; replicated over every other entry (features after global pooling or flatten)
A replicated tensor's gradient is, like the tensor, held whole by every replica. Ranks in C order
over the long grid, F fastest; a short grid has the rank order of its long form with C = F = 1.
"""
import numpy as np

from ..geometry import block_range
from ..grids import grid_parts, short_grid
from .mpi import Communicator

__all__ = ["Distribution"]

# Sub-communicators are collective to create: one per (communicator, grid, axes), made once, in the same
# order on every rank (every rank runs the same layers in the same order).
_groups = {}


class Distribution:
    """Ranks of `comm` on `grid` (short (N, *S) or long (N, *S, C, F); see the module docstring).

    comm: an mpi4py communicator or an hpcnn.parallel.mpi.Communicator. Attributes: comm (the
    Communicator), grid (the short form when C = F = 1, else the long form), nd (spatial dims), rank,
    size, coords (this rank's coordinates over `grid`), channels (Pc), filters (Pf). Sub-communicators,
    all sharing comm's clock (`group(axes)` for any set of grid axes): spatial_comm (ranks differing only
    in their spatial coordinates), sample_comm (only in the sample coordinate), channel_comm (only in C),
    filter_comm (only in F), cf_comm (in C and F: the ranks holding the same samples and spatial block),
    slice_comm (in samples and spatial blocks: the ranks with the same channel and filter coordinates).
    """

    def __init__(self, comm, grid):
        comm = Communicator.of(comm)
        try:
            parts = grid_parts(grid)
        except ValueError as e:
            raise ValueError(f"Distribution: {e}") from None
        grid = short_grid(grid)
        size = comm.size
        if int(np.prod(grid)) != size:
            raise ValueError(f"Distribution: grid {grid} has {int(np.prod(grid))} places but the "
                             f"communicator has {size} ranks")
        self.comm = comm
        self.grid = grid
        self.nd = parts.nd
        self.channels, self.filters = parts.channels, parts.filters
        self.rank = comm.rank
        self.size = size
        self.coords = tuple(int(c) for c in np.unravel_index(self.rank, grid))
        long = len(grid) == self.nd + 3
        self.channel_axis = self.nd + 1 if long else None
        self.filter_axis = self.nd + 2 if long else None
        self._key = (comm.handle, id(comm) if comm.handle is None else None, grid)
        self.spatial_comm = self.group(self.spatial_axes)
        self.sample_comm = self.group((0,))

    # --- the grid ---------------------------------------------------------------------------
    @property
    def spatial_axes(self):
        """Grid axes of the spatial dimensions."""
        return tuple(range(1, 1 + self.nd))

    @property
    def spatial_grid(self):
        return self.grid[1:1 + self.nd]

    @property
    def spatial_ranks(self):
        """Ranks in one spatial group."""
        return int(np.prod(self.spatial_grid))

    @property
    def channel_coord(self):
        return 0 if self.channel_axis is None else self.coords[self.channel_axis]

    @property
    def filter_coord(self):
        return 0 if self.filter_axis is None else self.coords[self.filter_axis]

    @property
    def channel_comm(self):
        return self.group(() if self.channel_axis is None else (self.channel_axis,))

    @property
    def filter_comm(self):
        return self.group(() if self.filter_axis is None else (self.filter_axis,))

    @property
    def cf_comm(self):
        """Ranks holding the same samples and spatial block: C order over (C, F)."""
        return self.group(self.cf_axes)

    @property
    def slice_comm(self):
        """Ranks with the same channel and filter coordinates (differing only in samples and spatial blocks): the
        ranks that compute the same slice of a channel- or filter-split layer's weights. Every rank when C = F = 1."""
        if self.channels * self.filters == 1:
            return self.comm
        return self.group((0,) + self.spatial_axes)

    @property
    def cf_axes(self):
        return () if self.channel_axis is None else (self.channel_axis, self.filter_axis)

    def group(self, axes):
        """The Communicator of the ranks that differ from this one only along grid `axes` (ordered as the
        ranks of `comm`, which is C order over those axes). A collective on first use of these axes."""
        axes = tuple(sorted(axes))
        key = self._key + (axes,)
        if key not in _groups:
            color = int(np.ravel_multi_index([c if a not in axes else 0 for a, c in enumerate(self.coords)],
                                             self.grid))
            _groups[key] = self.comm.split(color, self.rank)
        return _groups[key]

    def channels_whole(self):
        """The Distribution whose tensors keep every channel: C moved into F (this one when C = 1). Collective on
        first use, made once per (communicator, grid)."""
        if self.channels == 1:
            return self
        key = self._key + ("whole channels",)
        if key not in _groups:
            _groups[key] = Distribution(self.comm, self.grid[:1 + self.nd] + (1, self.channels * self.filters))
        return _groups[key]

    def rank_of(self, coords):
        """Rank (in `comm`) at grid coordinates `coords`."""
        return int(np.ravel_multi_index(tuple(coords), self.grid))

    def coords_of(self, rank):
        """Grid coordinates of `rank`."""
        return tuple(int(c) for c in np.unravel_index(rank, self.grid))

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
            out = {0: 0, **{2 + k: 1 + k for k in range(self.nd)}}
            if self.channel_axis is not None:
                out[1] = self.channel_axis
            return out
        if ndim == self.nd + 1:
            return {0: 0, **{1 + k: 1 + k for k in range(self.nd)}}
        return {0: 0}

    def replica_axes(self, ndim):
        """Grid axes over which tensors of rank `ndim` are replicated."""
        split = set(self.split_axes(ndim).values())
        return tuple(a for a in range(len(self.grid)) if a not in split)

    def is_replicated(self, ndim):
        """True when tensors of rank `ndim` are held whole by more than one rank."""
        return any(self.grid[a] > 1 for a in self.replica_axes(ndim))

    def is_lead_replica(self, ndim, coords=None):
        """True for the one rank of each replica set (coordinate 0 along every replica axis): the rank that
        sends a replicated block and counts it in sums."""
        coords = self.coords if coords is None else coords
        return all(coords[a] == 0 for a in self.replica_axes(ndim))

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

    def channel_range(self, channels):
        """[start, stop) of this rank's channels of a tensor with `channels` channels."""
        return block_range(channels, self.channels, self.channel_coord)

    def filter_range(self, filters):
        """[start, stop) of this rank's filters (output channels) of a convolution with `filters` filters."""
        return block_range(filters, self.filters, self.filter_coord)

    def axis_ranges(self, size, grid_axis):
        """[(start, stop)] of every block along one grid axis for a dimension of `size`."""
        return [block_range(size, self.grid[grid_axis], c) for c in range(self.grid[grid_axis])]

    def __eq__(self, other):
        return isinstance(other, Distribution) and self.grid == other.grid and self.comm == other.comm

    def __hash__(self):
        return hash((self.grid, self.comm.handle))

    def __repr__(self):
        return f"Distribution(grid={self.grid}, ranks={self.size})"
