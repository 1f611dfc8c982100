"""The BLAS library hpcnn's CPU kernels call: the kernel family it loads, and the private copy it may make."""
import os
import subprocess
import sys

import numpy as np

from hpcnn.kernels.cpu import _blas

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_best_family_follows_the_cpu_flags():
    avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma"}
    assert _blas.best_family(avx512) == "SKYLAKEX"
    assert _blas.best_family({"avx2", "fma", "avx512f"}) == "HASWELL"  # AVX-512 foundation alone is not enough
    assert _blas.best_family({"sse2"}) is None


def _run(env, script):
    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=_ROOT, capture_output=True, text=True)
    return out.stdout.strip().splitlines()


_REPORT = ("from hpcnn.kernels.cpu import _blas\n"
           "import numpy as np\n"
           "print(_blas._corename(_blas._SHARED)); print(_blas._corename(_blas._LIB)); print(_blas._PATH)\n"
           "a = np.arange(12, dtype=np.float32).reshape(3, 4); b = np.ones((4, 2), np.float32)\n"
           "c = np.zeros((3, 2), np.float32); _blas.gemm(a, b, c); print(np.abs(c - a @ b).max())\n")


def test_a_pinned_older_family_gets_a_private_copy_with_the_cpus_own(tmp_path):
    """OPENBLAS_CORETYPE pins numpy's copy; hpcnn's kernels run the newest family the CPU has, from a copy in
    its cache, and compute the same products. HPCNN_BLAS_CORETYPE=numpy shares numpy's copy."""
    if _blas._corename(_blas._SHARED) is None:
        import pytest
        pytest.skip("numpy's BLAS does not say which kernels it runs (not a multi-target OpenBLAS)")
    best = _blas.best_family()
    shared, used, path, err = _run({"OPENBLAS_CORETYPE": "HASWELL", "XDG_CACHE_HOME": str(tmp_path),
                                    "HPCNN_BLAS_CORETYPE": ""}, _REPORT)
    assert shared.lower() == "haswell" and float(err) == 0.0
    if best == "SKYLAKEX":
        assert used.lower() == "skylakex" and path.startswith(str(tmp_path)), (used, path)
    else:
        assert used == shared and not path.startswith(str(tmp_path))
    shared, used, path, _ = _run({"OPENBLAS_CORETYPE": "HASWELL", "XDG_CACHE_HOME": str(tmp_path),
                                  "HPCNN_BLAS_CORETYPE": "numpy"}, _REPORT)
    assert used == shared and not path.startswith(str(tmp_path))


def test_the_kernels_and_numpy_agree_whichever_library_runs():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((33, 70)), rng.standard_normal((70, 17))
    c = np.zeros((33, 17))
    _blas.gemm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-12, atol=1e-12)
