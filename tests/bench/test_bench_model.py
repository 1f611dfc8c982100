"""`hpcnn bench model`: held-out cases, each configuration counted once, errors as the rows say."""
import csv
import json

import numpy as np
import pytest

from hpcnn.bench import model as bench_model
from hpcnn.cli import main
from perfmodel.machine import MachineProfile


def test_errors_are_relative_to_the_measurement_with_their_sign():
    e = bench_model.errors([(1.0, 1.1), (2.0, 1.0), (4.0, 4.0), (0.0, 3.0), (1.0, float("nan"))])
    assert e["count"] == 3
    assert e["median"] == pytest.approx(0.1) and e["largest"] == pytest.approx(0.5)
    assert e["bias"] == pytest.approx((0.1 - 0.5 + 0.0) / 3)


def test_a_plan_that_is_one_grid_is_measured_once(tmp_path):
    machine = MachineProfile.synthetic(ranks_per_node=2)
    jobs, predictions = bench_model._jobs(bench_model.HELD_OUT, ["meshnet"], 2, machine, 1)
    labels = [j["label"] for j in jobs]
    assert len(labels) == len(set(labels))
    kind, value = predictions[("meshnet", "plan")][0], predictions[("meshnet", "plan")][1]
    if kind == "same":
        assert "plan" not in labels and value in labels
    else:
        assert "plan" in labels


def test_the_held_out_models_are_not_the_readme_scaling_cases():
    readme = {("meshnet", (18, 1024, 1024)), ("resnet18", (3, 64, 64)), ("cosmoflow", (4, 64, 64, 64))}
    assert not {(m, s) for m, s, _, _ in bench_model.HELD_OUT.values()} & readme
    # the fresh set shares no network and size with either
    fresh = {(m, s) for m, s, _, _ in bench_model.FRESH.values()}
    assert not fresh & readme and not fresh & {(m, s) for m, s, _, _ in bench_model.HELD_OUT.values()}


def test_the_fresh_set_runs_and_refuses_to_record(tmp_path):
    """`--set fresh` measures its own networks (one here, one rank) and says so in model.json; --record with it
    is refused (the profile records the held-out set's errors)."""
    out = tmp_path / "fresh"
    assert main(["bench", "model", "--set", "fresh", "--models", "meshnet-thin", "--ranks", "1", "--iterations", "1",
                 "--machine", "vm-cpu", "--out", str(out)]) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["set"] == "fresh" and set(doc["held_out"]["models"]) == {"meshnet-thin"}
    rows = list(csv.DictReader(open(out / "model_iterations.csv")))
    assert rows and {r["model"] for r in rows} == {"meshnet-thin"}
    with pytest.raises(SystemExit, match="--record"):
        main(["bench", "model", "--set", "fresh", "--record", "--machine", "vm-cpu", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown model"):
        main(["bench", "model", "--set", "fresh", "--models", "unet2d", "--machine", "vm-cpu", "--out", str(out)])


def test_one_model_on_one_rank_writes_consistent_files(tmp_path):
    out = tmp_path / "model"
    assert main(["bench", "model", "--models", "meshnet", "--ranks", "1", "--iterations", "1", "--machine", "vm-cpu",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "model_iterations.csv")))
    doc = json.loads((out / "model.json").read_text())
    rel = [(float(r["predicted_s"]) - float(r["measured_s"])) / float(r["measured_s"]) for r in rows]
    assert doc["held_out"]["per_iteration"]["count"] == len(rows)
    assert doc["held_out"]["per_iteration"]["median"] == pytest.approx(float(np.median(np.abs(rel))))
    assert doc["held_out"]["per_iteration"]["bias"] == pytest.approx(float(np.mean(rel)))
    assert set(doc["in_sample"]["kernel_fit_median_abs"]) >= {"conv_forward", "gemm"}
    cpu = [float(r["measured_cpu_s"]) for r in rows]
    rel_cpu = [(float(r["predicted_s"]) - c) / c for r, c in zip(rows, cpu)]
    assert doc["held_out"]["per_iteration_cpu"]["median"] == pytest.approx(float(np.median(np.abs(rel_cpu))))
    wall = sum(float(r["measured_s"]) for r in rows)
    assert doc["held_out"]["cpu_share"] == pytest.approx(sum(cpu) / wall)


def test_the_cpu_share_is_cpu_over_wall_of_the_iterations():
    rows = [(1, "m", "1x1x1", 2.0, 1.0, False, 1.0), (1, "m", "2x1x1", 2.0, 1.0, False, 2.0)]
    assert bench_model.cpu_share(rows) == pytest.approx(0.75)
