"""Whole models distributed equal single-process ones: outputs, gradients, losses and SGD steps."""
import copy

import numpy as np
import pytest

from hpcnn import models, parallel, nn
from hpcnn.train import SGD
from tests.mpi.collective import SIZE, assert_close_all, check_all, grid_id, world
from tests.devices import device_params
from tests.mpi.compare import grid_sample, run_both

pytestmark = pytest.mark.mpi

F64 = np.float64


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _grids(nd=2, count=4):
    """A few grids: N only, spatial only, and mixed (always including the ones splitting H and W)."""
    grids = grid_sample(SIZE, nd)
    if len(grids) <= count:
        return grids
    picks = [grids[0], grids[-1], grids[len(grids) // 2], grids[1]]
    return list(dict.fromkeys(picks))[:count]


@pytest.mark.parametrize("grid", _grids(), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_resnet18(grid, device):
    model = models.build("resnet18", in_channels=3, num_classes=5, small_input=True, width=4, dtype=F64)
    run_both(model, _x((2, 3, 12, 10)), grid, F64, device=device)


@pytest.mark.parametrize("grid", _grids(), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_unet2d(grid, device):
    model = models.build("unet2d", in_channels=2, num_classes=3, width=4, depth=2, dtype=F64)
    run_both(model, _x((2, 2, 12, 20)), grid, F64, device=device)


@pytest.mark.parametrize("grid", _grids(), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_meshnet(grid, device):
    model = models.build("meshnet", in_channels=3, num_classes=2, widths=(4, 4, 4), dilations=(1, 2, 1), dtype=F64)
    run_both(model, _x((1, 3, 17, 13)), grid, F64, device=device)


@pytest.mark.parametrize("grid", _grids(nd=3), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_cosmoflow(grid, device):
    model = models.build("cosmoflow", in_channels=2, num_outputs=3, input_size=8, width=2, fc_sizes=(8,),
                         dtype=F64)
    run_both(model, _x((2, 2, 8, 8, 8)), grid, F64, device=device)


@pytest.mark.parametrize("grid", _grids(count=2), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_resnet18_float32(grid, device):
    model = models.build("resnet18", in_channels=3, num_classes=4, small_input=True, width=4)
    x = _x((2, 3, 11, 9)).astype(np.float32)
    run_both(model, x, grid, np.float32, device=device)


def _loss_case(loss, y, target, grid):
    w = world()
    d = parallel.Distribution(w, grid)
    ref = copy.deepcopy(loss)
    value_ref = ref.forward(y, target)
    grad_ref = ref.backward()
    dl = parallel.distribute(loss, d)
    value = dl.forward(parallel.scatter(y, d), parallel.scatter(target, d))
    assert_close_all(np.array([value]), np.array([value_ref]), F64, f"{loss.describe()} on {grid}: loss")
    assert_close_all(dl.backward().gather(), grad_ref, F64, f"{loss.describe()} on {grid}: gradient")


def _loss_cases():
    """(loss, y, target) per case; the data drawn from one generator in this order, as one loop body did."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (3, 7, 6))
    labels[0, 1, :] = -1
    return {
        "ce-pixel-ignore": (nn.CrossEntropyLoss(ignore_index=-1), rng.standard_normal((3, 4, 7, 6)), labels),
        "ce-sample": (nn.CrossEntropyLoss(), rng.standard_normal((5, 4)), rng.integers(0, 4, 5)),
        "mse-pixel": (nn.MSELoss(), rng.standard_normal((3, 2, 5, 7)), rng.standard_normal((3, 2, 5, 7))),
        "mse-sample": (nn.MSELoss(), rng.standard_normal((5, 3)), rng.standard_normal((5, 3))),
    }


@pytest.mark.parametrize("grid", grid_sample(SIZE), ids=grid_id)
@pytest.mark.parametrize("case", ["ce-pixel-ignore", "ce-sample", "mse-pixel", "mse-sample"])
def test_losses_normalized_as_one_process(case, grid):
    _loss_case(*_loss_cases()[case], grid)


@pytest.mark.parametrize("name", ["unet2d", "resnet18"])
def test_sgd_steps_match_one_process(name):
    """Several SGD steps (momentum, weight decay) on P ranks give the parameters of one process."""
    w = world()
    if name == "unet2d":
        model = models.build("unet2d", in_channels=1, num_classes=3, width=4, depth=2, dtype=F64)
        x = _x((2, 1, 8, 12))
        target = np.random.default_rng(5).integers(0, 3, (2, 8, 12))
    else:
        model = models.build("resnet18", in_channels=1, num_classes=3, small_input=True, width=4, dtype=F64)
        x = _x((3, 1, 8, 9))
        target = np.random.default_rng(5).integers(0, 3, 3)
    reference = copy.deepcopy(model)
    grid = _grids()[-1]
    d = parallel.Distribution(w, grid)
    dm = parallel.distribute(model, d)
    dloss = parallel.distribute(nn.CrossEntropyLoss(), d)
    loss = nn.CrossEntropyLoss()
    opt = SGD(dm, lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref_opt = SGD(reference, lr=0.1, momentum=0.9, weight_decay=1e-3)
    xt, tt = parallel.scatter(x, d), parallel.scatter(target, d)
    for step in range(3):
        y = dm.forward(xt)
        value = dloss.forward(y, tt)
        dm.backward(dloss.backward())
        opt.step()
        ref_value = loss.forward(reference.forward(x), target)
        reference.backward(loss.backward())
        ref_opt.step()
        assert_close_all(np.array([value]), np.array([ref_value]), F64, f"{name} loss at step {step}")
    for (pname, p, _), (_, rp, _) in zip(dm.parameters(), reference.parameters()):
        assert_close_all(p, rp, F64, f"{name} parameter {pname} after 3 steps on {grid}")
    same = w.allgather(float(sum(float(np.sum(p)) for _, p, _ in dm.parameters())))
    check_all(len(set(same)) == 1, "parameters differ between ranks")
