"""Run an nn model in one process and distributed over a grid; compare outputs and every gradient."""
import copy

import numpy as np

from hpcnn import parallel
from tests.mpi.collective import assert_close_all, world

__all__ = ["run_both", "grid_sample"]


def run_both(model, x, grid, dtype, seed=0, steps=1, **options):
    """Forward + backward of `model` on the global `x` single-process and on `grid`; assert equality.

    Returns the distributed model. Compares y, dx, every parameter gradient and every state array.
    """
    w = world()
    reference = copy.deepcopy(model)
    d = parallel.Distribution(w, grid)
    dm = parallel.distribute(model, d, **options)
    rng = np.random.default_rng(seed + 1000)
    where = f"{type(model).__name__} grid {grid} x {x.shape}"
    for step in range(steps):
        y_ref = reference.forward(x)
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx_ref = reference.backward(dy)
        yt = dm.forward(parallel.scatter(x, d))
        assert_close_all(yt.gather(), y_ref, dtype, f"{where} forward")
        dxt = dm.backward(parallel.scatter(dy, yt.distribution))
        assert_close_all(dxt.gather(), dx_ref, dtype, f"{where} dx")
        for (name, _, g), (rname, _, rg) in zip(dm.parameters(), reference.parameters()):
            assert_close_all(g, rg, dtype, f"{where} d{name}")
        for (name, s), (_, rs) in zip(model.state(), reference.state()):
            assert_close_all(s, rs, dtype, f"{where} state {name}")
    return dm


def grid_sample(size, nd=2, limit=None):
    """Grids of `size` ranks that split N, each spatial axis, and several at once."""
    from tests.mpi.collective import grids_for
    grids = grids_for(size, nd)
    return grids if limit is None else grids[:limit]
