"""Convolutions thin along the last axis run with that axis exchanged for a longer one, with the same results."""
import numpy as np
import pytest

from hpcnn import kernels
from hpcnn.kernels.cpu import conv as direct
from hpcnn.kernels.cpu import layout


@pytest.mark.parametrize("seed", range(6))
def test_thin_outputs_agree_with_the_direct_kernels(seed):
    rng = np.random.default_rng(seed)
    swapped = 0
    for _ in range(40):
        nd = int(rng.integers(2, 4))
        c, k = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        stride = tuple(int(v) for v in rng.integers(1, 3, nd))
        dilation = tuple(int(v) for v in rng.integers(1, 3, nd))
        padding = tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (nd, 2)))
        spatial = [int(v) for v in rng.integers(8, 40, nd)]
        spatial[-1] = int(rng.integers(1, 6))
        spatial = [max(s, (r - 1) * d + 1 - lo - hi) for s, r, d, (lo, hi) in zip(spatial, kernel, dilation, padding)]
        x = rng.standard_normal((2, c) + tuple(spatial))
        w = rng.standard_normal((k, c) + kernel)
        y = kernels.conv_forward(x, w, np.arange(k, dtype=x.dtype), stride, padding, dilation)
        np.testing.assert_allclose(y, direct.conv_forward(x, w, np.arange(k, dtype=x.dtype), stride, padding,
                                                          dilation), rtol=0, atol=1e-10)
        np.testing.assert_allclose(kernels.conv_backward_data(y, w, x.shape[2:], stride, padding, dilation),
                                   direct.conv_backward_data(y, w, x.shape[2:], stride, padding, dilation),
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(kernels.conv_backward_filter(x, y, kernel, stride, padding, dilation),
                                   direct.conv_backward_filter(x, y, kernel, stride, padding, dilation),
                                   rtol=0, atol=1e-9)
        assert y.flags.c_contiguous
        swapped += layout._swap(y.shape[2:]) is not None
    assert swapped > 10   # the exchanged path was exercised


def test_which_outputs_count_as_thin():
    assert layout._swap((512, 2)) == 0
    assert layout._swap((4, 512, 3)) == 1
    assert layout._swap((512, 512)) is None      # not thin
    assert layout._swap((20, 16)) is None        # thin, but nothing much longer to exchange it with
    assert layout._swap((1, 64)) is None


def test_refused_arguments_keep_the_kernels_messages():
    x = np.zeros((1, 2, 16, 3), np.float32)
    with pytest.raises(ValueError, match="conv_forward"):
        kernels.conv_forward(x, np.zeros((2, 3, 3, 3), np.float32))
