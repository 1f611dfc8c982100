"""Softmax cross-entropy and squared error against torch.nn.functional (reduction='sum')."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpcnn import kernels as K
from tests.oracle import assert_close, seeded, to_torch

# (logits shape, ignore_index): per sample and per pixel, 2-D and 3-D.
CASES = [((6, 5), -100), ((3, 4, 5, 7), -100), ((2, 3, 3, 4, 5), 255), ((1, 1), -100), ((4, 10, 1, 1), 7)]


def _labels(shape, ignore_index, rng):
    labels = rng.integers(0, shape[1], (shape[0],) + tuple(shape[2:]))
    labels.reshape(-1)[1::3] = ignore_index
    return labels


def _torch_cross_entropy(logits, labels, ignore_index):
    t = to_torch(logits, True)
    loss = F.cross_entropy(t, torch.from_numpy(labels), reduction="sum", ignore_index=ignore_index)
    loss.backward()
    return loss.item(), t.grad.numpy()


def _case_id(value):
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("shape,ignore_index", CASES, ids=_case_id)
def test_cross_entropy_matches_torch(shape, ignore_index, dtype):
    rng = seeded(0)
    logits = (rng.standard_normal(shape) * 4).astype(dtype)
    labels = _labels(shape, ignore_index, rng)
    loss_sum, dlogits, count = K.softmax_cross_entropy(logits, labels, ignore_index=ignore_index)
    t_loss, t_grad = _torch_cross_entropy(logits, labels, ignore_index)
    assert isinstance(count, int) and count == int((labels != ignore_index).sum())
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert_close(loss_sum, t_loss, dtype, "loss")
    assert_close(dlogits, t_grad, dtype, "dlogits")


def test_cross_entropy_is_stable_for_large_logits(dtype):
    rng = seeded(1)
    logits = (rng.standard_normal((4, 6, 3, 3)) * 50 + 3e4).astype(dtype)
    labels = rng.integers(0, 6, (4, 3, 3))
    loss_sum, dlogits, count = K.softmax_cross_entropy(logits, labels)
    t_loss, t_grad = _torch_cross_entropy(logits, labels, -100)
    assert np.isfinite(loss_sum) and np.all(np.isfinite(dlogits))
    assert_close(loss_sum, t_loss, dtype, "loss")
    assert_close(dlogits, t_grad, dtype, "dlogits")


def test_cross_entropy_all_ignored():
    logits = seeded(2).standard_normal((3, 4))
    loss_sum, dlogits, count = K.softmax_cross_entropy(logits, np.full(3, -100))
    assert loss_sum == 0.0 and count == 0
    np.testing.assert_array_equal(dlogits, np.zeros_like(logits))


@pytest.mark.parametrize("bad", [5, -1, 300])
def test_cross_entropy_names_a_label_out_of_range(bad):
    labels = np.array([0, 1, bad, 2])
    with pytest.raises(ValueError, match=f"label {bad} "):
        K.softmax_cross_entropy(np.zeros((4, 5), np.float32), labels)


def test_cross_entropy_bad_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\), expected \(4, 5, 6\)"):
        K.softmax_cross_entropy(np.zeros((4, 2, 5, 6)), np.zeros((4, 3), np.int64))
    with pytest.raises(ValueError, match="integers"):
        K.softmax_cross_entropy(np.zeros((4, 2)), np.zeros(4))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5, 4), (1, 2, 3, 4, 5)], ids=lambda s: "x".join(map(str, s)))
def test_squared_error_matches_torch(shape, dtype):
    rng = seeded(3)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    loss_sum, dpred = K.squared_error(pred, target)
    t = to_torch(pred, True)
    loss = F.mse_loss(t, to_torch(target), reduction="sum")
    loss.backward()
    assert dpred.dtype == dtype
    assert_close(loss_sum, loss.item(), dtype, "loss")
    assert_close(dpred, t.grad.numpy(), dtype, "dpred")


def test_squared_error_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\), expected pred's shape \(3, 5\)"):
        K.squared_error(np.zeros((3, 5)), np.zeros((3, 4)))
