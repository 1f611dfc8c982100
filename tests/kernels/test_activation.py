"""ReLU and leaky ReLU against torch.nn.functional: forward and gradient, zeros included."""
import numpy as np
import pytest
import torch.nn.functional as F

from hpcnn import kernels as K
from tests.oracle import check_against_torch, seeded

SHAPES = [(2, 3, 7, 9), (1, 2, 3, 5, 4), (5, 7), (11,)]


def _with_zeros(shape, dtype):
    x = seeded(0).standard_normal(shape).astype(dtype)
    x.reshape(-1)[::4] = 0.0  # the kink: both sides must agree with PyTorch on the gradient at 0
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_relu_matches_torch(shape, dtype):
    x = _with_zeros(shape, dtype)
    state = {}

    def forward(a):
        state["y"] = K.relu_forward(a)
        return state["y"]

    y, dx = check_against_torch(forward, lambda dy: K.relu_backward(dy, state["y"]), F.relu, [x], dtype, "relu")
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("slope", [0.01, 0.2])
def test_leaky_relu_matches_torch(shape, slope, dtype):
    x = _with_zeros(shape, dtype)
    y, dx = check_against_torch(lambda a: K.leaky_relu_forward(a, slope),
                                lambda dy: K.leaky_relu_backward(dy, x, slope),
                                lambda t: F.leaky_relu(t, slope), [x], dtype, "leaky_relu")
    assert y.dtype == dtype and dx.dtype == dtype


def test_relu_keeps_nan_and_non_contiguous_input():
    x = np.array([[-1.0, np.nan, 2.0], [3.0, -4.0, 0.5]]).T  # a transposed view
    y = K.relu_forward(x)
    np.testing.assert_array_equal(y, np.array([[0.0, np.nan, 2.0], [3.0, 0.0, 0.5]]).T)


def test_bad_arguments_name_the_shapes():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 2\), expected y's shape \(2, 3\)"):
        K.relu_backward(x[:, :2], x)
    with pytest.raises(ValueError, match=r"\(3, 2\), expected x's shape \(2, 3\)"):
        K.leaky_relu_backward(x.T, x, 0.1)
    with pytest.raises(ValueError, match="float32 or float64"):
        K.relu_forward(np.zeros(3, np.int32))
