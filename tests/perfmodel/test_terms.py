"""The model's measured terms beyond the kernel fits: layout (contiguous runs of copies, pooling rows), the wait for
the slowest rank at batch-norm's statistics, concurrency between the ranks of a node; each by hand."""
import pytest

from hpcnn.geometry import WindowGeometry, slab_runs
from perfmodel.costs import layer_cost
from perfmodel.kernel_models import KernelModel, operation_features
from perfmodel.layers import LayerSpec
from perfmodel.machine import MachineProfile

PER_RUN = 5e-9


def _with(**changes):
    """A synthetic profile (1e-9 s per flop and per byte) with extra top-level fields or copy coefficients."""
    doc = MachineProfile.synthetic(per_flop=1e-9, per_byte=1e-9, alpha=1e-6, beta=1e-9).doc
    for key, value in changes.items():
        if key == "runs":
            doc["compute"]["copy"]["coef"]["runs"] = {"value": value, "source": "stated"}
        else:
            doc[key] = {"value": value, "source": "stated"}
    return MachineProfile(doc)


def conv_spec(h=32, w=32):
    geo = WindowGeometry(2, 3, 1, 1)
    return LayerSpec("conv", "conv", (2, 8, h, w), (2, 8, h, w), geo, (8 * 8 * 9,), 0.0)


def test_slab_runs_of_each_axis():
    shape = (2, 3, 4, 5, 6)
    assert slab_runs(shape, 0, 1) == 6 and slab_runs(shape, 1, 2) == 24 and slab_runs(shape, 2, 1) == 120
    assert slab_runs(shape, 2, 6) == 1      # the whole array: one run


def test_copy_features_count_runs_and_old_rows_read_as_contiguous():
    f = operation_features("copy", nbytes=4096, runs=64)
    assert f["runs"] == 64 and f["dims"] == (4096, 64.0)
    assert operation_features("copy", nbytes=4096)["runs"] == 1
    spec = {"form": "linear", "coef": {"fixed": {"value": 0.0, "source": "s"}, "bytes": {"value": 1e-10, "source": "s"},
                                       "runs": {"value": PER_RUN, "source": "s"}},
            "table": {"source": "s", "rows": [{"dims": [4096], "flops": 0.0, "bytes": 4096.0, "seconds": 4096e-10}]}}
    model = KernelModel("copy", spec)        # a table row of a profile from before the runs term: one run
    # at the row's own place the local correction returns what it measured (a row it could not read would
    # leave the fit's 4096e-10 + PER_RUN)
    assert model.predict(operation_features("copy", nbytes=4096)) == pytest.approx(4096e-10)


def test_a_w_split_halo_costs_more_than_an_h_split_by_the_runs_it_copies():
    plain, layout = _with(), _with(runs=PER_RUN)
    spec = conv_spec()
    h_plain, w_plain = (layer_cost(spec, g, plain) for g in ((1, 2, 1), (1, 1, 2)))
    assert w_plain.halo_forward == pytest.approx(h_plain.halo_forward)       # no layout term: the same bytes
    h, w = (layer_cost(spec, g, layout) for g in ((1, 2, 1), (1, 1, 2)))
    # along H every copy is n * c = 16 runs, along W n * c * 32 rows = 512: forward copies the block, packs and
    # unpacks the halo (3 copies), backward zeroes, copies, packs, unpacks, accumulates (5 copies)
    assert h.halo_forward - h_plain.halo_forward == pytest.approx(3 * 16 * PER_RUN)
    assert w.halo_forward - w_plain.halo_forward == pytest.approx(3 * 512 * PER_RUN)
    assert w.halo_backward - w_plain.halo_backward == pytest.approx(5 * 512 * PER_RUN)


def test_pooling_counts_its_output_rows():
    f2 = operation_features("pool_forward", n=2, c=3, in_spatial=(8, 8), kernel=(2, 2), out_spatial=(4, 4))
    f3 = operation_features("pool_forward", n=2, c=3, in_spatial=(8, 8, 8), kernel=(2, 2, 2), out_spatial=(4, 4, 4))
    assert f2["rows"] == 2 * 3 * 4 and f3["rows"] == 2 * 3 * 4 * 4
    spec = {"form": "linear", "coef": {"fixed": {"value": 0.0, "source": "s"}, "rows": {"value": 1e-7, "source": "s"}}}
    assert KernelModel("pool_forward", spec).predict(f3) == pytest.approx(96 * 1e-7)


def test_batchnorm_waits_for_the_slowest_rank_in_proportion_to_its_compute():
    spec = LayerSpec("bn", "batchnorm", (4, 16, 8, 8), (4, 16, 8, 8), None, (16, 16), 0.0)
    plain, waiting = _with(), _with(sync_wait=0.25)
    for grid in ((2, 1, 1), (1, 2, 2)):
        a, b = layer_cost(spec, grid, plain), layer_cost(spec, grid, waiting)
        assert b.collective_forward - a.collective_forward == pytest.approx(0.25 * a.forward)
        assert b.collective_backward - a.collective_backward == pytest.approx(0.25 * a.backward)
    alone = layer_cost(spec, (1, 1, 1), waiting)
    assert alone.collective_forward == 0 and alone.collective_backward == 0      # one rank waits for nobody
    assert MachineProfile.synthetic().sync_wait == 0.0                          # a profile without the term


def test_kernels_slow_down_when_the_other_ranks_of_the_node_are_busy():
    busy = _with(concurrency_slowdown=1.3)
    shape = dict(n=2, c=4, in_spatial=(16, 16))
    alone = busy.kernel_time("elementwise", 1, **shape)
    assert busy.kernel_time("elementwise", 2, **shape) == pytest.approx(1.3 * alone)
    spec = LayerSpec("relu", "relu", (2, 4, 16, 16), (2, 4, 16, 16), None, (), 0.0)
    one, two = layer_cost(spec, (1, 1, 1), busy), layer_cost(spec, (2, 1, 1), busy)
    # two ranks: half the samples each, every kernel 1.3x slower (the per-call terms are zero here)
    assert two.forward == pytest.approx(1.3 * one.forward / 2)


def test_each_operation_slows_down_by_its_own_measured_ratio_where_the_profile_has_one():
    doc = _with(concurrency_slowdown=1.5).doc
    doc["concurrency_slowdown_by_op"] = {"elementwise": {"value": 1.9, "source": "stated"}}
    busy = MachineProfile(doc)
    shape = dict(n=2, c=4, in_spatial=(16, 16))
    assert busy.kernel_time("elementwise", 2, **shape) == pytest.approx(1.9 * busy.kernel_time("elementwise", 1,
                                                                                                **shape))
    gemm = dict(m=64, gemm_k=64, gemm_n=64)
    assert busy.kernel_time("gemm", 2, **gemm) == pytest.approx(1.5 * busy.kernel_time("gemm", 1, **gemm))


def test_convolution_lines_are_counted_as_the_kernels_lay_the_block_out():
    """A piece one column wide along W runs with W exchanged for H (hpcnn.kernels.cpu.layout): as many lines as
    its transpose; a block 16 wide and 40 long is not exchanged and walks 40 lines of 16, its transpose 16 of 40."""
    def f(out_spatial):
        return operation_features("conv_forward", n=1, c=16, k=16, in_spatial=tuple(o + 2 for o in out_spatial),
                                  kernel=(3, 3), out_spatial=out_spatial)
    assert f((64, 1))["rows"] == f((1, 64))["rows"] == 16 * 9
    assert f((40, 16))["rows"] == 16 * 9 * 40 and f((16, 40))["rows"] == 16 * 9 * 16


def test_short_lines_are_corrected_by_their_like():
    """Two samples of the same GEMM size, one walking 40 lines of 16 measured twice as slow as its transpose
    (16 lines of 40): each shape's prediction follows its own sample."""
    def row(out_spatial, seconds):
        f = operation_features("conv_forward", n=1, c=16, k=16, in_spatial=tuple(o + 2 for o in out_spatial),
                               kernel=(3, 3), out_spatial=out_spatial)
        return {**f, "dims": list(f["dims"]), "seconds": seconds}, f
    (long_row, long_lines), (short_row, short_lines) = row((16, 40), 100e-6), row((40, 16), 200e-6)
    assert long_lines["dims"] == short_lines["dims"]
    spec = {"form": "linear", "coef": {"fixed": {"value": 150e-6, "source": "s"}},
            "table": {"source": "s", "rows": [long_row, short_row]}}
    model = KernelModel("conv_forward", spec)
    # each close to its own sample (the other, apart along the line-length axis, weighs less)
    assert model.predict(long_lines) == pytest.approx(100e-6, rel=0.1)
    assert model.predict(short_lines) == pytest.approx(200e-6, rel=0.1)
