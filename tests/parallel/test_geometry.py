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


def _taps(o, size, kernel, stride, dilation, pad_lo):
    """The in-image input rows output o reads along one dim."""
    return [i for i in (o * stride - pad_lo + r * dilation for r in range(kernel)) if 0 <= i < size]


def _inside(point, box):
    return all(lo <= p < hi for p, (lo, hi) in zip(point, box))


@pytest.mark.parametrize("spatial,parts,kernel,stride,padding,dilation", [
    ((13, 11), (2, 2), 3, 1, 1, 1), ((12, 9), (2, 2), 5, 1, 2, 1), ((13, 10), (2, 2), 3, 2, 1, 1),
    ((12, 9), (2, 2), 3, 1, 2, 2), ((9, 8), (3, 2), 3, 1, ((0, 2), (1, 0)), 1),
    ((5, 6, 7), (1, 2, 2), 3, 1, 1, 1), ((7, 6, 6), (2, 1, 2), 3, 2, 1, 1), ((6, 7, 5), (2, 2, 2), 3, 1, 2, 2)])
def test_box_pieces_partition_every_window(spatial, parts, kernel, stride, padding, dilation):
    """Every (output, input) pair a window reads, within the extended block, falls in exactly one box: the owned
    one or a piece whose outputs hold that output; the boxes stay inside the extended block."""
    from itertools import product

    from hpcnn.geometry import WindowGeometry, box_pieces, own_rows_suffice, window_halo
    geo = WindowGeometry(len(spatial), kernel, stride, padding, dilation)
    halo = window_halo(parts, spatial, geo)
    dims = [k for k in range(len(spatial)) if parts[k] > 1]
    assert all(own_rows_suffice(halo[k]) for k in dims)
    count = 0
    for coords in product(*(range(p) for p in parts)):
        blocks = [halo[k][c] for k, c in enumerate(coords)]
        need = tuple(h.need for h in blocks)
        own, _, pieces = box_pieces(blocks, dims, spatial, geo)
        count += len(pieces)
        assert all(all(n[0] <= b[0] <= b[1] <= n[1] for b, n in zip(box, need)) for _, box, _, _ in pieces)
        for out in product(*(range(*h.out) for h in blocks)):
            taps = [_taps(o, s, *geo.along(k)[:4]) for k, (o, s) in enumerate(zip(out, spatial))]
            for point in product(*taps):
                assert _inside(point, need)
                holders = [box for out_box, box, _, _ in pieces if _inside(point, box)]
                if _inside(point, own):
                    assert not holders
                else:
                    assert len(holders) == 1
                    assert any(_inside(out, ob) for ob, box, _, _ in pieces if box == holders[0])
    assert count > 0


def _correlate(x, w, stride, dilation, pad, outputs):
    """1-D cross-correlation with per-side zero padding, written out: the reference for `piece_taps`."""
    padded = [0.0] * pad[0] + list(x) + [0.0] * pad[1]
    return [sum(w[t] * padded[o * stride + t * dilation] for t in range(len(w))) for o in range(outputs)]


def test_piece_taps_give_the_same_outputs_from_fewer_taps():
    """A box convolved with the kernel cut to `piece_taps` gives what the whole kernel gives, on random rows,
    kernels, strides, dilations and paddings; a halo row at a 3-wide kernel's edge takes one tap of three."""
    import random

    from hpcnn.geometry import piece_taps, window_output_size
    assert piece_taps(1, 1, 3, 1, 1, (0, 2)) == ((0, 1), (0, 0))
    assert piece_taps(1, 1, 3, 1, 1, (2, 0)) == ((2, 3), (0, 0))
    rng = random.Random(5)
    cut = 0
    for _ in range(3000):
        kernel, stride, dilation = rng.randint(1, 7), rng.randint(1, 3), rng.randint(1, 3)
        rows = rng.randint(1, 6)
        pad = (rng.randint(0, 8), rng.randint(0, 8))
        outputs = window_output_size(rows, kernel, stride, dilation, *pad)
        if outputs < 1:
            continue
        (t0, t1), new_pad = piece_taps(rows, outputs, kernel, stride, dilation, pad)
        assert 0 <= t0 < t1 <= kernel and min(new_pad) >= 0
        assert window_output_size(rows, t1 - t0, stride, dilation, *new_pad) == outputs
        x = [rng.uniform(-1, 1) for _ in range(rows)]
        w = [rng.uniform(-1, 1) for _ in range(kernel)]
        assert _correlate(x, w[t0:t1], stride, dilation, new_pad, outputs) == pytest.approx(
            _correlate(x, w, stride, dilation, pad, outputs), abs=1e-12)
        cut += t1 - t0 < kernel
    assert cut > 500
