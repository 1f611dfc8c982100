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
    monkeypatch.setattr(_cuda, "scratch_bytes", lambda: scratch)
    kernel_cases.check_conv(gpu, np.asarray, case)


@pytest.mark.parametrize("family", ["conv", "pool", "norm", "loss"])
def test_float64_matches_cpu(emulated, family):
    check, table = kernel_cases.CHECKS[family]
    check(gpu, np.asarray, table[0], dtype=np.float64)


def test_maxpool_backward_poisons_dx_for_a_bad_argmax(emulated):
    """No host check (it would stall the stream): a corrupt argmax makes its block's dx NaN."""
    dy = np.ones((1, 2, 2, 2), np.float32)
    argmax = np.zeros(dy.shape, np.int64)
    argmax[0, 1, 0, 0] = 99
    dx = gpu.maxpool_backward(dy, argmax, (4, 4))
    assert np.isnan(dx[0, 1]).any() and np.isfinite(dx[0, 0]).all()


def test_loss_makes_out_of_range_labels_nan(emulated):
    """No host check: an out-of-range label makes the loss NaN (the trainer stops on it); count stays exact."""
    loss, dl, count = gpu.softmax_cross_entropy(np.zeros((3, 3), np.float32), np.array([0, 3, -100]))
    assert np.isnan(loss) and np.isnan(dl[1]).all() and np.isfinite(dl[0]).all() and int(count) == 2


def test_block_reduction_over_many_parts(emulated, monkeypatch):
    """Channels longer than one block's share: several parts per channel, summed in a second pass."""
    from hpcnn.kernels.gpu import norm
    monkeypatch.setattr(norm, "_PER_THREAD", 1)
    x = np.random.default_rng(3).standard_normal((3, 2, 1000)).astype(np.float32)
    assert norm._parts(2, 3 * 1000, norm._PROGRAM.threads_per_block) > 1
    kernel_cases.assert_close(gpu.channel_sum(x), kernel_cases.cpu.channel_sum(x), "channel_sum, many parts")


def test_kernel_arguments_are_checked(emulated):
    """A wrong dtype or a strided array never reaches a kernel."""
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="must be a float32 array"):
        gpu.activation._PROGRAM.launch("relu_forward", np.float32, 8, x.astype(np.float64), x, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu.activation._PROGRAM.launch("relu_forward", np.float32, 4, x[::2], x[:4], 4)
