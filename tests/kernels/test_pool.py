"""Max and average pooling against torch.nn.functional: forward, argmax, gradients, errors."""
import numpy as np
import pytest
import torch.nn.functional as F

from hpcnn import kernels as K
from tests.oracle import assert_close, check_against_torch, seeded, to_torch

# (input shape, kernel, stride, padding): odd sizes, kernels 2/3, strides 1/2, padding 0/1, 2-D and 3-D.
CASES = [
    ((2, 3, 7, 9), 2, 2, 0),
    ((2, 3, 8, 6), 2, 2, 0),
    ((2, 3, 7, 9), 2, 1, 0),
    ((2, 3, 7, 9), 3, 1, 1),
    ((1, 2, 8, 11), 3, 2, 1),
    ((2, 2, 5, 6), 3, 2, 0),
    ((1, 3, 9, 7), 2, 2, 1),
    ((1, 2, 6, 5), (3, 2), (1, 2), (1, 0)),
    ((2, 2, 5, 6, 7), 2, 2, 0),
    ((1, 3, 5, 4, 7), 3, 1, 1),
    ((2, 2, 7, 5, 6), 3, 2, 1),
    ((1, 2, 4, 5, 7), (1, 2, 2), (1, 2, 2), 0),
    ((1, 2, 5, 5, 5), 2, 1, 0),
]


def _ids(case):
    shape, k, s, p = case
    return f"{'x'.join(map(str, shape))}-k{k}-s{s}-p{p}".replace(" ", "")


def _torch_pool(kind, nd):
    return getattr(F, f"{kind}_pool{nd}d")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_maxpool_matches_torch(case, dtype):
    shape, kernel, stride, padding = case
    nd = len(shape) - 2
    x = seeded(0).standard_normal(shape).astype(dtype)
    state = {}

    def forward(a):
        y, state["argmax"] = K.maxpool_forward(a, kernel, stride, padding)
        return y

    y, _ = check_against_torch(forward, lambda dy: K.maxpool_backward(dy, state["argmax"], shape[2:]),
                               lambda t: _torch_pool("max", nd)(t, kernel, stride, padding),
                               [x], dtype, f"maxpool{nd}d")
    _, t_index = _torch_pool("max", nd)(to_torch(x), kernel, stride, padding, return_indices=True)
    assert state["argmax"].dtype == np.int64
    np.testing.assert_array_equal(state["argmax"], t_index.numpy())


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4], CASES[9], CASES[10]], ids=_ids)
def test_maxpool_ties_and_padding_match_torch(case, dtype):
    """Few distinct values (many ties) and all-negative inputs next to padding: same argmax as PyTorch."""
    shape, kernel, stride, padding = case
    nd = len(shape) - 2
    pool = _torch_pool("max", nd)
    for x in (seeded(2).integers(-3, 0, shape).astype(dtype), np.full(shape, -5.0, dtype)):
        y, argmax = K.maxpool_forward(x, kernel, stride, padding)
        t_y, t_index = pool(to_torch(x), kernel, stride, padding, return_indices=True)
        np.testing.assert_array_equal(y, t_y.numpy())
        np.testing.assert_array_equal(argmax, t_index.numpy())


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((2, 2, 9, 11), 3, 1, 1, 2),
    ((1, 2, 7, 8, 9), 2, 2, 1, (1, 2, 2)),
], ids=["2d", "3d"])
def test_maxpool_dilation_matches_torch(shape, kernel, stride, padding, dilation, dtype):
    nd = len(shape) - 2
    x = seeded(3).standard_normal(shape).astype(dtype)
    y, argmax = K.maxpool_forward(x, kernel, stride, padding, dilation)
    t_y, t_index = _torch_pool("max", nd)(to_torch(x), kernel, stride, padding, dilation, return_indices=True)
    assert_close(y, t_y.numpy(), dtype, "dilated maxpool")
    np.testing.assert_array_equal(argmax, t_index.numpy())


@pytest.mark.parametrize("shape,padding", [
    ((2, 3, 7, 8), ((1, 0), (0, 1))),
    ((1, 2, 5, 6, 7), ((0, 1), (1, 1), (1, 0))),
], ids=["2d", "3d"])
def test_per_side_padding_equals_explicit_padding(shape, padding, dtype):
    """(lo, hi) padding, as a distributed layer uses at a global edge only."""
    nd = len(shape) - 2
    x = seeded(4).standard_normal(shape).astype(dtype)
    torch_pad = tuple(v for lo_hi in reversed(padding) for v in lo_hi)
    padded_inf = F.pad(to_torch(x), torch_pad, value=-np.inf)
    padded_zero = F.pad(to_torch(x), torch_pad, value=0.0)
    y, _ = K.maxpool_forward(x, 3, 2, padding)
    assert_close(y, _torch_pool("max", nd)(padded_inf, 3, 2).numpy(), dtype, "maxpool (lo, hi)")
    y = K.avgpool_forward(x, 3, 2, padding)
    assert_close(y, _torch_pool("avg", nd)(padded_zero, 3, 2).numpy(), dtype, "avgpool (lo, hi)")


@pytest.mark.parametrize("shape,kernel,padding,dilation", [
    ((1, 2, 3, 1), (1, 2), (0, 1), (1, 2)),
    ((1, 2, 1, 3), (2, 1), (1, 0), (2, 1)),
], ids=["w", "h"])
def test_window_wholly_in_padding_gives_minus_inf_and_no_gradient(shape, kernel, padding, dilation):
    """Taps at -1 and +1 of a size-1 axis both read padding: -inf, argmax -1, no gradient."""
    x = seeded(10).standard_normal(shape)
    y, argmax = K.maxpool_forward(x, kernel, 1, padding, dilation)
    assert y.shape == x.shape
    assert np.all(y == -np.inf) and np.all(argmax == -1)
    np.testing.assert_array_equal(K.maxpool_backward(np.ones_like(y), argmax, shape[2:]), np.zeros_like(x))


def test_maxpool_backward_accumulates_overlaps():
    """Kernel 3, stride 1 on 4x4: all four windows contain (1, 1), the maximum, so it collects all four gradients."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = 1.0
    y, argmax = K.maxpool_forward(x, 3, 1, 0)
    np.testing.assert_array_equal(argmax, np.full((1, 1, 2, 2), 5))
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = np.zeros_like(x)
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(K.maxpool_backward(dy, argmax, x.shape[2:]), expected)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_avgpool_matches_torch(case, dtype):
    shape, kernel, stride, padding = case
    nd = len(shape) - 2
    x = seeded(5).standard_normal(shape).astype(dtype)
    check_against_torch(lambda a: K.avgpool_forward(a, kernel, stride, padding),
                        lambda dy: K.avgpool_backward(dy, shape[2:], kernel, stride, padding),
                        lambda t: _torch_pool("avg", nd)(t, kernel, stride, padding, count_include_pad=True),
                        [x], dtype, f"avgpool{nd}d")


def test_stride_defaults_to_kernel():
    x = seeded(6).standard_normal((1, 2, 9, 7))
    y, _ = K.maxpool_forward(x, 3)
    assert y.shape == (1, 2, 3, 2)
    assert K.avgpool_forward(x, 3).shape == (1, 2, 3, 2)
    assert_close(K.avgpool_forward(x, 3), F.avg_pool2d(to_torch(x), 3).numpy(), np.float64, "default stride")


def test_output_keeps_dtype():
    for dtype in (np.float32, np.float64):
        x = seeded(7).standard_normal((1, 1, 4, 4)).astype(dtype)
        y, argmax = K.maxpool_forward(x, 2)
        assert y.dtype == dtype and argmax.dtype == np.int64
        assert K.maxpool_backward(y, argmax, (4, 4)).dtype == dtype
        assert K.avgpool_forward(x, 2).dtype == dtype
        assert K.avgpool_backward(y, (4, 4), 2).dtype == dtype


def test_bad_arguments_name_the_shapes():
    x = np.zeros((1, 2, 6, 6), np.float32)
    y, argmax = K.maxpool_forward(x, 2)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\)"):
        K.maxpool_backward(y, argmax[:, :, :2], (6, 6))
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 3\), expected \(1, 2, 3, 3\)"):
        K.avgpool_backward(y[:, :, :2], (6, 6), 2)
    with pytest.raises(ValueError, match=r"\(2, 6, 6\)"):
        K.maxpool_forward(x[0], 2)
    with pytest.raises(ValueError, match="float32 or float64"):
        K.avgpool_forward(x.astype(np.int32), 2)
    with pytest.raises(ValueError, match="outside"):
        K.maxpool_backward(y, argmax + 100, (6, 6))


def test_non_contiguous_input_equals_contiguous():
    x = seeded(8).standard_normal((3, 2, 9, 8)).transpose(1, 0, 3, 2)  # (2, 3, 8, 9), a strided view
    y, argmax = K.maxpool_forward(x, 3, 2, 1)
    y_c, argmax_c = K.maxpool_forward(np.ascontiguousarray(x), 3, 2, 1)
    np.testing.assert_array_equal(y, y_c)
    np.testing.assert_array_equal(argmax, argmax_c)
    np.testing.assert_array_equal(K.avgpool_forward(x, 3, 2, 1), K.avgpool_forward(np.ascontiguousarray(x), 3, 2, 1))
    dy = seeded(9).standard_normal(y.shape)[..., ::-1]
    np.testing.assert_array_equal(K.maxpool_backward(dy, argmax, x.shape[2:]),
                                  K.maxpool_backward(np.ascontiguousarray(dy), argmax, x.shape[2:]))


def test_kernels_run_concurrently_from_threads():
    """The CHAOS engine calls kernels from several threads at once: results equal serial calls."""
    from concurrent.futures import ThreadPoolExecutor
    xs = [seeded(20 + i).standard_normal((2, 3, 12, 10)).astype(np.float32) for i in range(4)]
    serial = [K.maxpool_forward(x, 3, 1, 1) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda x: K.maxpool_forward(x, 3, 1, 1), xs))
    for (y, a), (yt, at) in zip(serial, threaded):
        np.testing.assert_array_equal(y, yt)
        np.testing.assert_array_equal(a, at)


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 5, 4, 6, 7)])
def test_volumes_split_over_threads_equal_one_call(shape, three_threads):
    """One call's volumes cut over 3 worker threads (odd B, uneven parts) give what one loop over all gives."""
    from hpcnn.kernels.cpu import _workers
    x = seeded(40).standard_normal(shape)

    def results():
        y, a = K.maxpool_forward(x, 3, 2, 1)
        dy = seeded(41).standard_normal(y.shape)
        avg = K.avgpool_forward(x, 2, 1, 1)
        return [y, a, K.maxpool_backward(dy, a, shape[2:]), avg,
                K.avgpool_backward(seeded(42).standard_normal(avg.shape), shape[2:], 2, 1, 1)]
    split = results()
    assert three_threads == [shape[0] * shape[1]] * 4
    _workers.thread_count = lambda: 1   # restored by the fixture's monkeypatch
    for got, expect in zip(split, results()):
        np.testing.assert_array_equal(got, expect)
