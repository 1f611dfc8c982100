"""Element-wise and batch-norm kernels with a call's work cut over several worker threads equal one loop."""
import numpy as np
import pytest

from hpcnn import kernels as K
from hpcnn.kernels.cpu import _workers
from tests.oracle import seeded


def _serial_results(x, dy, mean, invstd, gamma, beta):
    return {"relu": K.relu_forward(x), "relu_bwd": K.relu_backward(dy, K.relu_forward(x)),
            "leaky": K.leaky_relu_forward(x, 0.1), "leaky_bwd": K.leaky_relu_backward(dy, x, 0.1),
            "sum": K.channel_sum(x), "sumsq": K.channel_centered_sumsq(x, mean),
            "apply": K.batchnorm_apply(x, mean, invstd, gamma, beta),
            "reduce": np.stack(K.batchnorm_backward_reduce(dy, x, mean, invstd)),
            "bwd_apply": K.batchnorm_backward_apply(dy, x, mean, invstd, gamma, *K.batchnorm_backward_reduce(
                dy, x, mean, invstd), x.size // x.shape[1])}


@pytest.mark.parametrize("shape", [(3, 5, 17, 13), (1, 3, 7, 9, 11)])
def test_split_over_threads_equals_one_loop(shape, three_threads):
    rng = seeded(50)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    c = shape[1]
    mean, invstd = rng.standard_normal(c), 1 + rng.random(c)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    split = _serial_results(x, dy, mean, invstd, gamma, beta)
    assert len(three_threads) >= 9 and all(n > 1 for n in three_threads)
    three_threads.clear()
    _workers.thread_count = lambda: 1   # restored by monkeypatch with the rest
    serial = _serial_results(x, dy, mean, invstd, gamma, beta)
    for key in serial:
        # element-wise results are bit-identical; the sums add per-part partial sums (a different order)
        if key in ("sum", "sumsq", "reduce", "bwd_apply"):
            np.testing.assert_allclose(split[key], serial[key], rtol=1e-12, atol=1e-12, err_msg=key)
        else:
            np.testing.assert_array_equal(split[key], serial[key], err_msg=key)


def test_balanced_blocks_cover_every_unit_and_give_each_thread_an_equal_share():
    from hpcnn.kernels.cpu._im2col import chunk
    rng = seeded(51)
    balanced = 0
    for _ in range(3000):
        items, size, parts = int(rng.integers(1, 9)), int(rng.integers(1, 5000)), int(rng.integers(1, 5))
        per_item, least = int(rng.integers(1, min(size, 40) + 1)), int(rng.choice([1, 64]))
        block, count = _workers.balanced_blocks(items, per_item, size, parts, least)
        default = -(-size // per_item)
        # what _im2col.chunk walks: `count` blocks of `block` units cover the item once
        assert count == -(-size // block) and (count - 1) * block < size <= count * block
        assert [chunk(i, size, block)[0] for i in range(items * count)] == [n for n in range(items) for _ in range(count)]
        if block != default:
            assert (items * count) % parts == 0 and block >= least and per_item <= count <= 2 * per_item + parts
            balanced += 1
    assert balanced > 500
    # 8 images, 3 images a block over 2 threads: 4 blocks of 2 (2 + 2 images each, not 3 + 5)
    assert _workers.balanced_blocks(1, 3, 8, 2) == (2, 4)
    # one 128x128 image in 5 blocks over 2 threads: 6 blocks
    assert _workers.balanced_blocks(1, 5, 16384, 2, 64) == (2731, 6)
    # already balanced, or one part: as asked
    assert _workers.balanced_blocks(2, 5, 1000, 2) == (200, 5)
    assert _workers.balanced_blocks(1, 5, 1000, 1) == (200, 5)


@pytest.mark.parametrize("shape, scale", [((3, 5, 7, 6), (2, 3)), ((1, 3, 4, 5, 3), (2, 1, 3))])
def test_upsampling_split_over_threads_repeats_and_sums_blocks(shape, scale, three_threads):
    x = seeded(52).standard_normal(shape)
    y = K.upsample_nearest_forward(x, scale)
    expect = x
    for axis, f in enumerate(scale):
        expect = np.repeat(expect, f, axis=2 + axis)
    np.testing.assert_array_equal(y, expect)
    dy = seeded(53).standard_normal(y.shape)
    dx = K.upsample_nearest_backward(dy, scale)
    blocks = dy.reshape(shape[:2] + tuple(v for s, f in zip(shape[2:], scale) for v in (s, f)))
    np.testing.assert_allclose(dx, blocks.sum(axis=tuple(range(3, blocks.ndim, 2))), rtol=1e-12, atol=1e-12)
    assert three_threads == [shape[0] * shape[1]] * 2
