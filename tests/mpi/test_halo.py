"""Halo exchange: the extended blocks equal slices of the global array, and the reverse is the adjoint."""
import numpy as np
import pytest

from hpcnn import parallel
from hpcnn.geometry import WindowGeometry, window_halo
from tests.mpi.collective import SIZE, check_all, grid_id, grids_for, world

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


def _case_id(case):
    spatial, kernel, stride, padding, dilation = case
    return f"S{'x'.join(map(str, spatial))}-k{kernel}-s{stride}-p{padding}-d{dilation}"


# every grid of SIZE ranks with every case of its dimension, one test id each
CASES = [pytest.param(g, c, id=f"{grid_id(g)}-{_case_id(c)}")
         for nd, cases in ((2, CASES_2D), (3, CASES_3D)) for g in grids_for(SIZE, nd) for c in cases]


def _exchange(d, spatial, kernel, stride, padding, dilation):
    geo = WindowGeometry(d.nd, kernel, stride, padding, dilation)
    return parallel.HaloExchange(d, window_halo(d.spatial_grid, spatial, geo))


@pytest.mark.parametrize("grid,case", CASES)
def test_extended_block_is_the_global_slice(grid, case):
    spatial, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(5)
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


@pytest.mark.parametrize("grid,case", CASES)
def test_exchange_adjoint(grid, case):
    """<F x, y> == <x, F* y> summed over ranks."""
    spatial, kernel, stride, padding, dilation = case
    w = world()
    rng = np.random.default_rng(7 + w.Get_rank())
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
    first = [id(b) for steps in ex._buffers.values() for step in steps for _, _, b in step[1] + step[2]]
    ex.forward(x)
    again = [id(b) for steps in ex._buffers.values() for step in steps for _, _, b in step[1] + step[2]]
    check_all(first == again and len(ex._buffers) == 1, "pack buffers were reallocated")
