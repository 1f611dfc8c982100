"""The GPU benchmark's bookkeeping (FLOPs, summary) on any machine; its timing run on a GPU."""
import math

import pytest

from hpcnn.bench.kernels_gpu import DEFAULT_SUITE, ConvCase, format_table, geometric_mean_ratio, run_gpu_suite


def test_flops_count_every_multiply_add():
    case = ConvCase("c", 2, 3, 4, (8, 8), 3, 1, 1)
    assert case.output_spatial() == (8, 8)
    assert case.flops() == 2 * 2 * 4 * 3 * 9 * 64
    assert ConvCase.of({"name": "d", "n": 1, "c": 1, "k": 1, "spatial": (5, 5, 5), "kernel": 3}).output_spatial() \
        == (3, 3, 3)


def test_geometric_mean_and_table():
    rows = [{"case": "a", "op": "forward", "hpcnn_ms": 2.0, "torch_ms": 1.0, "ratio": 2.0, "hpcnn_tflops": 1.0,
             "torch_tflops": 2.0, "math": "hpcnn fp32, torch cudnn fp32"},
            {"case": "b", "op": "forward", "hpcnn_ms": 1.0, "torch_ms": 2.0, "ratio": 0.5, "hpcnn_tflops": 2.0,
             "torch_tflops": 1.0, "math": "hpcnn fp32, torch cudnn fp32"}]
    assert math.isclose(geometric_mean_ratio(rows), 1.0)
    assert "geometric-mean ratio hpcnn/torch, all: 1.000" in format_table(rows)


def test_default_suite_geometry_is_valid():
    assert all(math.prod(c.output_spatial()) > 0 for c in DEFAULT_SUITE)


@pytest.mark.gpu
def test_gpu_suite_runs():
    rows = run_gpu_suite([ConvCase("small", 2, 8, 8, (16, 16), 3, 1, 1)], repeat=1)
    assert [r["op"] for r in rows] == ["forward", "backward_data", "backward_filter"]
    assert all(r["hpcnn_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
