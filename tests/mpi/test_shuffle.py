"""Shuffle between distributions: correct blocks, adjoint, replicated (N, F) tensors."""
import itertools

import numpy as np
import pytest

from hpcnn import parallel
from hpcnn.backend import to_host
from tests.devices import device as open_device, device_params
from tests.mpi.collective import SIZE, check_all, grid_id, grids_for, world

pytestmark = pytest.mark.mpi


def _pairs(nd):
    grids = grids_for(SIZE, nd)
    return list(itertools.product(grids[:6], grids[-6:]))


def _pair_id(ga, gb):
    return f"{grid_id(ga, 'from')}-{grid_id(gb, 'to')}"


SHAPES = {2: [(5, 2, 7, 6), (3, 4)], 3: [(3, 2, 5, 3, 4)]}
MOVES = [pytest.param(ga, gb, shape, id=f"{_pair_id(ga, gb)}-{'x'.join(map(str, shape))}")
         for nd in (2, 3) for ga, gb in _pairs(nd) for shape in SHAPES[nd]]


@pytest.mark.parametrize("ga,gb,shape", MOVES)
@pytest.mark.parametrize("device", device_params())
def test_shuffle_moves_blocks(ga, gb, shape, device):
    rng = np.random.default_rng(11)
    dev = open_device(device)
    a, b = parallel.Distribution(world(), ga), parallel.Distribution(world(), gb)
    x = rng.standard_normal(shape)
    t = parallel.shuffle(parallel.scatter(dev.put(x), a), b)
    ok = t.distribution == b and np.array_equal(to_host(t.local), x[b.local_slices(shape)])
    check_all(ok, f"{ga} -> {gb} for {shape}")


@pytest.mark.parametrize("ga,gb", [pytest.param(ga, gb, id=_pair_id(ga, gb)) for ga, gb in _pairs(2)])
def test_shuffle_adjoint(ga, gb):
    w = world()
    rng = np.random.default_rng(w.Get_rank())
    shape = (3, 2, 9, 7)
    a, b = parallel.Distribution(w, ga), parallel.Distribution(w, gb)
    s = parallel.Shuffle(a, b, shape)
    x = parallel.DistTensor(rng.standard_normal(a.local_shape(shape)), a, shape)
    y = parallel.DistTensor(rng.standard_normal(b.local_shape(shape)), b, shape)
    lhs = w.allreduce(float(np.sum(s.forward(x).local * y.local)))
    rhs = w.allreduce(float(np.sum(x.local * s.backward(y).local)))
    check_all(abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), f"{ga} -> {gb}: {lhs} != {rhs}")
