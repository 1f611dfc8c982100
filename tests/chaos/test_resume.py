"""CHAOS in the trainer: checkpoints every checkpoint.every steps and at epoch ends, a stop writes one, and
--resume continues the step, epoch, sample order, learning rate and momentum (bit for bit with one
deterministic worker); nesterov is honoured."""
import io
import json

import numpy as np
import pytest

from hpcnn.chaos import engine as chaos_engine
from hpcnn.train import checkpoint as ckpt
from hpcnn.train.config import JobError, load_job
from hpcnn.train.trainer import Trainer

JOB = "jobs/digits-chaos.toml"
EXACT = ["distribution.deterministic=true", "training.epochs=2", "training.optimizer.momentum=0.9",
         "training.batch=4", "logging.progress=false"]


def _job(folder, extra=()):
    return load_job(JOB, [f"logging.dir='{folder}'", *EXACT, *extra])


def _params(trainer):
    return {n: p.copy() for n, p, _ in trainer.model.parameters()}


def _stop_after(monkeypatch, trainer, calls):
    """Set the trainer's stop flag (as SIGTERM does) once `calls` mini-batches have run."""
    real, count = chaos_engine.ChaosEngine._layers_call, [0]

    def layers_call(self, *args):
        real(self, *args)
        count[0] += 1
        if count[0] == calls:
            trainer.stop_signal = "SIGTERM"
    monkeypatch.setattr(chaos_engine.ChaosEngine, "_layers_call", layers_call)


@pytest.mark.parametrize("stop_at", [100, 359, 500])   # mid-epoch 1, the last batch of epoch 1, mid-epoch 2
def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, stop_at):
    full = Trainer(_job(tmp_path / "full"), stream=io.StringIO())
    full.run()
    ref = _params(full)
    part = Trainer(_job(tmp_path / "part"), stream=io.StringIO())
    with monkeypatch.context() as m:
        _stop_after(m, part, stop_at)
        summary = part.run()
    assert summary["stopped"] == "SIGTERM" and summary["steps"] == stop_at
    arrays, header = ckpt.load(summary["checkpoint"])
    assert header["step"] == stop_at and header["engine"] == "chaos"
    assert {k for k in arrays if k.startswith("optim/")} == {f"optim/momentum_buffer.{n}" for n in ref}
    second = Trainer(_job(tmp_path / "part"), resume="latest", stream=io.StringIO())
    second.run()
    got = _params(second)
    for name in ref:
        assert np.array_equal(got[name], ref[name]), f"{name} differs after resuming at step {stop_at}"
    rows = [json.loads(line) for line in open(tmp_path / "part" / "metrics.jsonl")]
    full_rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    val = [(r["epoch"], r["step"], r["lr"], r["train_loss"]) for r in rows if r["kind"] == "val"]
    assert val == [(r["epoch"], r["step"], r["lr"], r["train_loss"]) for r in full_rows if r["kind"] == "val"]


def test_checkpoints_every_k_steps_and_at_the_end(tmp_path):
    t = Trainer(_job(tmp_path, ["checkpoint.every=150", "checkpoint.keep=20"]), stream=io.StringIO())
    t.run()
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [150, 300, 450, 600, 720]


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_resume_on_the_fused_step_with_several_workers_continues_the_schedule(tmp_path, monkeypatch, momentum):
    extra = ["distribution.deterministic=false", "distribution.threads=2", "training.epochs=3", "checkpoint.every=200",
             f"training.optimizer.momentum={momentum}"]
    t = Trainer(_job(tmp_path, extra), stream=io.StringIO())
    real = chaos_engine.ChaosEngine._fused_call

    def fused_call(self, worker, xs, y, order, first, count, lrs):
        real(self, worker, xs, y, order, first, count, lrs)
        if first >= 300 and self.epoch == 1:
            t.stop_signal = "SIGUSR1"
    monkeypatch.setattr(chaos_engine.ChaosEngine, "_fused_call", fused_call)
    summary = t.run()
    monkeypatch.undo()
    assert summary["stopped"] == "SIGUSR1" and 360 + 300 <= summary["steps"] < 720
    arrays, _ = ckpt.load(summary["checkpoint"])
    assert any(k.startswith("optim/") for k in arrays) == bool(momentum)
    second = Trainer(_job(tmp_path, extra), resume="latest", stream=io.StringIO())
    s2 = second.run()
    assert s2["steps"] == 1080 and s2["val_accuracy"] > (0.9 if momentum else 0.3)   # plain SGD learns slower
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    cosine = second.schedule
    assert val[-1]["lr"] == pytest.approx(cosine.lr_at(1079))


def test_nesterov_is_honoured(tmp_path):
    plain = Trainer(_job(tmp_path / "a", ["training.epochs=1"]), stream=io.StringIO())
    plain.run()
    nesterov = Trainer(_job(tmp_path / "b", ["training.epochs=1", "training.optimizer.nesterov=true"]),
                       stream=io.StringIO())
    nesterov.run()
    assert nesterov.optimizer.nesterov
    a, b = _params(plain), _params(nesterov)
    assert any(not np.array_equal(a[n], b[n]) for n in a)


def test_fields_chaos_does_not_read_are_refused(tmp_path):
    for field, value in (("training.val_every", "5"), ("training.threads", "2"), ("training.val_batch", "8")):
        t = Trainer(_job(tmp_path, [f"{field}={value}"]), stream=io.StringIO())
        with pytest.raises(JobError, match=rf"{field} = {value} does not apply to the chaos engine"):
            t.run()
