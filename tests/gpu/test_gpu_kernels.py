"""Every GPU kernel against the CPU kernel and PyTorch on CUDA (float32, 1e-4), on a machine with a GPU."""
import numpy as np
import pytest

from . import kernel_cases

pytestmark = pytest.mark.gpu

_CASES = kernel_cases.all_cases()


@pytest.fixture(scope="module")
def device():
    return kernel_cases.exact_float32_gpu()


@pytest.mark.parametrize("name, check, case", _CASES, ids=[c[0] for c in _CASES])
def test_kernel_matches_cpu_and_torch(device, name, check, case):
    gpu, dev, torch_device = device
    check(gpu, dev, case, torch_device=torch_device)


@pytest.mark.parametrize("family", ["conv", "pool", "norm", "loss"])
def test_float64_matches_cpu(device, family):
    gpu, dev, _ = device
    check, table = kernel_cases.CHECKS[family]
    check(gpu, dev, table[0], dtype=np.float64)


def test_dispatch_sends_cupy_arrays_to_the_gpu_kernels(device):
    """hpcnn.kernels picks the GPU implementation for a cupy array and returns a cupy array."""
    import cupy
    from hpcnn import kernels
    x = cupy.asarray(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    w = cupy.asarray(np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32))
    y = kernels.conv_forward(x, w, None, 1, 1)
    assert isinstance(y, cupy.ndarray)
    kernel_cases.assert_close(y, kernels.cpu.conv_forward(x.get(), w.get(), None, 1, 1), "dispatched conv")


def test_large_image_tiles_within_scratch(device):
    """A 1024^2 image with 32 channels: im2col is 288 MiB per image, so it is cut into tiles."""
    import cupy
    gpu, dev, torch_device = device
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 32, 1024, 1024)).astype(np.float32)
    w = (rng.standard_normal((16, 32, 3, 3)) / 17).astype(np.float32)
    y = gpu.conv_forward(dev(x), dev(w), None, 1, 1)
    if torch_device is not None:
        import torch
        import torch.nn.functional as F
        ref = F.conv2d(torch.as_tensor(x, device="cuda"), torch.as_tensor(w, device="cuda"), padding=1)
        kernel_cases.assert_close(y, ref.cpu().numpy(), "1024^2 conv vs torch")
    else:
        kernel_cases.assert_close(y[:, :, :64, :64], kernel_cases.cpu.conv_forward(x[:, :, :65, :65], w, None, 1, 1)
                                  [:, :, :64, :64], "1024^2 conv corner vs cpu")
    cupy.get_default_memory_pool().free_all_blocks()
