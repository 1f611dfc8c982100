"""Per-layer costs on hand-computed cases: compute on the extended block, halo, collectives, shuffle, memory."""
import json
import math

import pytest

from hpcnn.geometry import WindowGeometry
from perfmodel.costs import layer_cost
from perfmodel.grids import candidate_grids, grid_refusal
from perfmodel.iteration import Reduction, gradient_allreduce_time
from perfmodel.shuffle import shuffle_bytes, shuffle_time
from perfmodel.layers import LayerSpec
from perfmodel.machine import MachineProfile

A, B, F = 1e-6, 1e-9, 1e-9      # alpha, beta (s/byte), s/flop; every kernel also pays 1e-9 s per byte


@pytest.fixture
def machine():
    return MachineProfile.synthetic(per_flop=F, per_byte=1e-9, alpha=A, beta=B)


def conv_spec(n=2, c=4, k=8, h=8, w=8, kernel=3, padding=1, stride=1, bias=False):
    geo = WindowGeometry(2, kernel, stride, padding)
    out = (n, k) + geo.output_shape((h, w))
    spec = LayerSpec("conv", "conv", (n, c, h, w), out, geo, (k * c * kernel * kernel,), 0.0)
    spec.options["bias"] = bias
    return spec


def test_conv_one_rank_by_hand(machine):
    c = layer_cost(conv_spec(), (1, 1, 1), machine)
    flops = 2 * 2 * 8 * 4 * 9 * 64
    nbytes = 4 * (2 * 4 * 64 + 2 * 8 * 64 + 8 * 4 * 9)
    assert c.forward == pytest.approx(flops * F + nbytes * 1e-9)
    assert c.backward == pytest.approx(2 * (flops * F + nbytes * 1e-9))
    assert c.halo_forward == 0 and c.halo_backward == 0 and c.gradient_allreduce == 0
    # the lowered matrix (under the kernels' scratch budget), and the output and input gradients
    assert c.workspace_bytes == 2 * 4 * 9 * 64 * 4 + 4 * (2 * 4 * 64 + 2 * 8 * 64)


def test_conv_workspace_is_bounded_by_the_kernels_scratch(machine):
    from hpcnn.kernels.cpu.conv import SCRATCH_BYTES
    c = layer_cost(conv_spec(n=2, c=16, k=16, h=256, w=256), (1, 1, 1), machine)
    assert 2 * 16 * 9 * 256 * 256 * 4 > SCRATCH_BYTES
    assert c.workspace_bytes == SCRATCH_BYTES + 4 * 2 * (2 * 16 * 256 * 256)


def test_conv_h_split_halo_by_hand(machine):
    # grid (1, 2, 1): rows 0-3 and 4-7; each block needs one row from its neighbour
    c = layer_cost(conv_spec(), (1, 2, 1), machine)
    # the extended block is 5 x 8 (4 own rows + 1 halo row): the kernels price its input bytes
    flops = 2 * 2 * 8 * 4 * 9 * (4 * 8)
    nbytes = 4 * (2 * 4 * 5 * 8 + 2 * 8 * 4 * 8 + 8 * 4 * 9)
    # one split dimension: hpcnn.parallel.conv.DistConv's halo-row path adds a thin piece (the halo row in,
    # the one output row it reaches out, through the one kernel row that reaches it: a 1x3 window), and in
    # backward adds its dw into that row of dw
    piece = 2 * 2 * 8 * 4 * 3 * (1 * 8) * F + 4 * (2 * 4 * 1 * 8 + 2 * 8 * 1 * 8 + 8 * 4 * 3) * 1e-9
    add_dw = 96 * F + 2 * 96 * 4 * 1e-9
    assert c.forward == pytest.approx(flops * F + nbytes * 1e-9 + piece)
    assert c.backward == pytest.approx(2 * (flops * F + nbytes * 1e-9 + piece) + add_dw)
    block = 2 * 4 * 5 * 8 * 4                 # extended buffer
    halo = 2 * 4 * 1 * 8 * 4                  # one row of (n, c, W)
    fwd = (block + 2 * halo) * 1e-9 + A + halo * B
    assert c.halo_forward == pytest.approx(fwd)
    assert c.halo_backward == pytest.approx(fwd + (block + halo) * 1e-9)
    assert c.details["halo_bytes"] == halo
    # the kept extended input
    assert c.activation_bytes == pytest.approx(block)
    # weight gradient: 288 floats over 2 ranks, recursive doubling
    assert c.gradient_allreduce == pytest.approx(A + 288 * 4 * B)


def test_strided_conv_halo_only_on_one_side(machine):
    # stride 2, kernel 3, pad 1 on 8 rows split in two: output rows 0-1 | 2-3; block 1 (rows 4-7)
    # needs rows 3-7 (one row from below), block 0 needs rows -1..3 -> nothing from block 1
    c = layer_cost(conv_spec(kernel=3, padding=1, stride=2), (1, 2, 1), machine)
    assert c.details["halo_bytes"] == 2 * 4 * 1 * 8 * 4


def test_batchnorm_allreduces(machine):
    spec = LayerSpec("bn", "batchnorm", (4, 16, 8, 8), (4, 16, 8, 8), None, (16, 16), 0.0)
    c = layer_cost(spec, (2, 1, 2), machine)
    # 4 ranks, 16 channels: forward one collective over every rank's (count, 16 sums, 16 centered sums of
    # squares) = 4 x 33 float64, recursive doubling (2 steps); backward one allreduce of 32 values
    assert c.collective_forward == pytest.approx(2 * (A + 4 * 33 * 8 * B))
    assert c.collective_backward == pytest.approx(2 * (A + 256 * B))
    e = 2 * 16 * 8 * 4
    assert c.forward == pytest.approx(4 * e * F + 2 * e * 4 * 1e-9)


def test_global_pool_allreduce_over_the_spatial_group(machine):
    spec = LayerSpec("gap", "global_avgpool", (4, 16, 8, 8), (4, 16), None, (), 0.0)
    c = layer_cost(spec, (2, 1, 2), machine)
    assert c.collective_forward == pytest.approx(A + 2 * 16 * 8 * B)   # 2 spatial ranks, (2, 16) float64


def test_shuffle_sample_to_spatial_by_hand(machine):
    shape = (4, 3, 8, 8)
    sent, partners = shuffle_bytes(shape, (4, 1, 1), (1, 4, 1), 4)
    # keeps 2 of its 8 rows of its one sample, sends the rest to 3 others
    assert sent == 3 * (64 - 16) * 4 and partners == 3
    t = shuffle_time(shape, (4, 1, 1), (1, 4, 1), machine)
    # 192 bytes per partner is below the 256-byte Bruck threshold: log2(4) steps of half the data
    assert t == pytest.approx(2 * A + sent / 2 * 2 * B + 2 * (3 * 64 * 4) * 1e-9)
    assert shuffle_time(shape, (1, 4, 1), (1, 4, 1), machine) == 0.0


def test_gradient_allreduce_overlap():
    m0 = MachineProfile.synthetic(alpha=0.0, beta=1e-9, overlap_gradient=0.0)
    m1 = MachineProfile.synthetic(alpha=0.0, beta=1e-9, overlap_gradient=1.0)
    grads = [Reduction(1000.0, 1000.0, 2)] * 2
    ready = [1.0, 2.0]          # seconds: long backward steps hide everything but the last bucket
    exposed0, total = gradient_allreduce_time(grads, ready, m0, 2, 2.0)
    exposed1, _ = gradient_allreduce_time(grads, ready, m1, 2, 2.0)
    assert exposed0 == pytest.approx(total) and total == pytest.approx(2000 * 1e-9)
    assert exposed1 == pytest.approx(2000 * 1e-9)   # one bucket (both fit in 4 MiB), ready at the end


def test_candidate_grids_and_refusals():
    assert sorted(candidate_grids(4, 2)) == sorted([(1, 1, 4), (1, 2, 2), (1, 4, 1), (2, 1, 2), (2, 2, 1), (4, 1, 1)])
    assert len(candidate_grids(1024, 2)) == 66
    spec = conv_spec(n=2, h=4, w=4, kernel=5, padding=2)
    assert grid_refusal(spec, (4, 1, 1)) == "4 sample blocks for a batch of 2"
    assert "smaller than the halo" in grid_refusal(spec, (1, 4, 1))
    assert grid_refusal(spec, (2, 1, 1)) is None


def test_layer_call_term_by_hand():
    # a profile's per-call term: fixed + per_byte * (local input + output + parameter bytes)
    m = MachineProfile.synthetic(per_flop=F, per_byte=1e-9, alpha=A, beta=B)
    doc = m.doc
    q = lambda v: {"value": v, "source": "stated"}      # noqa: E731
    doc["layer_calls"] = {"source": "stated", "kinds": {
        "relu": {"forward": {"fixed": q(2e-5), "per_byte": q(1e-10)},
                 "backward": {"fixed": q(3e-5), "per_byte": q(0.0)}}}}
    with_calls = MachineProfile(doc)
    spec = LayerSpec("relu", "relu", (4, 16, 8, 8), (4, 16, 8, 8), None, (), 0.0)
    base = layer_cost(spec, (2, 1, 2), m)
    c = layer_cost(spec, (2, 1, 2), with_calls)
    local = 2 * 16 * 8 * 4 * 4                        # (2, 16, 8, 4) float32 block, in and out
    assert c.forward == pytest.approx(base.forward + 2e-5 + 1e-10 * 2 * local)
    assert c.backward == pytest.approx(base.backward + 3e-5)
    # kinds the profile does not name cost nothing extra
    bn = LayerSpec("bn", "batchnorm", (4, 16, 8, 8), (4, 16, 8, 8), None, (16, 16), 0.0)
    assert layer_cost(bn, (2, 1, 2), with_calls).forward == pytest.approx(layer_cost(bn, (2, 1, 2), m).forward)


def test_pointwise_conv_exchanges_nothing_under_a_spatial_split(machine):
    c = layer_cost(conv_spec(kernel=1, padding=0), (1, 2, 2), machine)
    assert c.halo_forward == 0 and c.halo_backward == 0 and c.details["halo_bytes"] == 0


def test_fresh_memory_is_paid_for_large_outputs_and_input_gradients_only():
    base = MachineProfile.synthetic(per_flop=F, per_byte=1e-9, alpha=A, beta=B)
    doc = json.loads(json.dumps(base.doc))
    doc["fresh_memory"] = {"per_byte": {"value": 1e-10, "source": "stated"},
                           "threshold_bytes": {"value": 1 << 20, "source": "stated"}}
    fresh = MachineProfile(doc)
    assert fresh.fresh_memory_time((1 << 20) - 4) == 0 and fresh.fresh_memory_time(1 << 20) == 1e-10 * (1 << 20)
    small, large = conv_spec(), conv_spec(n=2, c=8, k=16, h=128, w=128)
    for spec in (small, large):
        a, b = layer_cost(spec, (1, 1, 1), base), layer_cost(spec, (1, 1, 1), fresh)
        out_bytes, in_bytes = 4 * math.prod(spec.out_shape), 4 * math.prod(spec.in_shape)
        expect_f = fresh.fresh_memory_time(out_bytes)
        expect_b = fresh.fresh_memory_time(in_bytes)
        assert b.forward - a.forward == pytest.approx(expect_f, abs=1e-15)
        assert b.backward - a.backward == pytest.approx(expect_b, abs=1e-15)
    assert fresh.fresh_memory_time(4 * math.prod(large.out_shape)) > 0   # 2 MiB output: above the threshold
    assert base.fresh_memory_time(1 << 40) == 0                          # absent: no term (GPU pools)


def test_conv_transpose_is_priced_from_its_adjoint_halo():
    from hpcnn import nn
    from perfmodel.costs import layer_cost
    from perfmodel.layers import walk
    from perfmodel.machine import load_profile
    machine = load_profile("vm-cpu")
    spec = walk(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), (2, 8, 256, 256))[0]
    assert spec.kind == "conv_transpose" and spec.out_shape == (2, 4, 512, 512)
    whole, split, batch = (layer_cost(spec, g, machine) for g in ((1, 1, 1), (1, 2, 1), (2, 1, 1)))
    assert whole.halo_forward == whole.halo_backward == 0 == batch.halo_forward
    assert split.halo_forward > 0 and split.halo_backward > 0        # output rows written across the cut
    assert split.forward < whole.forward and batch.forward < whole.forward


def test_bilinear_upsample_exchanges_a_halo_and_costs_more_than_nearest():
    from hpcnn import nn
    from perfmodel.costs import layer_cost
    from perfmodel.layers import walk
    from perfmodel.machine import load_profile
    machine = load_profile("vm-cpu")
    near = walk(nn.Upsample(2), (2, 8, 256, 256))[0]
    lin = walk(nn.Upsample(2, mode="bilinear"), (2, 8, 256, 256))[0]
    grid = (1, 2, 1)
    assert layer_cost(lin, grid, machine).halo_forward > layer_cost(near, grid, machine).halo_forward
    assert layer_cost(lin, grid, machine).forward > layer_cost(near, grid, machine).forward


def test_the_cost_cache_never_mixes_profiles_up():
    """Costs are cached per profile: a profile created after another was freed (CPython may give it the same
    id) and a thread-count copy of a profile each get their own prices."""
    import gc
    spec = conv_spec()
    for _ in range(20):
        slow = MachineProfile.synthetic(per_flop=1e-6, per_byte=1e-9, alpha=A, beta=B)
        t_slow = layer_cost(spec, (1, 1, 1), slow).forward
        del slow
        gc.collect()
        fast = MachineProfile.synthetic(per_flop=1e-12, per_byte=1e-12, alpha=A, beta=B)
        assert layer_cost(spec, (1, 1, 1), fast).forward < t_slow / 100
        del fast
        gc.collect()
    m = MachineProfile.synthetic(per_flop=F, per_byte=1e-9, alpha=A, beta=B)
    assert m.for_threads(2).cache_key != m.cache_key
