import os

# Keep test runs predictable on small machines: one BLAS/numba thread unless asked otherwise
# (set before numpy loads its BLAS).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    try:
        from hpcnn.backend import gpu_available
        have_gpu = gpu_available()
    except Exception:
        have_gpu = False
    if not have_gpu:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU with cupy; none here")
        for item in items:
            # The marker, not the keyword: every test under tests/gpu/ has "gpu" among its keywords.
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)
