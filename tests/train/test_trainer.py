"""The trainer on one process: the digits job, metrics, exact resume, stop signals, NaN guard, data errors."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from hpcnn.cli import main
from hpcnn.train import checkpoint as ckpt
from hpcnn.train.config import apply_overrides, load_job, parse_job
from hpcnn.data.dataset import epoch_order
from hpcnn.train.trainer import Trainer, TrainingDiverged, train

DIGITS = ["training.epochs=0", "training.steps=12", "training.batch=8", "checkpoint.every=4", "checkpoint.keep=10",
          "logging.every=4", "training.schedule.name='step'", "training.schedule.step_size=5"]


def _job(tmp_path, extra=(), path="jobs/lenet-digits.toml"):
    return load_job(path, [f"logging.dir='{tmp_path}'", *DIGITS, *extra])


def _records(path, kind=None):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if kind is None or r["kind"] == kind]


def _params(trainer):
    return {n: p.copy() for n, p, _ in trainer.model.parameters()}


def test_lenet_digits_job_reaches_95_percent(tmp_path):
    out = io.StringIO()
    t0 = time.perf_counter()
    summary = train(load_job("jobs/lenet-digits.toml", [f"logging.dir='{tmp_path}'"]), stream=out)
    seconds = time.perf_counter() - t0
    assert summary["val_accuracy"] >= 0.95, out.getvalue()
    assert seconds < 60
    text = out.getvalue()
    assert "img/s" in text and "ETA" in text and "validation at step" in text and text.rstrip().startswith("hpcnn")
    recs = _records(tmp_path / "metrics.jsonl")
    kinds = [r["kind"] for r in recs]
    assert kinds[0] == "start" and kinds[-1] == "summary"
    assert kinds.count("val") == 10 and "train" in kinds and "checkpoint" in kinds
    assert recs[-1]["val_accuracy"] == summary["val_accuracy"]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [801, 890]  # keep = 2


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(100, 3, 0)
    assert np.array_equal(a, epoch_order(100, 3, 0)) and sorted(a) == list(range(100))
    assert not np.array_equal(a, epoch_order(100, 4, 0)) and not np.array_equal(a, epoch_order(100, 3, 1))


def _with_optimizer(tmp_path, optimizer, extra=()):
    """The digits job with its [training.optimizer] table replaced by `optimizer`."""
    with open("jobs/lenet-digits.toml", "rb") as f:
        raw = tomllib.load(f)
    raw["training"]["optimizer"] = dict(optimizer)
    return parse_job(apply_overrides(raw, [f"logging.dir='{tmp_path}'", *DIGITS, *extra]), "jobs/lenet-digits.toml")


@pytest.mark.parametrize("optimizer", [dict(lr=0.1, momentum=0.9), dict(name="adamw", lr=0.003, amsgrad=True),
                                       dict(name="adam", lr=0.003, weight_decay=0.01)],
                         ids=["sgd", "adamw-amsgrad", "adam"])
def test_resume_equals_an_uninterrupted_run(tmp_path, optimizer):
    full = Trainer(_with_optimizer(tmp_path / "full", optimizer), stream=io.StringIO())
    full.run()
    ref = _params(full)
    for stop_at in (4, 8):
        folder = tmp_path / f"part{stop_at}"
        first = Trainer(_with_optimizer(folder, optimizer, [f"training.steps={stop_at}"]), stream=io.StringIO())
        first.run()
        # same job, longer: continue from the newest checkpoint (written at stop_at)
        second = Trainer(_with_optimizer(folder, optimizer), resume="latest", stream=io.StringIO())
        second.run()
        assert second.resumed_from.endswith(f"step-{stop_at:09d}.npz")
        assert set(first.optimizer.state_dict()) == set(second.optimizer.state_dict()) != set()
        got = _params(second)
        for name in ref:
            assert np.array_equal(got[name], ref[name]), f"{name} differs after resuming at step {stop_at}"
        losses = [r["loss"] for r in _records(folder / "metrics.jsonl", "train")]
        full_losses = [r["loss"] for r in _records(tmp_path / "full" / "metrics.jsonl", "train")]
        assert losses[-len(full_losses) + stop_at // 4:] == full_losses[stop_at // 4:]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow on the way to nan
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    job = _job(tmp_path, ["training.optimizer.lr=1e30", "training.steps=40", "checkpoint.every=1"])
    with pytest.raises(TrainingDiverged, match=r"training stopped: the loss is (nan|inf) at step \d+"):
        train(job, stream=io.StringIO())
    last = ckpt.latest(str(tmp_path / "checkpoints"))
    assert last is not None
    arrays, header = ckpt.load(last)
    assert all(np.all(np.isfinite(a)) for a in arrays.values())
    stop = _records(tmp_path / "metrics.jsonl", "stop")
    assert stop[0]["reason"] == "nonfinite loss" and stop[0]["checkpoint"] == last
    assert stop[0]["step"] > header["step"]


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    assert main(["train", "jobs/lenet-digits.toml", "--set", "training.batch=-3"]) == 2
    err = capsys.readouterr().err
    assert "hpcnn train: error: job file jobs/lenet-digits.toml: training.batch must be a positive integer, got -3" in err
    code = main(["train", "jobs/lenet-digits.toml", "--set", "data.dataset='hdf5'", "--set", f"logging.dir='{tmp_path}'"])
    assert code == 2 and "data.path is missing" in capsys.readouterr().err
    missing = tmp_path / "none.h5"
    job = tmp_path / "files.toml"
    job.write_text(f'[model]\nname = "unet2d"\n[data]\ndataset = "hdf5"\npath = "{missing}"\n'
                   f'[training]\nepochs = 1\n[logging]\ndir = "{tmp_path}/run"\n')
    assert main(["train", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"hpcnn train: error: job file {job}: data: data file {missing} does not exist (data.path)" in err, err
    assert not (tmp_path / "run").exists()  # refused before any training
    assert main(["train", "jobs/lenet-digits.toml", "--resume", "--set", f"logging.dir='{tmp_path}'"]) == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err
    assert main(["train", "jobs/quickstart.toml", "--set", f"logging.dir='{tmp_path}'"]) == 2
    assert "distribution.grid [1, 2, 2] needs 4 ranks, the job runs on 1: start it with mpiexec -n 4" in \
        capsys.readouterr().err


def test_model_options_must_fit_the_data(tmp_path, capsys):
    code = main(["train", "jobs/lenet-digits.toml", "--set", "model.num_classes=3", "--set", f"logging.dir='{tmp_path}'"])
    assert code == 2
    assert "model.num_classes = 3, but dataset digits has 10 classes" in capsys.readouterr().err


def test_segmentation_and_regression_validate(tmp_path):
    from hpcnn.train.config import parse_job
    seg = parse_job({"model": {"name": "unet2d", "width": 4, "depth": 2},
                     "data": {"dataset": "textures", "size": 32, "samples": 4, "val_samples": 3, "region": 12},
                     "training": {"epochs": 1, "batch": 2}, "logging": {"dir": str(tmp_path / "seg")}})
    s = train(seg, stream=io.StringIO())
    assert 0 <= s["val_pixel_accuracy"] <= 1 and 0 <= s["val_mean_iou"] <= 1 and np.isfinite(s["val_loss"])
    reg = parse_job({"model": {"name": "cosmoflow", "width": 2, "fc_sizes": [8]},
                     "data": {"dataset": "fields3d", "size": 8, "samples": 4, "val_samples": 3},
                     "training": {"epochs": 1, "batch": 2}, "logging": {"dir": str(tmp_path / "reg")}})
    r = train(reg, stream=io.StringIO())
    assert r["val_mse"] == r["val_loss"] and np.isfinite(r["val_mse"])


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path, signame):
    args = ["--set", f"logging.dir='{tmp_path}'", "--set", "training.steps=400", "--set", "training.epochs=0",
            "--set", "logging.every=1", "--set", "training.batch=8"]
    proc = subprocess.Popen([sys.executable, "-m", "hpcnn.cli", "train", "jobs/lenet-digits.toml", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("step"):
                break
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"received {signame}: checkpoint written at step" in out
    stop = _records(tmp_path / "metrics.jsonl", "stop")[0]
    assert stop["reason"] == signame and 0 < stop["step"] < 400
    assert ckpt.latest(str(tmp_path / "checkpoints")).endswith(f"step-{stop['step']:09d}.npz")
    assert main(["train", "jobs/lenet-digits.toml", "--resume", *args, "--set", "logging.progress=false"]) == 0
    assert _records(tmp_path / "metrics.jsonl", "summary")[-1]["steps"] == 400


def test_a_fresh_run_does_not_overwrite_an_earlier_runs_checkpoints(tmp_path, capsys):
    args = ["train", "jobs/lenet-digits.toml", "--set", f"logging.dir='{tmp_path}'", "--set", "training.epochs=0",
            "--set", "training.steps=2", "--set", "logging.progress=false"]
    assert main(args) == 0
    assert main(args) == 2
    assert "holds checkpoints of an earlier run (newest: step 2); continue that run with --resume, or start over " \
           "with --restart" in capsys.readouterr().err
    assert main(args + ["--set", "training.steps=3", "--restart"]) == 0
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [3]


def test_trains_from_an_hdf5_file_written_by_data_generate(tmp_path, capsys):
    path = tmp_path / "tex.h5"
    assert main(["data", "generate", "textures", "--size", "32", "--samples", "4", "--val-samples", "2",
                 "--set", "region=12", "-o", str(path)]) == 0
    assert f'path = "{path}"' in capsys.readouterr().out
    job = tmp_path / "job.toml"
    job.write_text(f'[model]\nname = "unet2d"\nwidth = 4\n[data]\ndataset = "hdf5"\npath = "{path}"\n'
                   f'[training]\nsteps = 2\nbatch = 2\n[logging]\ndir = "{tmp_path}/run"\n')
    assert main(["train", str(job)]) == 0
    summary = _records(tmp_path / "run" / "metrics.jsonl", "summary")[0]
    assert summary["steps"] == 2 and 0 <= summary["val_pixel_accuracy"] <= 1
    assert main(["data", "generate", "textures", "--set", "regoin=3", "-o", str(tmp_path / "x.h5")]) == 2
    assert "regoin is not an option of dataset 'textures'" in capsys.readouterr().err


def test_chaos_engine_job(tmp_path):
    out = io.StringIO()
    summary = train(load_job("jobs/digits-chaos.toml", [f"logging.dir='{tmp_path}'", "training.epochs=2"]), stream=out)
    assert summary["val_accuracy"] > 0.85, out.getvalue()
    assert "epoch 2/2 (step 2876/2876):" in out.getvalue()
    assert len(_records(tmp_path / "metrics.jsonl", "val")) == 2
    assert ckpt.latest(str(tmp_path / "checkpoints")) is not None
