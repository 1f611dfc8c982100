"""The fused step's memory layout (each shared tensor and each worker buffer on cache lines of its own) and the
shared counter's takes (in order, covering a segment exactly, shrinking to single mini-batches at its end)."""
import threading

import numpy as np
import pytest

from hpcnn import chaos, models, nn
from hpcnn.chaos.fused import CACHE_LINE, line_aligned_zeros
from hpcnn.chaos.workers import Worker, run_workers


def _lines(a):
    """The cache lines (address // CACHE_LINE) that array a's elements occupy."""
    start = a.ctypes.data
    return set(range(start // CACHE_LINE, (start + max(a.nbytes, 1) - 1) // CACHE_LINE + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64])
@pytest.mark.parametrize("n", [0, 1, 7, 16, 1000])
def test_line_aligned_zeros_start_on_a_line_and_share_none(n, dtype):
    arrays = [line_aligned_zeros(n, dtype) for _ in range(4)]
    for a in arrays:
        assert a.shape == (n,) and a.dtype == dtype and not a.any()
        assert a.ctypes.data % CACHE_LINE == 0
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not _lines(a) & _lines(b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_parameter_tensor_starts_a_cache_line_and_round_trips(dtype):
    model = models.build("lenet", seed=3, dtype=dtype)
    net = chaos.FusedNetwork.from_model(model, nn.CrossEntropyLoss(), (1, 8, 8), 1)
    base = net.params.ctypes.data
    assert base % CACHE_LINE == 0 and net.velocity.ctypes.data % CACHE_LINE == 0
    ends = []
    for j, shape in enumerate(net.shapes):
        lo, hi = net.p_span[j]
        assert (base + lo * net.params.itemsize) % CACHE_LINE == 0
        assert hi - lo == int(np.prod(shape))
        ends.append((lo, hi))
    lines = [set(range((base + lo * net.params.itemsize) // CACHE_LINE,
                       (base + hi * net.params.itemsize - 1) // CACHE_LINE + 1)) for lo, hi in ends]
    for i, a in enumerate(lines):
        for b in lines[i + 1:]:
            assert not a & b, "two parameter tensors share a cache line"
    copy = models.build("lenet", seed=4, dtype=dtype)
    net.store_to(copy)
    for (name, p, _), (_, q, _) in zip(model.parameters(), copy.parameters()):
        assert np.array_equal(p, q), name


def test_workers_buffers_share_no_cache_line():
    net = chaos.FusedNetwork.from_model(models.build("lenet", seed=0), nn.CrossEntropyLoss(), (1, 8, 8), 4)
    buffers = [b for _ in range(3) for b in net.workspace()] + [net.params, net.velocity]
    for i, a in enumerate(buffers):
        assert a.ctypes.data % CACHE_LINE == 0
        for b in buffers[i + 1:]:
            assert not _lines(a) & _lines(b)


@pytest.mark.parametrize("workers, largest, first, last", [(2, 8, 3, 103), (1, 64, 0, 1438), (3, 5, 0, 2),
                                                           (2, 64, 0, 1438)])
def test_takes_cover_the_segment_in_order_and_shrink_to_one(workers, largest, first, last):
    taken, lock = [], threading.Lock()

    def one(worker, j, count):
        with lock:
            taken.append((j, count))

    seconds, clock, reached = run_workers([Worker(i) for i in range(workers)], None, largest, first, last, one)
    assert reached == last
    taken.sort()
    assert taken[0][0] == first
    for (j, count), (k, _) in zip(taken, taken[1:] + [(last, 0)]):
        assert 1 <= count <= largest and j + count == k
    counts = [count for _, count in taken]
    assert counts[-1] == 1
    assert counts == sorted(counts, reverse=True), "takes grow again"
    if last - first > 4 * workers * largest:
        assert len(taken) < 2 * (last - first) / largest, "more than twice the takes (GIL round trips) of fixed takes"
