"""Job files: every bad field is refused with one message naming it; defaults; --set overrides."""
import re

import pytest

from hpcnn.train.config import JobError, apply_overrides, load_job, parse_job

GOOD = {
    "model": {"name": "lenet"},
    "data": {"dataset": "digits"},
    "training": {"epochs": 1, "batch": 16, "optimizer": {"lr": 0.05, "momentum": 0.9}},
}


def _with(dotted, value):
    return apply_overrides(GOOD, [f"{dotted}={value}"])


def test_good_job_fills_defaults():
    job = parse_job(GOOD, "jobs/x.toml")
    assert job.training["batch"] == 16
    assert job.training["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "dampening": 0.0,
                                         "weight_decay": 0.0}
    assert job.training["schedule"] == {"name": "constant", "base_lr": 0.05}
    assert job.distribution["engine"] == "spatial"
    assert job.data["options"] == {"upscale": 1, "val_fraction": 0.2}
    assert job.logging["dir"] == "jobs/runs/x"  # relative to the job file's folder
    assert job.checkpoint["dir"] == "jobs/runs/x/checkpoints"
    assert job.logging["metrics"] == "jobs/runs/x/metrics.jsonl"
    assert job.model == {"name": "lenet", "factory": None, "init": None, "options": {}}


BAD = [
    ("training.batch", "-3", "training.batch must be a positive integer, got -3"),
    ("training.batch", "2.5", "training.batch must be a positive integer, got 2.5"),
    ("training.batch", '"big"', "training.batch must be a positive integer, got 'big'"),
    ("training.epochs", "-1", "training.epochs must be a non-negative integer, got -1"),
    ("training.steps", "10", "training needs exactly one of epochs and steps"),
    ("training.dtype", '"float16"', "training.dtype must be one of 'float32', 'float64', got 'float16'"),
    ("training.optimizer.lr", "0", "training.optimizer.lr must be positive, got 0.0"),
    ("training.optimizer.momentum", "-0.5", "training.optimizer.momentum must be non-negative, got -0.5"),
    ("training.optimizer.name", '"lamb"', "training.optimizer.name must be one of 'sgd', 'adam', 'adamw', got 'lamb'"),
    ("training.optimizer.name", '"adam"', "training.optimizer.momentum is not a field of optimizer 'adam' (fields: name, "
                                          "lr, betas, eps, weight_decay, amsgrad)"),
    ("training.optimizer.betas", "1", "training.optimizer.betas is not a field of optimizer 'sgd'"),
    ("training.schedule.name", '"linear"', "training.schedule: schedule: 'name' must be one of"),
    ("training.schedule.gamma", "0.5", "training.schedule: schedule 'constant': unknown key(s) gamma"),
    ("training.shuffle", "true", "training.shuffle is not a field of [training]"),
    ("model.name", '"vgg16"', "model.name must be one of"),
    ("model.depth", "3", "model.depth is not an option of model 'lenet'"),
    ("data.dataset", '"mnist"', "data.dataset must be one of digits, textures, fields3d, hdf5, npy, got 'mnist'"),
    ("data.upscale", "0", "data.upscale must be a positive integer, got 0"),
    ("data.val_fraction", "1.5", "data.val_fraction must lie strictly between 0 and 1, got 1.5"),
    ("data.size", "64", "data.size is not an option of dataset 'digits'"),
    ("data.seed", "-2", "data.seed must be a non-negative integer, got -2"),
    ("distribution.engine", '"mpi"', "distribution.engine must be one of 'spatial', 'chaos', 'auto', got 'mpi'"),
    ("distribution.grid", "[1, 0, 2]", "distribution.grid must be \"auto\" or a list of positive integers: a grid is (N, H, W)"),
    ("distribution.grid", "[2, 2]", "distribution.grid must be \"auto\" or a list of positive integers"),
    ("distribution.grid", '"2x2"', "distribution.grid must be \"auto\" or a list"),
    ("distribution.threads", "-1", "distribution.threads must be a non-negative integer, got -1"),
    ("distribution.deterministic", '"yes"', "distribution.deterministic must be true or false, got 'yes'"),
    ("checkpoint.keep", "0", "checkpoint.keep must be a positive integer, got 0"),
    ("checkpoint.every", "-5", "checkpoint.every must be a non-negative integer, got -5"),
    ("checkpoint.dir", "3", "checkpoint.dir must be a string, got an integer 3"),
    ("logging.every", "0", "logging.every must be a positive integer, got 0"),
    ("logging.progress", "1", "logging.progress must be true or false, got 1"),
    ("extra.key", "1", "[extra] is not a section of a job file"),
]


@pytest.mark.parametrize("field,value,message", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_bad_field_is_named(field, value, message):
    with pytest.raises(JobError) as err:
        parse_job(_with(field, value), "jobs/x.toml")
    text = str(err.value)
    assert text.startswith("job file jobs/x.toml: "), text
    assert message in text, text


def test_missing_required_fields():
    raw = apply_overrides(GOOD, [])
    del raw["model"]["name"]
    with pytest.raises(JobError, match=r"\[model\] needs exactly one of name \(a zoo model: .*\) and factory"):
        parse_job(raw, "j.toml")
    for section, field in (("data", "dataset"),):
        raw = apply_overrides(GOOD, [])
        del raw[section][field]
        with pytest.raises(JobError, match=f"{section}.{field} is missing"):
            parse_job(raw, "j.toml")


def test_grid_and_plan_exclude_each_other():
    raw = apply_overrides(GOOD, ["distribution.grid=[1,2,2]", 'distribution.plan="p.json"'])
    with pytest.raises(JobError, match="distribution.grid and distribution.plan exclude each other"):
        parse_job(raw)


def test_chaos_takes_no_grid():
    raw = apply_overrides(GOOD, ['distribution.engine="chaos"', "distribution.grid=[1,2,2]"])
    with pytest.raises(JobError, match="engine = \"chaos\" trains whole samples"):
        parse_job(raw)


def test_dataset_options_checked_per_dataset():
    raw = apply_overrides(GOOD, ['data.dataset="textures"', "data.size=64", 'data.task="detect"'])
    with pytest.raises(JobError, match="data.task must be one of 'segment', 'classify', got 'detect'"):
        parse_job(raw)
    raw = apply_overrides(GOOD, ['data.dataset="hdf5"'])
    with pytest.raises(JobError, match=r"data.path is missing"):
        parse_job(raw)


def test_set_overrides_and_value_parsing(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[model]\nname = "lenet"\n[data]\ndataset = "digits"\n[training]\nepochs = 2\n')
    job = load_job(str(path), ["training.batch=64", "training.optimizer.lr=0.5", "distribution.grid=[1,2,1]",
                               "logging.dir=out/run", "distribution.deterministic=true"])
    assert job.training["batch"] == 64
    assert job.training["optimizer"]["lr"] == 0.5
    assert job.distribution["grid"] == [1, 2, 1]
    assert job.logging["dir"] == str(tmp_path / "out" / "run")  # a bare word is a string, relative to the job
    assert job.distribution["deterministic"] is True
    with pytest.raises(JobError, match="--set expects key=value"):
        load_job(str(path), ["training.batch"])
    with pytest.raises(JobError, match=f"job file {path}: training.batch must be a positive integer, got -3"):
        load_job(str(path), ["training.batch=-3"])


def test_missing_and_malformed_job_files(tmp_path):
    with pytest.raises(JobError, match="job file nowhere.toml does not exist"):
        load_job("nowhere.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    with pytest.raises(JobError, match="is not valid TOML"):
        load_job(str(bad))


def test_shipped_jobs_are_valid():
    import glob
    paths = sorted(glob.glob("jobs/*.toml"))
    assert "jobs/lenet-digits.toml" in paths
    for path in paths:
        load_job(path)


def _optimizer_job(**optimizer):
    return parse_job({**GOOD, "training": {"epochs": 1, "optimizer": optimizer}}, "j.toml")


def test_optimizer_fields_per_name():
    assert _optimizer_job(name="adamw").training["optimizer"] == {
        "name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False}
    assert _optimizer_job(name="adam", betas=[0.8, 0.9])["training"]["optimizer"]["weight_decay"] == 0.0
    for bad, message in ((dict(name="adam", betas=[0.9, 1.0]), "betas must be a list of two numbers in [0, 1)"),
                         (dict(name="adam", betas=[0.9]), "betas must be a list of two numbers"),
                         (dict(name="adam", eps=0), "training.optimizer.eps must be positive"),
                         (dict(name="sgd", nesterov=True), "nesterov needs momentum > 0 and dampening = 0")):
        with pytest.raises(JobError, match=re.escape(message)):
            _optimizer_job(**bad)


def test_chaos_refuses_what_it_does_not_run():
    for optimizer, message in ((dict(name="adam"), 'distribution.engine = "chaos" trains with SGD only'),
                               (dict(name="sgd", momentum=0.9, dampening=0.1), "has no momentum dampening")):
        raw = {**GOOD, "distribution": {"engine": "chaos"}, "training": {"epochs": 1, "optimizer": optimizer}}
        with pytest.raises(JobError, match=re.escape(message)):
            parse_job(raw, "j.toml")
    from hpcnn.train.engine import choose_engine
    raw = {**GOOD, "distribution": {"engine": "auto"}, "training": {"epochs": 1, "optimizer": {"name": "adamw"}}}
    assert choose_engine(parse_job(raw, "j.toml"), 1) == "spatial"
