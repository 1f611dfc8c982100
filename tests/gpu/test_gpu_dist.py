"""Distributed layers on GPU arrays (ranks sharing one GPU) equal the single-process CPU model."""
import numpy as np
import pytest

from .device_models import small_cnn, to_gpu
from .kernel_cases import assert_close

pytestmark = [pytest.mark.gpu, pytest.mark.mpi]

_GRIDS = {1: (1, 1, 1), 2: (1, 2, 1), 3: (1, 3, 1), 4: (2, 2, 1)}


def test_distributed_cnn_on_gpu_equals_single_process():
    import cupy
    from mpi4py import MPI
    from hpcnn import parallel
    from hpcnn.backend import select_gpu_for_rank
    from hpcnn.kernels import gpu
    select_gpu_for_rank()
    gpu.set_tf32(False)
    comm = MPI.COMM_WORLD
    grid = _GRIDS.get(comm.Get_size())
    if grid is None:
        pytest.skip("grids for 1 to 4 ranks only")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 17, 16)).astype(np.float32)
    model = small_cnn()
    y_ref = model.forward(x)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = model.backward(dy)

    d = parallel.Distribution(comm, grid=grid)
    dm = parallel.distribute(to_gpu(model), d)
    yt = dm.forward(parallel.scatter(cupy.asarray(x), d))
    y = yt.gather()
    dxt = dm.backward(parallel.scatter(cupy.asarray(dy), d))
    dx = dxt.gather()
    failures = []
    for what, got, want in [("forward", y, y_ref), ("dx", dx, dx_ref)] + [
            (f"d{name}", g_gpu, g_cpu) for (name, _, g_cpu), (_, _, g_gpu) in zip(model.parameters(), dm.parameters())]:
        try:
            assert_close(got, want, what)
        except AssertionError as e:
            failures.append(str(e))
    # A collective verdict, so that one failing rank does not leave the others waiting.
    all_failures = comm.allgather(failures)
    assert not any(all_failures), all_failures
