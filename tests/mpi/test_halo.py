"""Halo exchange: the extended blocks equal slices of the global array, and the reverse is the adjoint."""
import numpy as np
import pytest

from hpcnn import parallel
from hpcnn.geometry import WindowGeometry, window_halo
from tests.mpi.collective import check_all, grids_for, world

pytestmark = pytest.mark.mpi

# (spatial shape, kernel, stride, padding, dilation): wide halos on tiny blocks, strides, trims
CASES_2D = [
    ((9, 7), 3, 1, 1, 1),
    ((13, 6), 5, 2, 2, 1),
    ((8, 9), 7, 1, 3, 1),
    ((11, 5), 3, 1, 2, 2),
    ((6, 5), 2, 2, 0, 1),
    ((3, 4), 3, 1, 1, 1),      # blocks of one row or empty at 4 ranks
    ((10, 10), 1, 3, 0, 1),    # stride larger than the kernel: rows trimmed
]
CASES_3D = [((5, 6, 4), 3, 1, 1, 1), ((7, 4, 5), 3, 2, 1, 1)]


def _cases(nd):
    return [(g, c) for g in grids_for(world().Get_size(), nd) for c in (CASES_2D if nd == 2 else CASES_3D)]


def _exchange(d, spatial, kernel, stride, padding, dilation):
    geo = WindowGeometry(d.nd, kernel, stride, padding, dilation)
    return parallel.HaloExchange(d, window_halo(d.spatial_grid, spatial, geo))


@pytest.mark.parametrize("nd", [2, 3])
def test_extended_block_is_the_global_slice(nd):
    rng = np.random.default_rng(5)
    for grid, (spatial, kernel, stride, padding, dilation) in _cases(nd):
        d = parallel.Distribution(world(), grid)
        x = rng.standard_normal((3, 2) + spatial)
        ex = _exchange(d, spatial, kernel, stride, padding, dilation)
        ext = ex.forward(parallel.scatter(x, d).local)
        n0, n1 = d.local_ranges(x.shape)[0]
        index = (slice(n0, n1), slice(None)) + tuple(slice(*h.need) for h in ex.mine)
        check_all(np.array_equal(ext, x[index]), f"grid {grid} case {spatial, kernel, stride}")
        # padding only at the global edges
        edge_ok = all((h.pad[0] == 0 or h.need[0] == 0) and (h.pad[1] == 0 or h.need[1] == spatial[k])
                      for k, h in enumerate(ex.mine))
        check_all(edge_ok, f"padding away from the edge on grid {grid}")


@pytest.mark.parametrize("nd", [2, 3])
def test_exchange_adjoint(nd):
    """<F x, y> == <x, F* y> summed over ranks."""
    w = world()
    rng = np.random.default_rng(7 + w.Get_rank())
    for grid, (spatial, kernel, stride, padding, dilation) in _cases(nd):
        d = parallel.Distribution(w, grid)
        ex = _exchange(d, spatial, kernel, stride, padding, dilation)
        nloc = d.local_shape((3, 2) + spatial)[0]
        x = rng.standard_normal((nloc, 2) + ex.own_shape)
        y = rng.standard_normal((nloc, 2) + ex.need_shape)
        fx = ex.forward(x)
        fty = ex.reverse(y)
        lhs = w.allreduce(float(np.sum(fx * y)))
        rhs = w.allreduce(float(np.sum(x * fty)))
        check_all(abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), f"grid {grid}: {lhs} != {rhs}")


def test_pack_buffers_are_reused():
    d = parallel.Distribution(world(), (1, world().Get_size(), 1))
    ex = _exchange(d, (12, 5), 3, 1, 1, 1)
    x = np.ones((2, 3) + ex.own_shape)
    ex.forward(x)
    first = [id(b) for steps in ex._buffers.values() for step in steps for _, _, b in step[2] + step[3]]
    ex.forward(x)
    again = [id(b) for steps in ex._buffers.values() for step in steps for _, _, b in step[2] + step[3]]
    check_all(first == again and len(ex._buffers) == 1, "pack buffers were reallocated")
