"""distribute(model, plan=...): per-layer grids with shuffles where they change equal one process."""
import copy

import numpy as np
import pytest

from hpcnn import models, parallel
from hpcnn.backend import to_host
from hpcnn.parallel import Plan
from tests.devices import device as open_device, device_params
from tests.mpi.collective import assert_close_all, world

pytestmark = pytest.mark.mpi

F64 = np.float64


def _compare(model, plan, x, device):
    w = world()
    dev = open_device(device)
    reference = copy.deepcopy(model)
    dm = parallel.distribute(model.to(dev), plan=plan)
    first = parallel.Distribution(w, plan.grid_for(next(model.named_leaves())[0]))
    y_ref = reference.forward(x)
    dy = np.random.default_rng(9).standard_normal(y_ref.shape)
    dx_ref = reference.backward(dy)
    yt = dm.forward(parallel.scatter(dev.put(x), first))
    assert_close_all(to_host(yt.gather()), y_ref, F64, f"plan forward on {device}")
    dxt = dm.backward(parallel.scatter(dev.put(dy), yt.distribution))
    assert_close_all(to_host(dxt.gather()), dx_ref, F64, f"plan dx on {device}")
    for (name, _, g), (_, _, rg) in zip(dm.parameters(), reference.parameters()):
        assert_close_all(to_host(g), rg, F64, f"plan d{name} on {device}")


@pytest.mark.parametrize("device", device_params())
def test_resnet_spatial_body_sample_head(device):
    p = world().Get_size()
    model = models.build("resnet18", in_channels=2, num_classes=3, small_input=True, width=4, dtype=F64)
    names = [n for n, _ in model.named_leaves()]
    head = {n: (p, 1, 1) for n in names if n.startswith(("avgpool", "flatten", "fc"))}
    middle = {n: (1, 1, p) for n in names if n.startswith("layer2")}
    plan = Plan(p, (1, p, 1), {**head, **middle})
    _compare(model, plan, np.random.default_rng(1).standard_normal((4, 2, 10, 9)), device)


@pytest.mark.parametrize("device", device_params())
def test_unet_alternating_grids(device):
    p = world().Get_size()
    model = models.build("unet2d", in_channels=1, num_classes=2, width=4, depth=2, dtype=F64)
    names = [n for n, _ in model.named_leaves()]
    grids = [(1, p, 1), (1, 1, p), (p, 1, 1)]
    plan = Plan(p, (1, p, 1), {n: grids[i % 3] for i, n in enumerate(names)})
    _compare(model, plan, np.random.default_rng(2).standard_normal((2, 1, 8, 12)), device)


@pytest.mark.parametrize("device", device_params())
def test_cosmoflow_flatten_after_shuffle(device):
    p = world().Get_size()
    model = models.build("cosmoflow", in_channels=1, num_outputs=2, input_size=8, width=2, fc_sizes=(4,),
                         dtype=F64)
    names = [n for n, _ in model.named_leaves()]
    tail = {n: (p, 1, 1, 1) for n in names[names.index("flatten"):]}
    plan = Plan(p, (1, 1, p, 1), tail)
    _compare(model, plan, np.random.default_rng(3).standard_normal((2, 1, 8, 8, 8)), device)
