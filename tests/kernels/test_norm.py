"""Batch-norm reductions and applications against torch.nn.functional.batch_norm (training mode)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpcnn import kernels as K
from tests.oracle import assert_close, seeded, to_torch

SHAPES = [(4, 3, 5, 7), (2, 5, 3, 4, 5), (3, 2, 1, 1), (1, 4, 9, 6), (6, 4)]
EPS = 1e-5
MOMENTUM = 0.1


def _statistics(x):
    count = x.size // x.shape[1]
    mean = K.channel_sum(x) / count
    var = K.channel_centered_sumsq(x, mean) / count
    return mean, var, 1.0 / np.sqrt(var + EPS), count


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batchnorm_training_matches_torch(shape, dtype):
    rng = seeded(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(dtype)
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    mean, var, invstd, count = _statistics(x)
    assert mean.dtype == np.float64 and var.dtype == np.float64
    y = K.batchnorm_apply(x, mean, invstd, gamma, beta)
    sum_dy, sum_dy_xhat = K.batchnorm_backward_reduce(dy, x, mean, invstd)
    dx = K.batchnorm_backward_apply(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count)

    tx, tg, tb = to_torch(x, True), to_torch(gamma, True), to_torch(beta, True)
    running_mean = torch.zeros(C, dtype=tx.dtype)
    running_var = torch.ones(C, dtype=tx.dtype)
    ty = F.batch_norm(tx, running_mean, running_var, tg, tb, training=True, momentum=MOMENTUM, eps=EPS)
    ty.backward(to_torch(dy))

    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, ty.detach().numpy(), dtype, "y")
    assert_close(dx, tx.grad.numpy(), dtype, "dx")
    assert_close(sum_dy_xhat, tg.grad.numpy(), dtype, "dgamma")
    assert_close(sum_dy, tb.grad.numpy(), dtype, "dbeta")
    # The running statistics a layer keeps: biased mean, unbiased variance.
    assert_close((1 - MOMENTUM) * 0.0 + MOMENTUM * mean, running_mean.numpy(), dtype, "running mean")
    assert_close((1 - MOMENTUM) * 1.0 + MOMENTUM * var * count / (count - 1), running_var.numpy(), dtype,
                 "running var")


def test_partial_sums_over_batch_blocks_add_up(dtype):
    """What a distributed layer relies on: the sums over blocks of the batch add to the whole."""
    rng = seeded(1)
    x = rng.standard_normal((5, 3, 4, 6)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    mean, _, invstd, _ = _statistics(x)
    parts = [x[:2], x[2:]]
    assert_close(sum(K.channel_sum(p) for p in parts), K.channel_sum(x), np.float64, "channel_sum")
    assert_close(sum(K.channel_centered_sumsq(p, mean) for p in parts), K.channel_centered_sumsq(x, mean),
                 np.float64, "centered sumsq")
    whole = K.batchnorm_backward_reduce(dy, x, mean, invstd)
    halves = [K.batchnorm_backward_reduce(dy[s], x[s], mean, invstd) for s in (slice(0, 2), slice(2, None))]
    for i in range(2):
        assert_close(halves[0][i] + halves[1][i], whole[i], np.float64, f"backward sum {i}")


def test_float32_sums_accumulate_in_float64():
    """A float32 accumulator would lose the 1.0s next to 1e8; the float64 one does not."""
    x = np.ones((1, 1, 4097), np.float32)
    x[0, 0, 0] = 1e8
    assert K.channel_sum(x)[0] == 1e8 + 4096


def test_without_affine_parameters(dtype):
    x = seeded(2).standard_normal((3, 2, 4, 4)).astype(dtype)
    dy = seeded(3).standard_normal(x.shape).astype(dtype)
    mean, _, invstd, count = _statistics(x)
    y = K.batchnorm_apply(x, mean, invstd, None, None)
    tx = to_torch(x, True)
    ty = F.batch_norm(tx, None, None, training=True, eps=EPS)
    ty.backward(to_torch(dy))
    assert_close(y, ty.detach().numpy(), dtype, "y")
    sums = K.batchnorm_backward_reduce(dy, x, mean, invstd)
    assert_close(K.batchnorm_backward_apply(dy, x, mean, invstd, None, *sums, count), tx.grad.numpy(), dtype, "dx")


def test_bad_arguments_name_the_shapes():
    x = np.zeros((2, 3, 4, 4), np.float32)
    stats = np.zeros(3)
    with pytest.raises(ValueError, match=r"\(4,\), expected \(3,\)"):
        K.batchnorm_apply(x, np.zeros(4), stats, stats, stats)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 3\), expected x's shape \(2, 3, 4, 4\)"):
        K.batchnorm_backward_reduce(x[..., :3], x, stats, stats)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 3\)"):
        K.batchnorm_backward_apply(x[..., :3], x, stats, stats, stats, stats, stats, 32)
    with pytest.raises(ValueError, match="float32 or float64"):
        K.channel_sum(x.astype(np.int64))


def test_non_contiguous_input_equals_contiguous(dtype):
    x = seeded(4).standard_normal((5, 4, 3, 6)).astype(dtype).transpose(1, 0, 3, 2)  # (4, 5, 6, 3)
    xc = np.ascontiguousarray(x)
    mean = K.channel_sum(x) / (x.size // x.shape[1])
    assert_close(mean, K.channel_sum(xc) / (x.size // x.shape[1]), np.float64, "mean")
    invstd = 1.0 / np.sqrt(K.channel_centered_sumsq(x, mean) / (x.size // x.shape[1]) + EPS)
    gamma, beta = np.arange(1.0, 6.0), np.arange(5.0)
    np.testing.assert_array_equal(K.batchnorm_apply(x, mean, invstd, gamma, beta),
                                  K.batchnorm_apply(xc, mean, invstd, gamma, beta))
