"""One table of shapes per kernel family and one check per family: a GPU kernel against the CPU kernel.

Used by the emulated CPU tests, the `gpu`-marked tests and tests/gpu/run_gpu_checks.py (which runs
where pytest is missing), so it imports only numpy and hpcnn (torch lazily, for the CUDA oracle).
`impl` is the kernel module under test (hpcnn.kernels.gpu), `dev` moves a numpy array to its
device, and `torch_device` ("cuda" or None) adds PyTorch on that device as a second reference.
"""
import zlib

import numpy as np

from hpcnn.backend import host_scalars, to_host
from hpcnn.kernels import cpu

__all__ = ["CONV", "POOL", "NORM", "ACTIVATION", "LOSS", "UPSAMPLE", "CHECKS", "all_cases", "assert_close",
           "exact_float32_gpu"]

_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def assert_close(actual, expected, what, dtype=None):
    """Max-abs error within the relative tolerance of `dtype` (default: expected's) of the largest expected magnitude."""
    actual, expected = to_host(actual), to_host(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    if actual.dtype.kind in "iu":
        assert np.array_equal(actual, expected), f"{what}: integer results differ"
        return
    ref = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    tol = _TOL[np.dtype(expected.dtype if dtype is None else dtype)]
    assert err <= tol * ref, f"{what}: max abs error {err:.3e} > {tol:g} * {ref:.3e}"


def _rng(case):
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


# (N, C, K, spatial, kernel, stride, padding, dilation, bias)
CONV = [
    (2, 3, 4, (9, 8), 3, 1, 1, 1, True),
    (2, 3, 4, (9, 8), 3, 2, ((0, 1), (2, 0)), 1, False),
    (1, 2, 3, (11, 10), 5, 1, "same", 2, True),
    (2, 3, 5, (32, 33), 1, 1, 0, 1, True),           # 1x1 read directly (>= 1024 pixels)
    (3, 4, 2, (6, 7), 1, 2, 0, 1, False),             # strided 1x1 (ResNet downsampling)
    (1, 3, 4, (15, 16), 7, 2, 3, 1, True),            # ResNet stem
    (2, 2, 3, (20, 17), 3, 1, 1, 1, False),           # more pixels than a small scratch tile
    (2, 2, 3, (4, 3), 5, 1, 2, 1, True),              # window larger than the image
    (2, 2, 3, (5, 6, 7), 3, 1, 1, 1, True),
    (1, 2, 2, (6, 5, 7), (3, 1, 3), (2, 1, 2), (1, 0, 1), (1, 1, 2), False),
    (2, 3, 2, (4, 5, 6), 1, 1, 0, 1, True),
]

# (kind, shape, kernel, stride, padding, dilation, integer-valued input for ties)
POOL = [
    ("max", (2, 3, 8, 8), 2, None, 0, 1, False),
    ("max", (2, 3, 9, 7), 3, 2, 1, 1, True),
    ("max", (1, 2, 9, 9), 3, 1, 1, 2, True),
    ("max", (2, 2, 4, 6, 6), 2, None, 0, 1, False),
    ("max", (1, 2, 3, 7, 6), (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, True),
    ("avg", (2, 3, 9, 7), 3, 2, 1, 1, False),
    ("avg", (2, 3, 8, 8), 2, None, 0, 1, False),
    ("avg", (1, 2, 5, 6, 7), 2, 1, (1, 0, 1), 1, False),
]

NORM = [(2, 3, (5, 4)), (3, 4, (2, 3, 5)), (6, 5, ())]

ACTIVATION = [(3, 4, 5), (2, 3, 4, 5, 6), (7,)]

# (logits shape, number of classes is shape[1]); ignore_index -100 on some elements
LOSS = [(6, 5), (2, 3, 4, 5), (2, 4, 3, 2, 2)]

# (shape, scale)
UPSAMPLE = [((2, 3, 4, 5), 2), ((1, 2, 2, 3, 4), (1, 2, 3))]


def _torch(torch_device, *arrays):
    import torch
    return [torch.as_tensor(to_host(a), device=torch_device) for a in arrays]


def check_conv(impl, dev, case, dtype=np.float32, torch_device=None):
    n, c, k, spatial, kernel, stride, padding, dilation, with_bias = case
    nd = len(spatial)
    rng = _rng(case)
    ksize = (kernel,) * nd if isinstance(kernel, int) else kernel
    x = rng.standard_normal((n, c) + spatial).astype(dtype)
    w = rng.standard_normal((k, c) + ksize).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if with_bias else None
    y_ref = cpu.conv_forward(x, w, b, stride, padding, dilation)
    y = impl.conv_forward(dev(x), dev(w), None if b is None else dev(b), stride, padding, dilation)
    assert_close(y, y_ref, f"conv_forward {case}")
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = impl.conv_backward_data(dev(dy), dev(w), spatial, stride, padding, dilation)
    dx_ref = cpu.conv_backward_data(dy, w, spatial, stride, padding, dilation)
    assert_close(dx, dx_ref, f"conv_backward_data {case}")
    dw = impl.conv_backward_filter(dev(x), dev(dy), ksize, stride, padding, dilation)
    assert_close(dw, cpu.conv_backward_filter(x, dy, ksize, stride, padding, dilation), f"conv_backward_filter {case}")
    assert_close(impl.conv_backward_bias(dev(dy)), cpu.conv_backward_bias(dy), f"conv_backward_bias {case}")
    if torch_device is not None:
        import torch.nn.functional as F
        from hpcnn.geometry import WindowGeometry
        g = WindowGeometry(nd, ksize, stride, padding, dilation)
        tx, tw, tdy = _torch(torch_device, x, w, dy)
        tx.requires_grad_(True)
        tw.requires_grad_(True)
        pad = [p for lo_hi in reversed(g.padding) for p in lo_hi]
        conv = F.conv2d if nd == 2 else F.conv3d
        ty = conv(F.pad(tx, pad), tw, None if b is None else _torch(torch_device, b)[0], g.stride, 0, g.dilation)
        ty.backward(tdy)
        assert_close(y, ty.detach().cpu().numpy(), f"conv_forward vs torch {case}")
        assert_close(dx, tx.grad.cpu().numpy(), f"conv_backward_data vs torch {case}")
        assert_close(dw, tw.grad.cpu().numpy(), f"conv_backward_filter vs torch {case}")


def check_pool(impl, dev, case, dtype=np.float32, torch_device=None):
    kind, shape, kernel, stride, padding, dilation, ties = case
    rng = _rng(case)
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    spatial = shape[2:]
    if kind == "max":
        y_ref, a_ref = cpu.maxpool_forward(x, kernel, stride, padding, dilation)
        y, a = impl.maxpool_forward(dev(x), kernel, stride, padding, dilation)
        assert_close(y, y_ref, f"maxpool_forward {case}")
        assert_close(a, a_ref, f"maxpool_forward argmax {case}")
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx = impl.maxpool_backward(dev(dy), a, spatial)
        assert_close(dx, cpu.maxpool_backward(dy, a_ref, spatial), f"maxpool_backward {case}")
    else:
        y_ref = cpu.avgpool_forward(x, kernel, stride, padding)
        y = impl.avgpool_forward(dev(x), kernel, stride, padding)
        assert_close(y, y_ref, f"avgpool_forward {case}")
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dx = impl.avgpool_backward(dev(dy), spatial, kernel, stride, padding)
        assert_close(dx, cpu.avgpool_backward(dy, spatial, kernel, stride, padding), f"avgpool_backward {case}")
    if torch_device is not None and not isinstance(padding, str):
        import torch.nn.functional as F
        nd = len(spatial)
        pad = padding if isinstance(padding, int) else tuple(padding)
        tx, = _torch(torch_device, x)
        if kind == "max":
            fn = F.max_pool2d if nd == 2 else F.max_pool3d
            ty, ta = fn(tx, kernel, stride, pad, dilation, return_indices=True)
            assert_close(y, ty.cpu().numpy(), f"maxpool_forward vs torch {case}")
            assert_close(a, ta.cpu().numpy(), f"maxpool argmax vs torch {case}")
        else:
            fn = F.avg_pool2d if nd == 2 else F.avg_pool3d
            ty = fn(tx, kernel, stride, pad, count_include_pad=True)
            assert_close(y, ty.cpu().numpy(), f"avgpool_forward vs torch {case}")


def check_norm(impl, dev, case, dtype=np.float32, torch_device=None):
    n, c, spatial = case
    rng = _rng(case)
    x = (rng.standard_normal((n, c) + spatial) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    count = x.size // c
    s = impl.channel_sum(dev(x))
    assert_close(s, cpu.channel_sum(x), f"channel_sum {case}")
    mean = cpu.channel_sum(x) / count
    assert_close(impl.channel_centered_sumsq(dev(x), dev(mean)), cpu.channel_centered_sumsq(x, mean),
                 f"channel_centered_sumsq {case}")
    invstd = 1.0 / np.sqrt(cpu.channel_centered_sumsq(x, mean) / count + 1e-5)
    gamma = rng.standard_normal(c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    for g, b in ((gamma, beta), (None, None)):
        y = impl.batchnorm_apply(dev(x), dev(mean), dev(invstd), None if g is None else dev(g),
                                 None if b is None else dev(b))
        assert_close(y, cpu.batchnorm_apply(x, mean, invstd, g, b), f"batchnorm_apply {case}")
    sums = impl.batchnorm_backward_reduce(dev(dy), dev(x), dev(mean), dev(invstd))
    sums_ref = cpu.batchnorm_backward_reduce(dy, x, mean, invstd)
    for got, want, name in zip(sums, sums_ref, ("sum_dy", "sum_dy_xhat")):
        assert_close(got, want, f"batchnorm_backward_reduce {name} {case}")
    dx = impl.batchnorm_backward_apply(dev(dy), dev(x), dev(mean), dev(invstd), dev(gamma), dev(sums_ref[0]),
                                       dev(sums_ref[1]), count)
    assert_close(dx, cpu.batchnorm_backward_apply(dy, x, mean, invstd, gamma, *sums_ref, count),
                 f"batchnorm_backward_apply {case}")
    if torch_device is not None:
        import torch.nn.functional as F
        tx, tdy, tg, tb = _torch(torch_device, x, dy, gamma, beta)
        tx.requires_grad_(True)
        ty = F.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
        ty.backward(tdy)
        y = impl.batchnorm_apply(dev(x), dev(mean), dev(invstd), dev(gamma), dev(beta))
        assert_close(y, ty.detach().cpu().numpy(), f"batchnorm forward vs torch {case}")
        assert_close(dx, tx.grad.cpu().numpy(), f"batchnorm dx vs torch {case}")


def check_activation(impl, dev, case, dtype=np.float32, torch_device=None):
    rng = _rng(case)
    x = rng.standard_normal(case).astype(dtype)
    x.reshape(-1)[:3] = 0  # the gradient at zero follows PyTorch
    dy = rng.standard_normal(case).astype(dtype)
    y = impl.relu_forward(dev(x))
    assert_close(y, cpu.relu_forward(x), f"relu_forward {case}")
    assert_close(impl.relu_backward(dev(dy), y), cpu.relu_backward(dy, cpu.relu_forward(x)), f"relu_backward {case}")
    assert_close(impl.leaky_relu_forward(dev(x), 0.1), cpu.leaky_relu_forward(x, 0.1), f"leaky_relu_forward {case}")
    assert_close(impl.leaky_relu_backward(dev(dy), dev(x), 0.1), cpu.leaky_relu_backward(dy, x, 0.1),
                 f"leaky_relu_backward {case}")
    if torch_device is not None:
        import torch
        tx, = _torch(torch_device, x)
        assert_close(y, torch.relu(tx).cpu().numpy(), f"relu vs torch {case}")


def check_loss(impl, dev, case, dtype=np.float32, torch_device=None):
    rng = _rng(case)
    logits = (rng.standard_normal(case) * 4).astype(dtype)
    labels = rng.integers(0, case[1], (case[0],) + case[2:])
    labels.reshape(-1)[::3] = -100
    loss, dl, count = impl.softmax_cross_entropy(dev(logits), dev(labels), -100)
    loss_ref, dl_ref, count_ref = cpu.softmax_cross_entropy(logits, labels, -100)
    loss, count = host_scalars(loss, count)
    assert count == count_ref, f"softmax_cross_entropy count {count} != {count_ref} {case}"
    assert_close(np.float64(loss), np.float64(loss_ref), f"softmax_cross_entropy loss {case}", dtype)
    assert_close(dl, dl_ref, f"softmax_cross_entropy dlogits {case}")
    target = rng.standard_normal(case).astype(dtype)
    se, dp = impl.squared_error(dev(logits), dev(target))
    se, = host_scalars(se)
    se_ref, dp_ref = cpu.squared_error(logits, target)
    assert_close(np.float64(se), np.float64(se_ref), f"squared_error {case}", dtype)
    assert_close(dp, dp_ref, f"squared_error dpred {case}")
    if torch_device is not None:
        import torch.nn.functional as F
        tl, tlab = _torch(torch_device, logits.astype(np.float64), labels)
        ref = F.cross_entropy(tl, tlab, ignore_index=-100, reduction="sum").item()
        assert_close(np.float64(loss), np.float64(ref), f"softmax_cross_entropy vs torch {case}", dtype)


def check_upsample(impl, dev, case, dtype=np.float32, torch_device=None):
    shape, scale = case
    rng = _rng(case)
    x = rng.standard_normal(shape).astype(dtype)
    y = impl.upsample_nearest_forward(dev(x), scale)
    assert_close(y, cpu.upsample_nearest_forward(x, scale), f"upsample_nearest_forward {case}")
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(impl.upsample_nearest_backward(dev(dy), scale), cpu.upsample_nearest_backward(dy, scale),
                 f"upsample_nearest_backward {case}")


CHECKS = {"conv": (check_conv, CONV), "pool": (check_pool, POOL), "norm": (check_norm, NORM),
          "activation": (check_activation, ACTIVATION), "loss": (check_loss, LOSS),
          "upsample": (check_upsample, UPSAMPLE)}


def all_cases():
    """(id, check, case) for every row of every table."""
    return [(f"{family}-{i}", check, case) for family, (check, table) in CHECKS.items()
            for i, case in enumerate(table)]


def exact_float32_gpu():
    """(hpcnn.kernels.gpu, cupy.asarray, torch device or None) with TF32 off everywhere.

    The references must be exact float32: TF32 would be 1e-3 off.
    """
    import cupy
    from hpcnn.kernels import gpu
    try:
        import torch
        torch_device = "cuda" if torch.cuda.is_available() else None
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    except ImportError:
        torch_device = None
    gpu.set_tf32(False)
    return gpu, cupy.asarray, torch_device
