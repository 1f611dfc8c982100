"""DistConv's halo pieces over one, two and three split dims: exact, taken where they apply, and built
without an extended block; pooling and upsampling on aligned blocks exchange nothing."""
import numpy as np
import pytest

from hpcnn import nn, parallel
from hpcnn.geometry import WindowGeometry, own_rows_suffice, window_halo
from hpcnn.parallel.conv import DistConv
from tests.devices import device_params
from tests.mpi.collective import SIZE, check_all, grid_id, grids_for, world
from tests.mpi.compare import run_both

pytestmark = pytest.mark.mpi

F64 = np.float64


def _split_grids(nd, least):
    """The grids of SIZE ranks that split at least `least` spatial dims."""
    return [g for g in grids_for(SIZE, nd) if sum(p > 1 for p in g[1:]) >= least]


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# (kernel, stride, padding, dilation, input spatial): uneven blocks, stride 2, dilation 2, kernel 5; every
# block reads all of its own rows on these grids, so the pieces apply
CONV2D = [
    (3, 1, 1, 1, (13, 11)),
    (5, 1, 2, 1, (12, 9)),
    (3, 2, 1, 1, (13, 10)),
    (3, 1, 2, 2, (12, 9)),
    (5, 1, "same", 2, (14, 13)),
    (3, 1, ((0, 2), (1, 0)), 1, (9, 8)),
]
CONV3D = [
    (3, 1, 1, 1, (5, 6, 7)),
    (3, 2, 1, 1, (7, 6, 6)),
    (5, 1, 2, 1, (6, 7, 5)),
    (3, 1, 2, 2, (6, 7, 9)),
]


def _convs(dm):
    return [m for m in dm.root.modules() if isinstance(m, DistConv)]


def _case_id(c):
    return f"k{c[0]}s{c[1]}p{c[2]}d{c[3]}-S{'x'.join(map(str, c[4]))}"


def _expected_path(layer, grid, spatial):
    """The pieces where every split line's blocks read all their own rows (always so at stride 1 here), else
    the extended block (strided layers whose blocks skip edge rows)."""
    halo = window_halo(grid[1:], spatial, layer.geometry)
    fits = all(own_rows_suffice(halo[k]) for k, p in enumerate(grid[1:]) if p > 1)
    assert fits or any(s > 1 for s in layer.geometry.stride)
    return "pieces" if fits else "extended"


# every grid that splits a spatial dim with every case of its dimension, one test id each
CASES = [pytest.param(g, c, id=f"{grid_id(g)}-{_case_id(c)}")
         for cases in (CONV2D, CONV3D) for g in _split_grids(len(cases[0][4]), 1) for c in cases]


@pytest.mark.parametrize("grid,case", CASES)
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "plain"])
@pytest.mark.parametrize("device", device_params())
def test_conv_pieces(grid, case, overlap, device):
    k, s, p, dl, spatial = case
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    layer = conv(2, 3, k, stride=s, padding=p, dilation=dl, rng=np.random.default_rng(1), dtype=F64)
    x = _x((2, 2) + spatial)
    expected = _expected_path(layer, grid, spatial)
    dm = run_both(layer, x, grid, F64, overlap=overlap, device=device)
    (dconv,) = _convs(dm)
    check_all(dconv.path == expected, f"grid {grid}: the {dconv.path} path was taken, expected {expected}")
    if expected == "pieces":
        # no extended block, forward or backward: the halo stays in its slabs
        check_all(all(ex.extended_blocks == 0 for ex in dconv.exchanges.values()), f"grid {grid}: an extended block")


@pytest.mark.parametrize("grid", _split_grids(2, 1), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_conv_falls_back_on_tiny_blocks(grid, device):
    """Blocks of one row under a wide kernel (halos from several ranks) take the pieces; a line with an empty
    block takes the extended path; both exact."""
    spatial = (3, 2)
    layer = nn.Conv2d(2, 2, 5, padding=2, rng=np.random.default_rng(4), dtype=F64)
    dm = run_both(layer, _x((2, 2) + spatial), grid, F64, device=device)
    (conv,) = _convs(dm)
    expected = "pieces" if all(p <= s for p, s in zip(grid[1:], spatial)) else "extended"
    check_all(conv.path == expected, f"grid {grid}: path {conv.path}, expected {expected}")


@pytest.mark.parametrize("grid", _split_grids(2, 1) + _split_grids(3, 1), ids=grid_id)
@pytest.mark.parametrize("kind", ["max", "avg", "nearest"])
@pytest.mark.parametrize("device", device_params())
def test_aligned_windows_exchange_nothing(kind, grid, device):
    """A 2x2 (2x2x2) stride-2 pool or a nearest upsampling by 2 on even blocks reads only its own rows: no
    message, the block itself as input."""
    nd = len(grid) - 1
    spatial = tuple(4 * p for p in grid[1:])
    layer = {(2, "max"): nn.MaxPool2d, (2, "avg"): nn.AvgPool2d, (3, "max"): nn.MaxPool3d,
             (3, "avg"): nn.AvgPool3d}[nd, kind](2) if kind != "nearest" else nn.Upsample(2)
    dm = run_both(layer, _x((2, 2) + spatial), grid, F64, device=device)
    exchanges = dm.halo_exchanges()
    check_all(exchanges and all(not ex.comm_dims and ex.bytes_sent == 0 and ex.extended_blocks == 0
                                for ex in exchanges), f"grid {grid}: {kind} exchanged a halo")


@pytest.mark.parametrize("grid", _split_grids(2, 2) + _split_grids(3, 2), ids=grid_id)
def test_halo_exchange_copies_the_block_once(grid):
    """With two or more split dims, forward allocates one extended block and reverse one owned block (plus the
    thin slabs): the peak traced during each stays well under two blocks."""
    import tracemalloc
    nd = len(grid) - 1
    d = parallel.Distribution(world(), grid)
    spatial = (40, 40) if nd == 2 else (16, 16, 16)
    ex = parallel.HaloExchange(d, window_halo(d.spatial_grid, spatial, WindowGeometry(nd, 3, padding=1)))
    check_all(len(ex.comm_dims) >= 2, f"grid {grid}: exchanged along {ex.comm_dims}")
    x = _x((2, 3) + ex.own_shape)
    dx_ext = _x((2, 3) + ex.need_shape, seed=1)
    ex.forward(x), ex.reverse(dx_ext)   # the pack buffers are made on first use
    tracemalloc.start()
    ext = ex.forward(x)
    forward_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    dx = ex.reverse(dx_ext)
    reverse_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    check_all(forward_peak < 1.5 * ext.nbytes, f"forward: traced peak {forward_peak} for a block of {ext.nbytes}")
    check_all(reverse_peak < 1.5 * dx.nbytes, f"reverse: traced peak {reverse_peak} for a block of {dx.nbytes}")
    check_all(ex.extended_blocks == 2, f"{ex.extended_blocks} extended blocks in two forwards")
