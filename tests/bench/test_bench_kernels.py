"""`hpcnn bench kernels --quick` runs end to end and writes every expected row."""
import json
import math
import statistics

import pytest

from hpcnn.bench import kernels as bench
from hpcnn.cli import main

POOL_AND_NORM_OPS = ["maxpool forward", "maxpool backward", "avgpool forward", "avgpool backward",
                     "batchnorm forward", "batchnorm backward"]


def test_bench_kernels_quick_writes_every_row(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    table = tmp_path / "kernels.csv"
    assert main(["bench", "kernels", "--quick", "--json", str(out), "--csv", str(table)]) == 0
    result = json.loads(out.read_text())
    expected = [(op, bench._describe(case)) for case in bench.QUICK_CONV_SUITE for op in bench.CONV_OPS]
    conv_rows = [(r["op"], r["shape"]) for r in result["rows"] if r["op"].startswith("conv")]
    assert conv_rows == expected
    assert [r["op"] for r in result["rows"][len(expected):]] == POOL_AND_NORM_OPS
    assert result["threads"]["blas"] == 1 and result["matmul_peak_gflops"] > 0
    for row in result["rows"]:
        assert row["hpcnn_ms"] > 0 and row["torch_ms"] > 0
        assert abs(row["ratio"] - row["hpcnn_ms"] / row["torch_ms"]) < 1e-9
    # the geometric mean and the worst of the convolution rows' ratios, recomputed from the rows
    ratios = [r["ratio"] for r in result["rows"] if r["op"] in bench.CONV_OPS]
    assert len(ratios) == len(expected)
    geomean = math.exp(statistics.fmean(math.log(x) for x in ratios))
    assert min(ratios) <= result["conv_geomean_ratio"] <= max(ratios)
    assert result["conv_geomean_ratio"] == pytest.approx(geomean, rel=1e-12)
    worst = max((r for r in result["rows"] if r["op"] in bench.CONV_OPS), key=lambda r: r["ratio"])
    assert result["conv_worst"] == {"op": worst["op"], "shape": worst["shape"], "ratio": worst["ratio"]}
    assert len(table.read_text().splitlines()) == len(result["rows"]) + 1
    printed = capsys.readouterr().out
    assert "geometric mean" in printed and "matmul peak" in printed


def test_bench_kernels_gpu_without_a_gpu_says_so(capsys, monkeypatch):
    from hpcnn import backend
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    assert main(["bench", "kernels", "--device", "gpu"]) == 2
    assert "gpu" in capsys.readouterr().err


def test_bench_kernels_cpu_clock(tmp_path, capsys):
    """--clock cpu times by process CPU time, and only on one thread."""
    out = tmp_path / "kernels.json"
    assert main(["bench", "kernels", "--quick", "--clock", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clock"] == "cpu" and all(row["hpcnn_ms"] > 0 for row in result["rows"])
    assert "cpu clock" in capsys.readouterr().out
    assert main(["bench", "kernels", "--quick", "--clock", "cpu", "--threads", "2"]) == 2
    assert "--threads 1" in capsys.readouterr().err
