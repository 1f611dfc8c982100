"""Run an nn model in one process on the CPU and distributed over a grid on a device; compare outputs and every
gradient."""
import copy

import numpy as np

from hpcnn import parallel
from hpcnn.backend import array_module, to_host
from tests.devices import device as open_device
from tests.mpi.collective import assert_close_all, check_all, world

__all__ = ["run_both", "grid_sample"]


def run_both(model, x, grid, dtype, device="cpu", seed=0, steps=1, **options):
    """Forward + backward of `model` on the global `x` single-process on the CPU and on `grid` on `device`;
    assert equality.

    `model` moves to the device (in place). Returns the distributed model. Compares y, dx, every
    parameter gradient and every state array, each copied to the host.
    """
    w = world()
    dev = open_device(device)
    reference = copy.deepcopy(model).to(open_device("cpu"))
    d = parallel.Distribution(w, grid)
    dm = parallel.distribute(model.to(dev), d, **options)
    rng = np.random.default_rng(seed + 1000)
    where = f"{type(model).__name__} grid {grid} x {x.shape} on {device}"
    for step in range(steps):
        y_ref = reference.forward(x)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx_ref = reference.backward(dy)
        yt = dm.forward(parallel.scatter(dev.put(x), d))
        check_all(array_module(yt.local) is dev.xp, f"{where}: the output is a {type(yt.local).__module__} array")
        assert_close_all(to_host(yt.gather()), y_ref, dtype, f"{where} forward")
        dxt = dm.backward(parallel.scatter(dev.put(dy), yt.distribution))
        assert_close_all(to_host(dxt.gather()), dx_ref, dtype, f"{where} dx")
        for (name, _, g), (rname, _, rg) in zip(dm.parameters(), reference.parameters()):
            assert_close_all(to_host(g), rg, dtype, f"{where} d{name}")
        for (name, s), (_, rs) in zip(model.state(), reference.state()):
            assert_close_all(to_host(s), rs, dtype, f"{where} state {name}")
    return dm


def grid_sample(size, nd=2, limit=None):
    """Grids of `size` ranks that split N, each spatial axis, and several at once."""
    from tests.mpi.collective import grids_for
    grids = grids_for(size, nd)
    return grids if limit is None else grids[:limit]
