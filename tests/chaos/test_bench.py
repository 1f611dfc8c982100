"""`hpcnn bench chaos --quick`: the smoke run writes a table, CSV, JSON and a plot with every setting."""
import csv
import json

import pytest

from hpcnn.cli import main
from perfmodel import chaos as chaos_model


def test_quick_benchmark_writes_csv_json_and_png(tmp_path, capsys):
    out = {ext: tmp_path / f"chaos.{ext}" for ext in ("csv", "json", "png")}
    code = main(["bench", "chaos", "--quick", "--csv", str(out["csv"]), "--json", str(out["json"]),
                 "--png", str(out["png"])])
    assert code == 0
    printed = capsys.readouterr().out
    assert "thread settings" in printed and "images/s" in printed
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    chaos_rows = [r for r in rows if r["step"] != "pytorch"]
    assert [(r["workers"], r["blas_threads"]) for r in chaos_rows] == [("1", "1"), ("2", "1"), ("1", "2")]
    one = chaos_rows[0]
    for r in chaos_rows:
        assert float(r["images_per_second"]) > 0
        assert 0.0 <= float(r["val_accuracy"]) <= 1.0
        # one repeat: the speedup is this setting's images/s over one worker's; accuracy against one worker's
        assert float(r["speedup"]) == pytest.approx(float(r["images_per_second"]) / float(one["images_per_second"]),
                                                    rel=1e-12)
        assert r["sequential_sgd_accuracy"] == one["val_accuracy"]
        assert float(r["accuracy_points_vs_sequential"]) == pytest.approx(
            100 * (float(r["val_accuracy"]) - float(one["val_accuracy"])), abs=1e-9)
    assert float(one["speedup"]) == 1.0 and float(one["predicted_speedup"]) == 1.0
    assert chaos_rows[2]["predicted_speedup"] == ""      # the model predicts one BLAS thread per worker
    torch_rows = [r for r in rows if r["step"] == "pytorch"]
    assert len(torch_rows) == 1 and float(torch_rows[0]["images_per_second"]) > 0
    one_thread = float(torch_rows[0]["images_per_second"])      # quick mode: PyTorch on 1 thread only
    # like with like: 1 worker x 1 BLAS thread against PyTorch on 1 thread; settings on 2 cores have no pair
    assert float(one["torch_images_per_second"]) == one_thread
    assert float(one["ratio_vs_torch"]) == pytest.approx(float(one["images_per_second"]) / one_thread, rel=1e-12)
    for r in chaos_rows[1:]:
        assert r["torch_images_per_second"] == "" and r["ratio_vs_torch"] == ""
    report = json.loads(out["json"].read_text())
    assert len(report["rows"]) == len(rows)
    for written, r in zip(rows, report["rows"]):
        assert written["network"] == r["network"] and float(written["images_per_second"]) == r["images_per_second"]
    costs = report["networks"]["lenet"]["costs"]
    assert costs["samples"] == 300 and 0 <= costs["gil_seconds"] < costs["sample_seconds"]
    # the prediction is the model on the calibrated inputs (a loaded machine may predict two workers slower than one)
    predicted = chaos_model.predict(chaos_model.ChaosCosts(**costs), 2)["speedup"]
    assert 0 < predicted <= 2.0
    assert float(chaos_rows[1]["predicted_speedup"]) == pytest.approx(predicted, rel=1e-9)
    assert costs["contention"] >= 0 and set(costs["sources"]) == {
        "sample_seconds", "gil_seconds", "serial_seconds", "thread_seconds", "contention"}
    assert out["png"].read_bytes()[:4] == b"\x89PNG"


def test_the_pytorch_comparison_trains_the_same_network():
    import numpy as np
    import torch

    from hpcnn import models
    from hpcnn.nn.torch_mirror import copy_into_torch, torch_mirror
    from tests.oracle import assert_close
    model = models.build("lenet", input_size=32, seed=3)
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = copy_into_torch(model, torch_mirror(model))(torch.from_numpy(x)).numpy()
    assert_close(model.forward(x), expected, np.float32, "lenet32 in PyTorch")
