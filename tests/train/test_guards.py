"""What a run refuses before any work, and what it never destroys: metrics, output paths, plans, fields of
the other engine, checkpoint completeness, the divergence stop, the resume command, machine profiles."""
import json
import os

import numpy as np
import pytest

from hpcnn.cli import main
from hpcnn.plan import Plan
from hpcnn.train import checkpoint as ckpt
from hpcnn.train.config import load_job
from hpcnn.train.launch import resume_command

SHORT = ["--set", "training.epochs=0", "--set", "training.steps=3", "--set", "logging.progress=false"]


def _train(tmp_path, *extra, job="jobs/lenet-digits.toml"):
    return main(["train", job, "--set", f"logging.dir='{tmp_path}'", *SHORT, *extra])


def _err(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_metrics_of_an_earlier_run_are_never_destroyed(tmp_path, capsys):
    elsewhere, other = f"checkpoint.dir='{tmp_path}/elsewhere'", f"checkpoint.dir='{tmp_path}/other'"
    assert _train(tmp_path, "--set", elsewhere) == 0   # checkpoints in another folder
    first = (tmp_path / "metrics.jsonl").read_text()
    assert _train(tmp_path, "--set", other) == 2
    assert "logging.metrics" in _err(capsys) and (tmp_path / "metrics.jsonl").read_text() == first
    assert _train(tmp_path, "--set", other, "--restart") == 0
    assert (tmp_path / "metrics.jsonl.1").read_text() == first
    assert _train(tmp_path, "--set", other, "--resume", "--set", "training.steps=5") == 0
    kinds = [json.loads(line)["kind"] for line in open(tmp_path / "metrics.jsonl")]
    assert kinds.count("start") == 2 and kinds.count("summary") == 2      # the resumed run appended


def test_output_paths_are_relative_to_the_job_file_and_shown(tmp_path, capsys):
    job = tmp_path / "sub" / "job.toml"
    job.parent.mkdir()
    job.write_text('[model]\nname = "lenet"\n[data]\ndataset = "digits"\n[training]\nsteps = 2\n'
                   '[logging]\ndir = "out"\nmetrics = "../log/m.jsonl"\n[checkpoint]\ndir = "/%s/ck"\n'
                   % str(tmp_path).strip("/"))
    assert main(["train", str(job)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "sub" / "log" / "m.jsonl").is_file() and (tmp_path / "ck").is_dir()
    assert f"writes metrics to {tmp_path}/sub/log/m.jsonl, checkpoints to {tmp_path}/ck" in out
    assert not os.path.exists("out")
    for metrics, message in (("''", "logging.metrics must name a file"), ("'x/'", "logging.metrics must name"),
                             ("'checkpoints/m.jsonl'", "lies in checkpoint.dir")):
        assert main(["train", str(job), "--set", f"logging.metrics={metrics}", "--set", "checkpoint.dir=''"]) == 2
        assert message in _err(capsys)


def test_a_plan_made_for_another_job_is_refused(tmp_path, capsys):
    for fields, message in (({"model": "unet2d"}, "plan: made for model 'unet2d', job file"),
                            ({"input": [8, 1, 8, 8]}, "plan: made for batch 8"),
                            ({"input": [16, 3, 8, 8]}, "plan: made for samples of shape 3x8x8")):
        plan = Plan(1, [1, 1, 1], model=fields.get("model", "lenet"),
                    input_shape=fields.get("input", [16, 1, 8, 8]))
        path = tmp_path / "plan.json"
        plan.save(str(path))
        assert _train(tmp_path / "run", "--set", "training.batch=16", "--plan", str(path)) == 2
        assert message in _err(capsys)
    Plan(2, [2, 1, 1]).save(str(path))
    assert _train(tmp_path / "run", "--plan", str(path)) == 2
    assert "plan: made for 2 ranks, job file jobs/lenet-digits.toml runs on 1" in _err(capsys)


@pytest.mark.parametrize("field,value", [("distribution.threads", "2"), ("distribution.staleness", "0"),
                                         ("distribution.average_every", "4"), ("distribution.deterministic", "true")])
def test_chaos_fields_are_refused_by_the_spatial_engine(tmp_path, capsys, field, value):
    assert _train(tmp_path, "--set", f"{field}={value}") == 2
    assert f"{field} = {value.replace('true', 'True')} does not apply to the spatial engine" in _err(capsys)
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_checkpoints_must_be_complete_and_of_the_models_dtypes(tmp_path, capsys):
    assert _train(tmp_path, "--set", "training.optimizer.momentum=0.9") == 0
    path = ckpt.latest(str(tmp_path / "checkpoints"))
    assert _train(tmp_path, "--resume", "--set", "training.dtype='float64'") == 2
    assert "param/conv1.weight is float32 (16, 1, 3, 3), the model's is float64" in _err(capsys)
    arrays, header = ckpt.load(path)
    del arrays["optim/momentum_buffer.fc2.weight"]
    header = {k: v for k, v in header.items() if k != "arrays"}  # also without the list of arrays
    ckpt.save(str(tmp_path / "checkpoints"), 3, arrays, header)
    assert _train(tmp_path, "--resume") == 2
    assert "lacks optim/momentum_buffer.fc2.weight (the optimizer's momentum_buffer of parameter fc2.weight)" \
        in _err(capsys)


def test_a_diverging_finite_loss_stops_with_exit_3(tmp_path, capsys):
    code = _train(tmp_path, "--set", "training.steps=200", "--set", "training.optimizer.lr=1e6",
                  "--set", "checkpoint.every=10", "--set", "training.divergence_steps=30")
    assert code == 3
    err = _err(capsys)
    assert "the loss has stayed above 100 times its first value" in err and "for 30 steps" in err
    stop = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"stop"' in line][0]
    assert stop["reason"] == "diverging loss" and stop["step"] == 31
    assert stop["checkpoint"] is None   # the checkpoints at steps 10, 20, 30 were written while it diverged
    assert ckpt.latest(str(tmp_path / "checkpoints")).endswith("step-000000030.npz")   # kept, not overwritten
    off = _train(tmp_path / "off", "--set", "training.steps=60", "--set", "training.optimizer.lr=1e6",
                 "--set", "training.divergence_factor=0")
    assert off in (0, 3) and ("nonfinite" in open(tmp_path / "off" / "metrics.jsonl").read()) == (off == 3)


def test_the_resume_command_repeats_the_launch(monkeypatch):
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    args = ["jobs/q.toml", "--grid", "1x2x2", "--set", "logging.dir='/a b'", "--restart"]
    assert resume_command(4, args) == ("mpiexec -n 4 python -m hpcnn.cli train jobs/q.toml --grid 1x2x2 --set "
                                       "'logging.dir='\"'\"'/a b'\"'\"'' --resume")
    assert resume_command(1, ["j.toml", "--resume", "runs/x/checkpoints/step-000000004.npz"]).endswith(
        "train j.toml --resume")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert resume_command(8, ["j.toml"]).startswith("srun -n 8 ")


def test_every_profile_field_is_checked_with_its_path(tmp_path, capsys):
    from perfmodel.machine import load_profile
    doc = load_profile("vm-cpu").doc
    del doc["links"]["intra_node"]["beta"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert main(["plan", "--model", "lenet", "--batch", "4", "--ranks", "2", "--machine", str(path)]) == 2
    assert "links.intra_node.beta: missing" in _err(capsys)
    assert main(["plan", "--model", "resnet51", "--input", "3x32x32", "--batch", "4", "--ranks", "2",
                 "--machine", "vm-cpu"]) == 2
    assert "unknown model 'resnet51'" in _err(capsys)


def test_shipped_jobs_write_into_runs_of_the_repository():
    job = load_job("jobs/quickstart.toml")
    assert job.logging["dir"] == os.path.join("runs", "quickstart")
    assert np.all([os.path.normpath(job.checkpoint["dir"]) == os.path.join("runs", "quickstart", "checkpoints")])


def test_fields3d_too_large_for_memory_is_refused_with_the_command_that_writes_it(tmp_path, capsys):
    assert main(["train", "jobs/fields3d.toml", "--set", "data.size=512", "--set", f"logging.dir='{tmp_path}'"]) == 2
    err = _err(capsys)
    assert "data.size: fields3d: size 512 would build every 512^3 volume whole on every rank" in err
    assert "hpcnn data generate fields3d --size 512 --samples" in err and not os.listdir(tmp_path)
