"""`hpcnn bench step`: the same network in both libraries, ratios and speedups consistent with the times."""
import csv
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpcnn.bench import step  # noqa: E402
from hpcnn.cli import main  # noqa: E402
from tests.bench import ROUNDED_RATIO  # noqa: E402


@pytest.mark.parametrize("name", list(step.QUICK_CASES))
def test_both_libraries_train_the_same_network(name):
    options, shape, batch = step.QUICK_CASES[name]
    pair = step._Pair(name, options, shape, batch, torch)
    out = pair.model.forward(pair.x)
    ours = pair.loss.forward(out, pair.y)
    theirs = float(pair.tloss(pair.tmodel(pair.tx), pair.ty).detach())
    assert ours == pytest.approx(theirs, rel=1e-4)
    # one step each moves the weights alike
    pair.hpcnn_step()
    pair.torch_step()
    got = {n: p for n, p, _ in pair.model.parameters()}
    for n, p in pair.tmodel.named_parameters():
        np.testing.assert_allclose(got[n], p.detach().numpy(), rtol=1e-3, atol=1e-6, err_msg=n)


def test_the_command_writes_consistent_rows(tmp_path):
    out = tmp_path / "step"
    assert main(["bench", "step", "--quick", "--threads", "1,2", "--models", "meshnet,cosmoflow", "--layers", "2",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "step.csv")))
    assert [(r["model"], r["threads"]) for r in rows] == [("meshnet", "1"), ("cosmoflow", "1"), ("meshnet", "2"),
                                                          ("cosmoflow", "2")]
    for r in rows:
        h, t = float(r["hpcnn_s"]), float(r["torch_s"])
        assert float(r["ratio"]) == pytest.approx(h / t, rel=ROUNDED_RATIO)
        base = next(b for b in rows if b["model"] == r["model"] and b["threads"] == "1")
        assert float(r["hpcnn_speedup"]) == pytest.approx(float(base["hpcnn_s"]) / h, rel=ROUNDED_RATIO)
    doc = json.loads((out / "step.json").read_text())
    # both libraries ran under the allocator setting hpcnn's command made, and the file says which
    assert doc["allocator"].startswith("malloc")
    for t in ("1", "2"):
        ratios = [float(r["ratio"]) for r in rows if r["threads"] == t]
        # the CSV holds the ratios rounded; the summary is computed from the unrounded ones
        assert doc["summary"][t]["geomean_ratio"] == pytest.approx(math.exp(np.mean(np.log(ratios))), rel=1e-5)
    layers = list(csv.DictReader(open(out / "step_layers.csv")))
    assert len(layers) == 2 * len(rows)
    names = {n for n, _ in step._Pair("meshnet", *step.QUICK_CASES["meshnet"], torch).model.named_leaves()}
    assert {r["layer"] for r in layers if r["model"] == "meshnet"} <= names


def test_an_unknown_model_is_refused():
    with pytest.raises(SystemExit, match="unknown model"):
        main(["bench", "step", "--quick", "--models", "alexnet"])
