"""CrossEntropyLoss and MSELoss against torch.nn's (reduction='mean'), value and gradient."""
import math

import numpy as np
import pytest
import torch

from hpcnn import nn

from tests.oracle import assert_close, seeded, to_torch


def _labels(rng, shape, classes, ignore_index, ignored_fraction):
    labels = rng.integers(0, classes, size=shape)
    labels[rng.random(shape) < ignored_fraction] = ignore_index
    return labels.astype(np.int64)


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 5, 3), (2, 3, 2, 3, 4)], ids=["sample", "pixel2d", "pixel3d"])
@pytest.mark.parametrize("ignore_index, ignored", [(-100, 0.0), (-100, 0.3), (255, 0.3)])
def test_cross_entropy(shape, ignore_index, ignored, dtype):
    rng = seeded(0)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = _labels(rng, (shape[0],) + shape[2:], shape[1], ignore_index, ignored)
    if ignored:
        labels.flat[0] = shape[1] - 1  # at least one element counts
    loss = nn.CrossEntropyLoss(ignore_index=ignore_index)
    value = loss.forward(logits, labels)
    assert isinstance(value, float)
    t = to_torch(logits, requires_grad=True)
    tvalue = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)(t, to_torch(labels))
    tvalue.backward()
    assert_close(value, tvalue.item(), dtype, "loss")
    assert_close(loss.backward(), t.grad.numpy(), dtype, "dlogits")
    assert loss.backward().dtype == dtype


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient():
    loss = nn.CrossEntropyLoss()
    value = loss.forward(np.ones((3, 4), np.float32), np.full(3, -100))
    assert math.isnan(value)
    assert np.all(loss.backward() == 0)


def test_cross_entropy_bad_arguments():
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*labels of shape \(2, 5, 5\).*\(2, 5\)"):
        loss.forward(np.zeros((2, 3, 5, 5), np.float32), np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match="integer array"):
        loss.forward(np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="backward.*before forward"):
        nn.CrossEntropyLoss().backward()


@pytest.mark.parametrize("shape", [(5,), (4, 3), (2, 3, 4, 5)])
def test_mse(shape, dtype):
    rng = seeded(1)
    pred, target = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    loss = nn.MSELoss()
    value = loss.forward(pred, target)
    t = to_torch(pred, requires_grad=True)
    tvalue = torch.nn.MSELoss()(t, to_torch(target))
    tvalue.backward()
    assert_close(value, tvalue.item(), dtype, "loss")
    assert_close(loss.backward(), t.grad.numpy(), dtype, "dpred")


def test_mse_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"MSELoss.*\(2, 3\).*\(3, 2\)"):
        nn.MSELoss().forward(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
