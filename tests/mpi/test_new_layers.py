"""ConvTranspose2d/3d, GroupNorm, Dropout and bilinear Upsample distributed equal the single-process layers on every
grid: forward, dx and parameter gradients."""
import numpy as np
import pytest

from hpcnn import nn
from tests.devices import device_params
from tests.mpi.collective import SIZE, grid_id
from tests.mpi.compare import grid_sample, run_both

pytestmark = pytest.mark.mpi

F64 = np.float64
GRIDS_2D = grid_sample(SIZE)
GRIDS_3D = grid_sample(SIZE, nd=3)


def _x(shape, dtype=F64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CONVT2D = [  # (in, out, kernel, stride, padding, output_padding, dilation, input spatial)
    (2, 3, 2, 2, 0, 0, 1, (5, 7)),
    (2, 2, 3, 2, 1, 1, 1, (6, 5)),
    (2, 3, 3, 1, 1, 0, 1, (7, 6)),
    (1, 2, 4, 3, 2, 2, 1, (5, 4)),
    (2, 2, 3, 1, 0, 2, 3, (4, 5)),       # output_padding rows no window writes
    (2, 2, 5, 2, 0, 1, 2, (3, 6)),
]


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("case", CONVT2D, ids=[f"k{c[2]}s{c[3]}p{c[4]}op{c[5]}d{c[6]}" for c in CONVT2D])
@pytest.mark.parametrize("device", device_params())
def test_conv_transpose2d(case, grid, device):
    cin, cout, k, s, p, op, dl, spatial = case
    layer = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, dilation=dl,
                               rng=np.random.default_rng(1), dtype=F64)
    run_both(layer, _x((3, cin) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("case", [(2, 2, 0, 0, (3, 4, 3)), (3, 2, 1, 1, (3, 3, 4)), (3, 1, 1, 0, (4, 3, 5))])
@pytest.mark.parametrize("device", device_params())
def test_conv_transpose3d(case, grid, device):
    k, s, p, op, spatial = case
    layer = nn.ConvTranspose3d(2, 2, k, stride=s, padding=p, output_padding=op, rng=np.random.default_rng(3),
                               dtype=F64)
    run_both(layer, _x((2, 2) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D + GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("device", device_params())
def test_groupnorm(grid, affine, device):
    nd = len(grid) - 1
    shape = (3, 6, 7, 5) if nd == 2 else (2, 4, 5, 4, 3)
    layer = nn.GroupNorm(2, shape[1], affine=affine, dtype=F64)
    if affine:
        layer.params["weight"][...] = np.linspace(0.5, 1.5, shape[1])
        layer.params["bias"][...] = np.linspace(-1, 1, shape[1])
    run_both(layer, _x(shape) * 2 + 1, grid, F64, steps=2, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("scale,spatial", [(2, (5, 7)), ((3, 2), (4, 5)), (4, (3, 2))], ids=str)
@pytest.mark.parametrize("device", device_params())
def test_bilinear_upsample(scale, spatial, grid, device):
    run_both(nn.Upsample(scale, mode="bilinear"), _x((3, 2) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_trilinear_upsample(grid, device):
    run_both(nn.Upsample((2, 3, 2), mode="trilinear"), _x((2, 1, 3, 4, 5)), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D + GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_dropout_mask_is_the_same_on_every_grid(grid, device):
    nd = len(grid) - 1
    shape = (3, 2, 9, 7) if nd == 2 else (2, 2, 5, 4, 3)
    run_both(nn.Dropout(0.4, seed=11), _x(shape), grid, F64, steps=3, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_dropout_on_replicated_rows(grid, device):
    rng = np.random.default_rng(7)
    head = nn.Sequential(nn.GlobalAvgPool(), nn.Flatten(), nn.Dropout(0.5, seed=2), nn.Linear(3, 4, rng=rng, dtype=F64))
    run_both(head, _x((5, 3, 7, 6)), grid, F64, steps=2, device=device)
