"""Plan files: round trip, validation with clear messages."""
import json

import pytest

from hpcnn import models
from hpcnn.plan import Plan


def test_round_trip(tmp_path):
    plan = Plan(4, (1, 2, 2), {"head.fc": (4, 1, 1)}, model="resnet18", input_shape=(8, 3, 64, 64),
                predicted={"head.fc": {"time_s": 0.01}})
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "hpcnn-plan" and data["layers"][0]["predicted"] == {"time_s": 0.01}
    assert Plan.load(path) == plan
    assert plan.grid_for("head.fc") == (4, 1, 1) and plan.grid_for("other") == (1, 2, 2)
    assert plan.grids() == [(1, 2, 2), (4, 1, 1)]


@pytest.mark.parametrize("data,message", [
    ({"format": "x", "version": 1, "ranks": 2, "default_grid": [1, 2, 1]}, "'format'"),
    ({"format": "hpcnn-plan", "version": 1, "ranks": 2, "default_grid": [1, 3, 1]}, "has 3 places"),
    ({"format": "hpcnn-plan", "version": 1, "ranks": 2, "default_grid": [1, 2]}, "list of positive ints"),
    ({"format": "hpcnn-plan", "version": 1, "ranks": 2, "default_grid": [1, 2, 1],
      "layers": [{"name": "a", "grid": [1, 1, 1, 2]}]}, "same spatial dimensions"),
    ({"format": "hpcnn-plan", "version": 1, "ranks": 2, "default_grid": [1, 2, 1], "extra": 1}, "unknown field"),
    ({"format": "hpcnn-plan", "version": 1, "default_grid": [1, 2, 1]}, "missing field 'ranks'"),
])
def test_bad_plans_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        Plan.from_dict(data)


def test_validate_against_model():
    model = models.build("meshnet", in_channels=2, widths=(4,), dilations=(1,))
    names = [n for n, _ in model.named_leaves()]
    assert names[0] == "block1.conv"
    Plan(2, (1, 2, 1), {names[0]: (2, 1, 1)}).validate(model, 2)
    with pytest.raises(ValueError, match="does not have"):
        Plan(2, (1, 2, 1), {"nope": (2, 1, 1)}).validate(model, 2)
    with pytest.raises(ValueError, match="written for 2 ranks"):
        Plan(2, (1, 2, 1)).validate(model, 4)
