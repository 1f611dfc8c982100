"""The devices a test body runs on, as mpi4py's tests loop over array backends: cpu, emulated-gpu, and gpu
where CuPy sees one (marked `gpu`, so it is skipped elsewhere). Importable without pytest (the GPU check
runners use `device`)."""
from hpcnn.backend import open_device

__all__ = ["DEVICES", "device_params", "device"]

DEVICES = ("cpu", "emulated-gpu", "gpu")


def device_params(names=DEVICES):
    """pytest params of device names; "gpu" carries the gpu marker."""
    import pytest
    return [pytest.param(n, id=n, marks=pytest.mark.gpu) if n == "gpu" else pytest.param(n, id=n) for n in names]


_opened = {}


def device(name):
    """The hpcnn.backend.Device called `name` (opened once per process; on a GPU with exact float32 products,
    TF32 off, since the references are exact)."""
    if name not in _opened:
        _opened[name] = open_device(name)
        if name == "gpu":
            from hpcnn.kernels import gpu
            gpu.set_tf32(False)
    return _opened[name]
