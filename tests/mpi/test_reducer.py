"""Bucketed gradient allreduce: sums every gradient over all ranks, with and without overlap."""
import numpy as np
import pytest

from hpcnn import parallel
from tests.mpi.collective import check_all, world


class _Layer:
    def __init__(self, shapes, rank):
        self.params = {k: np.zeros(s) for k, s in shapes.items()}
        self.grads = {k: np.full(s, float(rank + 1) * (i + 1)) for i, (k, s) in enumerate(shapes.items())}


pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("bucket_bytes", [64, 1 << 20])
def test_buckets_sum_gradients(overlap, bucket_bytes):
    w = world()
    n = w.Get_size()
    layers = [_Layer({"weight": (3, 4), "bias": (3,)}, w.Get_rank()), _Layer({"weight": (5,)}, w.Get_rank()),
              _Layer({"weight": (2, 2, 3)}, w.Get_rank())]
    r = parallel.GradientReducer(w, layers, bucket_bytes=bucket_bytes, overlap=overlap)
    for _ in range(2):
        for layer in layers:
            for i, k in enumerate(layer.grads):
                layer.grads[k][...] = (w.Get_rank() + 1) * (i + 1)
        r.begin()
        for layer in reversed(layers):
            r.ready(layer)
        r.finish()
        total = n * (n + 1) / 2
        ok = all(np.all(layer.grads[k] == total * (i + 1)) for layer in layers for i, k in enumerate(layer.grads))
        check_all(ok, "summed gradients")
    # backward order: bucket {layer3 weight 96 B}, {layer2 weight 40 B + layer1 bias 24 B = 64 B}, {layer1 weight 96 B}
    # at 64 bytes; everything in one bucket at 1 MiB
    check_all(len(r.buckets) == (3 if bucket_bytes == 64 else 1), f"{len(r.buckets)} buckets of {bucket_bytes} bytes")


def test_slices_are_gathered_whole():
    """A parameter split over every rank (each computes one block of rows, nobody shares it): no sum, and the
    allgather gives every rank the whole gradient; beside it a whole parameter is summed as before."""
    from hpcnn.geometry import block_range
    w = world()
    n, me = w.Get_size(), w.Get_rank()
    comm = parallel.Communicator.of(w)
    layers = [_Layer({"weight": (7, 3), "bias": (2,)}, me)]
    pieces = tuple((slice(*block_range(7, n, r)),) for r in range(n))
    split = parallel.GradientSlice(pieces, parallel.Communicator.local(), comm)
    r = parallel.GradientReducer(w, layers, slices=lambda layer: {"weight": split})
    layer = layers[0]
    layer.grads["weight"][...] = -1.0
    layer.grads["weight"][pieces[me]] = me + 1
    layer.grads["bias"][...] = 1.0
    r.begin()
    r.ready(layer)
    r.finish()
    expected = np.concatenate([np.full((b - a, 3), q + 1.0) for q, (a, b) in
                               enumerate(block_range(7, n, k) for k in range(n))])
    check_all(np.array_equal(layer.grads["weight"], expected), f"gathered {layer.grads['weight'][:, 0]}")
    check_all(np.all(layer.grads["bias"] == n), f"summed {layer.grads['bias']}")
    mine = (block_range(7, n, me)[1] - block_range(7, n, me)[0]) * 3 * 8
    check_all((r.reduce_bytes, r.gather_bytes) == ((2 * 8 if n > 1 else 0), (7 * 3 * 8 - mine if n > 1 else 0)),
              f"bytes {(r.reduce_bytes, r.gather_bytes)}")


def test_pieces_that_do_not_tile_are_refused():
    w = world()
    layer = _Layer({"weight": (4,)}, 0)
    half = parallel.GradientSlice(((slice(0, 2),),), parallel.Communicator.local(), None)
    with pytest.raises(ValueError, match="do not tile"):
        parallel.GradientReducer(w, [layer], slices=lambda _: {"weight": half})
