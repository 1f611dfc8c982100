"""Halo geometry without MPI: blocks, needed input rows, edge padding (checked against a 1-D window sum)."""

import numpy as np
import pytest

from hpcnn.geometry import block_range
from hpcnn.geometry import window_input_range
from hpcnn.geometry import window_output_size


@pytest.mark.parametrize("size,parts", [(7, 3), (2, 4), (37, 4), (53, 6), (0, 2)])
def test_blocks_partition_the_range(size, parts):
    blocks = [block_range(size, parts, i) for i in range(parts)]
    assert blocks[0][0] == 0 and blocks[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    lengths = [b - a for a, b in blocks]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def _window_sum_1d(x, kernel, stride, dilation, lo, hi):
    """Reference: a 1-D window op (sum of taps with weights 1..R) with zero padding (lo, hi)."""
    xp = np.concatenate([np.zeros(lo), x, np.zeros(hi)])
    n = window_output_size(len(x), kernel, stride, dilation, lo, hi)
    w = np.arange(1, kernel + 1, dtype=float)
    return np.array([sum(w[r] * xp[o * stride + r * dilation] for r in range(kernel)) for o in range(n)])


@pytest.mark.parametrize("size,kernel,stride,dilation,pad,parts", [
    (37, 3, 1, 1, (1, 1), 4), (53, 5, 2, 1, (2, 2), 3), (20, 7, 1, 2, (6, 6), 5), (9, 2, 2, 1, (0, 0), 4),
    (11, 1, 3, 1, (0, 0), 2), (16, 3, 2, 1, (0, 1), 3), (5, 3, 1, 1, (1, 1), 7)])
def test_local_windows_reproduce_the_global_one(size, kernel, stride, dilation, pad, parts):
    x = np.random.default_rng(0).standard_normal(size)
    ref = _window_sum_1d(x, kernel, stride, dilation, *pad)
    pieces = []
    for i in range(parts):
        o0, o1 = block_range(len(ref), parts, i)
        a, b, plo, phi = window_input_range(o0, o1, size, kernel, stride, dilation, pad[0])
        assert (plo == 0 or a == 0) and (phi == 0 or b == size), "padding away from the global edge"
        if o1 > o0:
            pieces.append(_window_sum_1d(x[a:b], kernel, stride, dilation, plo, phi))
    np.testing.assert_allclose(np.concatenate(pieces), ref, rtol=0, atol=1e-12)


def test_halo_reach_agrees_with_checking_every_pair_of_blocks():
    import random

    from hpcnn.geometry import WindowGeometry, halo_reach, window_halo

    def every_pair(axis):
        reach = 0
        for c, h in enumerate(axis):
            a, b = h.need
            for q, o in enumerate(axis):
                lo, hi = o.own
                if b > a and hi > lo and lo < b and a < hi:
                    reach = max(reach, abs(q - c))
        return reach

    rng = random.Random(0)
    reaches = set()
    for _ in range(1500):
        size, g = rng.randint(1, 40), rng.randint(1, 12)
        geometry = WindowGeometry(1, rng.randint(1, 7), rng.randint(1, 3), ((rng.randint(0, 4), rng.randint(0, 4)),),
                                  rng.randint(1, 3))
        axis = window_halo((g,), (size,), geometry)[0]
        reach = halo_reach(axis)
        assert reach == every_pair(axis), (size, g, geometry.kernel, geometry.stride, geometry.padding)
        reaches.add(reach)
    assert {0, 1, 2} <= reaches   # own rows only, neighbours, and further
