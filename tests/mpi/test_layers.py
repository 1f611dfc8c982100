"""Every distributed layer equals the single-process one: forward, dx and parameter gradients."""
import numpy as np
import pytest

from hpcnn import nn
from tests.mpi.collective import SIZE, grid_id, world
from tests.devices import device_params
from tests.mpi.compare import grid_sample, run_both

pytestmark = pytest.mark.mpi

F64 = np.float64

GRIDS_2D = grid_sample(SIZE)
GRIDS_3D = grid_sample(SIZE, nd=3)


def _x(shape, dtype=F64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CONV2D = [  # (in, out, kernel, stride, padding, dilation, input spatial)
    (2, 3, 3, 1, 1, 1, (13, 11)),
    (2, 3, 1, 1, 0, 1, (7, 9)),
    (2, 2, 5, 1, "same", 1, (12, 9)),
    (1, 2, 7, 1, 3, 1, (11, 10)),
    (2, 3, 3, 2, 1, 1, (13, 10)),
    (2, 2, 5, 2, 0, 1, (15, 12)),
    (2, 2, 3, 1, 2, 2, (12, 9)),
    (2, 3, 2, 2, 0, 1, (10, 8)),     # even kernel with stride == kernel
    (2, 2, 3, 1, ((0, 2), (1, 0)), 1, (9, 8)),   # per-side padding
]


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("case", CONV2D, ids=[f"k{c[2]}s{c[3]}p{c[4]}d{c[5]}" for c in CONV2D])
@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "plain"])
@pytest.mark.parametrize("device", device_params())
def test_conv2d(case, overlap, grid, device):
    cin, cout, k, s, p, dl, spatial = case
    layer = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=dl, rng=np.random.default_rng(1), dtype=F64)
    run_both(layer, _x((3, cin) + spatial), grid, F64, overlap=overlap, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_conv2d_odd_size_float32(grid, device):
    layer = nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(2))
    run_both(layer, _x((2, 2, 37, 53), np.float32), grid, np.float32, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("case", [(3, 1, 1, (5, 6, 7)), (3, 2, 1, (7, 5, 6)), (2, 1, "same", (5, 4, 6)),
                                  (2, 2, 0, (6, 4, 6))])
@pytest.mark.parametrize("device", device_params())
def test_conv3d(case, grid, device):
    k, s, p, spatial = case
    layer = nn.Conv3d(2, 2, k, stride=s, padding=p, rng=np.random.default_rng(3), dtype=F64)
    run_both(layer, _x((2, 2) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", [(2, None, 0, (10, 9)), (3, 2, 1, (11, 9)), (3, 1, 1, (9, 7)), (5, 3, 2, (13, 8))])
@pytest.mark.parametrize("device", device_params())
def test_pool2d(kind, case, grid, device):
    k, s, p, spatial = case
    layer = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(k, stride=s, padding=p)
    run_both(layer, _x((3, 2) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("device", device_params())
def test_pool3d(kind, grid, device):
    layer = (nn.MaxPool3d if kind == "max" else nn.AvgPool3d)(2)
    run_both(layer, _x((2, 2, 6, 5, 4)), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D + GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_batchnorm_train_and_eval(grid, device):
    nd = len(grid) - 1
    shape = (3, 3, 7, 5) if nd == 2 else (2, 3, 5, 4, 3)
    layer = (nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d)(3, dtype=F64)
    layer.params["weight"][...] = np.linspace(0.5, 1.5, 3)
    layer.params["bias"][...] = np.linspace(-1, 1, 3)
    run_both(layer, _x(shape) * 2 + 1, grid, F64, steps=2, device=device)
    layer.eval()  # evaluation with the running statistics the two training steps left
    run_both(layer, _x(shape, seed=4), grid, F64, device=device)


def test_batchnorm_local_statistics_are_per_block():
    from hpcnn import parallel
    from tests.mpi.collective import check_all
    w = world()
    d = parallel.Distribution(w, (1, w.Get_size(), 1))
    layer = nn.BatchNorm2d(2, dtype=F64)
    dm = parallel.distribute(layer, d, bn_stats="local")
    x = _x((2, 2, 4 * w.Get_size(), 3)) * 3 + 2
    y = dm.forward(parallel.scatter(x, d)).local
    check_all(np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12), "local batch-norm: zero mean per block")


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("layer", [nn.ReLU, lambda: nn.LeakyReLU(0.1)], ids=["relu", "leaky"])
@pytest.mark.parametrize("device", device_params())
def test_activations(layer, grid, device):
    run_both(layer(), _x((3, 2, 7, 6)), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("scale,spatial", [(2, (5, 7)), ((3, 2), (4, 5))])
@pytest.mark.parametrize("device", device_params())
def test_upsample(scale, spatial, grid, device):
    run_both(nn.Upsample(scale), _x((2, 2) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_upsample3d(grid, device):
    run_both(nn.Upsample(2), _x((2, 1, 3, 4, 5)), grid, F64, device=device)


def _residual_and_skipconcat_cases():
    """(model, input) per case; the weights drawn from one generator in this order, as one loop body did."""
    rng = np.random.default_rng(6)
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=rng, dtype=F64), nn.ReLU(),
                         nn.Conv2d(2, 2, 3, padding=1, rng=rng, dtype=F64))
    identity = (nn.Residual(body), _x((2, 2, 9, 7)))
    shortcut = nn.Conv2d(2, 3, 1, stride=2, rng=rng, dtype=F64)
    body = nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, dtype=F64)
    projection = (nn.Residual(body, shortcut), _x((2, 2, 9, 7)))
    inner = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64), nn.Upsample(2))
    skip = (nn.SkipConcat(inner), _x((2, 2, 8, 10)))
    return {"residual": identity, "projection": projection, "skipconcat": skip}


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("case", ["residual", "projection", "skipconcat"])
@pytest.mark.parametrize("device", device_params())
def test_residual_and_skipconcat(case, grid, device):
    model, x = _residual_and_skipconcat_cases()[case]
    run_both(model, x, grid, F64, device=device)


def _head_cases():
    rng = np.random.default_rng(7)
    pooled = nn.Sequential(nn.GlobalAvgPool(), nn.Flatten(), nn.Linear(3, 4, rng=rng, dtype=F64))
    flat = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=rng, dtype=F64), nn.Flatten(),
                         nn.Linear(2 * 5 * 7, 3, rng=rng, dtype=F64))
    return {"globalpool-linear": (pooled, _x((5, 3, 7, 6))), "conv-flatten-linear": (flat, _x((3, 2, 5, 7)))}


@pytest.mark.parametrize("grid", GRIDS_2D, ids=grid_id)
@pytest.mark.parametrize("case", ["globalpool-linear", "conv-flatten-linear"])
@pytest.mark.parametrize("device", device_params())
def test_global_pool_flatten_linear(case, grid, device):
    head, x = _head_cases()[case]
    run_both(head, x, grid, F64, device=device)
