"""`hpcnn plan`: the table, the plan JSON that hpcnn.parallel.Plan reads back, --explain, and clear errors."""
import json

import pytest

from hpcnn.cli import main
from hpcnn.plan import Plan
from perfmodel.layers import iter_layers, model_chain
from perfmodel.machine import MachineProfile


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "machine.json"
    MachineProfile.synthetic(per_flop=1e-10, per_byte=1e-10, alpha=1e-6, beta=1e-9, ranks_per_node=2).save(path)
    return str(path)


def test_plan_json_round_trip(tmp_path, profile, capsys):
    out = tmp_path / "plan.json"
    code = main(["plan", "--model", "resnet18", "--input", "3x32x32", "--batch", "4", "--ranks", "4",
                 "--machine", profile, "--set", "small_input=true", "--json", str(out),
                 "--explain", "layer1.0.residual.body.conv1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "predicted speedup" in text and "chosen grid" in text and "total (per iteration)" in text
    plan = Plan.load(out)
    assert plan.ranks == 4 and plan.model == "resnet18" and plan.input_shape == (4, 3, 32, 32)
    _, chain = model_chain("resnet18", (3, 32, 32), 4, small_input=True)
    names = [layer.name for layer in iter_layers(chain)]
    assert sorted(plan.layers) == sorted(names)
    # each layer's predicted time is the model's cost of that layer under its grid, plus the shuffle into it
    from perfmodel.costs import layer_cost
    from perfmodel.machine import load_profile
    machine = load_profile(profile)
    for spec in iter_layers(chain):
        p = plan.predicted[spec.name]
        cost = layer_cost(spec, plan.layers[spec.name], machine)
        assert p["time_s"] == pytest.approx(cost.time + p["shuffle_before_s"], rel=1e-9), spec.name
        assert p["time_s"] > 0 and p["shuffle_before_s"] >= 0
    # the plan file is exactly what Plan writes back
    again = tmp_path / "again.json"
    plan.save(again)
    assert json.loads(again.read_text()) == json.loads(out.read_text())
    from hpcnn import models
    plan.validate(models.build("resnet18", small_input=True), 4)


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet5", "--input", "3x32x32", "--batch", "2", "--ranks", "2"], "unknown model 'resnet5'"),
    (["--model", "meshnet", "--input", "18x64x64", "--batch", "1", "--ranks", "0"], "must be positive"),
    (["--model", "meshnet", "--input", "18x64x64", "--batch", "2", "--ranks", "2", "--memory-per-rank", "0.0001"],
     "no plan fits"),
    (["--model", "meshnet", "--input", "18x64x64", "--batch", "2", "--ranks", "2", "--explain", "nope"],
     "no layer 'nope'"),
])
def test_bad_input_is_a_clear_error(profile, capsys, argv, message):
    assert main(["plan", "--machine", profile] + argv) == 2
    assert message in capsys.readouterr().err


def test_small_images_on_many_ranks_split_channels(profile, capsys, tmp_path):
    """4x4 images on 64 ranks: no sample or spatial grid serves them; channel and filter splits do, and the plan
    file writes them in the long notation."""
    out = tmp_path / "plan.json"
    assert main(["plan", "--machine", profile, "--model", "meshnet", "--input", "18x4x4", "--batch", "1",
                 "--ranks", "64", "--json", str(out), "--explain", "block1.conv"]) == 0
    text = capsys.readouterr().out
    assert "channel" in text and "filter" in text      # --explain lists channel and filter candidates
    plan = json.loads(out.read_text())
    grids = [plan["default_grid"]] + [e["grid"] for e in plan["layers"]]
    assert all(len(g) == 5 and g[3] * g[4] > 1 for g in grids)


def test_unknown_profile(capsys):
    assert main(["plan", "--model", "meshnet", "--batch", "1", "--ranks", "1", "--machine", "no-such-machine"]) == 2
    assert "no such file" in capsys.readouterr().err
