"""The GPU kernels' host code and CUDA source, run on the CPU (see emulator.py) against the CPU kernels."""
import os

import numpy as np
import pytest

from .emulator import EmulatedBackend, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler (g++) to build the CUDA source")

os.environ.setdefault("HPCNN_GPU_EMULATE", "1")
from hpcnn.kernels import gpu  # noqa: E402
from hpcnn.kernels.gpu import _cuda  # noqa: E402

from . import kernel_cases  # noqa: E402

_BACKEND = EmulatedBackend() if compiler() else None


@pytest.fixture
def emulated():
    with _cuda.use_backend(_BACKEND):
        yield


@pytest.mark.parametrize("name, check, case", kernel_cases.all_cases(), ids=[c[0] for c in kernel_cases.all_cases()])
def test_kernel_matches_cpu(emulated, name, check, case):
    check(gpu, np.asarray, case)


@pytest.mark.parametrize("scratch", [8 << 10, 1 << 30], ids=["8KiB", "1GiB"])
@pytest.mark.parametrize("case", kernel_cases.CONV, ids=[f"conv-{i}" for i in range(len(kernel_cases.CONV))])
def test_conv_tiling_matches_cpu(emulated, monkeypatch, scratch, case):
    """Tiles of part of one image, one whole image and several images give the same result."""
    monkeypatch.setattr(_cuda, "_SCRATCH_BYTES", scratch)
    kernel_cases.check_conv(gpu, np.asarray, case)


@pytest.mark.parametrize("family", ["conv", "pool", "norm", "loss"])
def test_float64_matches_cpu(emulated, family):
    check, table = kernel_cases.CHECKS[family]
    check(gpu, np.asarray, table[0], dtype=np.float64)


def test_maxpool_backward_refuses_bad_argmax(emulated):
    dy = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="argmax entries lie outside"):
        gpu.maxpool_backward(dy, np.full(dy.shape, 99, np.int64), (4, 4))


def test_loss_refuses_out_of_range_labels(emulated):
    with pytest.raises(ValueError, match="out of range"):
        gpu.softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3]))


def test_kernel_arguments_are_checked(emulated):
    """A wrong dtype or a strided array never reaches a kernel."""
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="must be a float32 array"):
        gpu.activation._PROGRAM.launch("relu_forward", np.float32, 8, x.astype(np.float64), x, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.activation._PROGRAM.launch("relu_forward", np.float32, 4, x[::2], x[:4], 4)
