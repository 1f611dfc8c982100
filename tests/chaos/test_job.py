"""The job-file path end to end: `hpcnn train jobs/digits-chaos.toml --engine chaos` trains with CHAOS workers."""
import json
from pathlib import Path

import pytest

from hpcnn.cli import main

JOB = Path(__file__).resolve().parents[2] / "jobs" / "digits-chaos.toml"


@pytest.mark.skipif(not JOB.exists(), reason="jobs/digits-chaos.toml is not in this tree")
def test_hpcnn_train_with_the_chaos_engine(tmp_path, capsys):
    code = main(["train", str(JOB), "--engine", "chaos", "--set", f"logging.dir={str(tmp_path)!r}",
                 "--set", "training.epochs=3", "--set", "distribution.threads=2"])
    assert code == 0
    printed = capsys.readouterr()
    assert "engine chaos" in printed.out + printed.err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("val_accuracy") is not None and r.get("threads") == 2]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(r["chaos_step"] == "fused" for r in epochs)
    assert epochs[-1]["val_accuracy"] >= 0.93
    assert list((tmp_path / "checkpoints").glob("*.npz"))
