"""Every CUDA program compiles through CuPy's own path (NVRTC, as the kernels are built at run time), float and
double, on a machine with a GPU; the missing-NVRTC message names the fix."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float", "double"])
def test_programs_compile_with_nvrtc(dtype):
    from hpcnn.kernels.gpu import _cuda, activation, conv, loss, norm, pool
    backend = _cuda.backend()
    for module in (activation, conv, loss, norm, pool):
        functions = backend.compile(module._PROGRAM, np.dtype(dtype))
        assert set(functions) == set(module._PROGRAM.kernels), module._PROGRAM.name


def test_missing_nvrtc_is_a_clear_message(monkeypatch):
    import cupy
    from hpcnn.kernels.gpu import _cuda, activation

    def broken(*args, **kwargs):
        raise OSError("libnvrtc.so.13: cannot open shared object file")
    monkeypatch.setattr(cupy, "RawModule", broken)
    with pytest.raises(RuntimeError, match=r"cupy-cuda13x\[ctk\]"):
        _cuda.backend().compile(activation._PROGRAM, np.dtype(np.float32))
