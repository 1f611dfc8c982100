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
