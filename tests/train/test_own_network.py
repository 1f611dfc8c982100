"""Own networks in job files: `[model] factory`, checked like zoo models, trained at 1 and 2 ranks (the example
jobs/own-network.toml), planned with `hpcnn plan --factory`, and refused when its ranks build different weights."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpcnn.cli import main
from hpcnn.train.config import JobError, load_job, parse_job

MPIEXEC = shutil.which("mpiexec")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SHORT = ["training.epochs=0", "training.steps=6", "logging.every=1", "checkpoint.every=3"]


def _raw(**model):
    return {"model": model, "data": {"dataset": "textures", "size": 16, "samples": 4, "val_samples": 2, "region": 6},
            "training": {"steps": 2, "batch": 2}}


def test_factory_is_resolved_relative_to_the_job_file_and_its_keys_checked():
    job = load_job("jobs/own-network.toml")
    assert job.model == {"name": None, "factory": "nets/tinyseg.py:build", "init": None, "options": {"width": 8}}
    path = os.path.join("jobs", "x.toml")
    with pytest.raises(JobError, match=r"model.depth is not an option of network factory 'nets/tinyseg.py:build' "
                                       r"\(options: in_channels, num_classes, width\)"):
        parse_job(_raw(factory="nets/tinyseg.py:build", depth=3), path)
    with pytest.raises(JobError, match="needs exactly one of name .* got both"):
        parse_job(_raw(factory="nets/tinyseg.py:build", name="unet2d"), path)
    with pytest.raises(JobError, match=r"model.factory: network factory nets/tinyseg.py:build: .*jobs/nets/nets/"
                                       r"tinyseg.py does not exist"):
        parse_job(_raw(factory="nets/tinyseg.py:build"), os.path.join("jobs", "nets", "x.toml"))


def test_data_fixes_in_channels_and_classes(tmp_path):
    from hpcnn.train.trainer import Trainer
    raw = _raw(factory="nets/tinyseg.py:build", num_classes=5)
    raw["logging"] = {"dir": str(tmp_path)}
    with pytest.raises(JobError, match="model.num_classes = 5, but dataset textures has 3 classes"):
        Trainer(parse_job(raw, "jobs/x.toml"))._setup()
    raw["model"] = {"factory": "nets/tinyseg.py:build", "width": 3}
    t = Trainer(parse_job(raw, "jobs/x.toml"))
    t._setup()
    assert t.model_label == "tinyseg.py:build"
    assert t.model[0][0].params["weight"].shape == (3, 1, 3, 3)      # in_channels 1 from the data
    assert t.model[3].params["weight"].shape == (3, 3, 1, 1)         # num_classes 3 from the data


def _losses(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def _train(n, folder, *args):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcnn.cli", "train", "jobs/own-network.toml",
           "--set", f"logging.dir='{folder}'", *[a for s in SHORT for a in ("--set", s)], *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")
def test_example_job_trains_alike_at_one_and_two_ranks(tmp_path):
    out1 = _train(1, tmp_path / "one")
    assert "tinyseg.py:build" in out1 and "engine spatial on 1 rank" in out1
    ref = _losses(tmp_path / "one")
    assert len(ref) == 6
    for grid in ("1x1x2", "1x2x1", "2x1x1"):
        out = _train(2, tmp_path / grid, "--grid", grid)
        assert f"grid [{grid.replace('x', ', ')}]" in out, out
        np.testing.assert_allclose(_losses(tmp_path / grid), ref, rtol=1e-4, err_msg=grid)
    # a plan from `hpcnn plan --factory` trains the same network
    plan = tmp_path / "plan.json"
    assert main(["plan", "--factory", "jobs/nets/tinyseg.py:build", "--input", "1x64x64", "--batch", "4",
                 "--ranks", "2", "--machine", "vm-cpu", "--set", "width=8", "--set", "num_classes=3",
                 "--json", str(plan)]) == 0
    assert json.loads(plan.read_text())["model"] == "tinyseg.py:build"
    _train(2, tmp_path / "planned", "--plan", str(plan))
    np.testing.assert_allclose(_losses(tmp_path / "planned"), ref, rtol=1e-4)


def test_plan_factory_refusals(capsys):
    assert main(["plan", "--factory", "jobs/nets/tinyseg.py:build", "--batch", "4", "--ranks", "2",
                 "--machine", "vm-cpu"]) == 2
    assert "--factory needs --input" in capsys.readouterr().err
    assert main(["plan", "--factory", "jobs/nets/tinyseg.py:build", "--input", "1x64x64", "--batch", "4",
                 "--ranks", "2", "--machine", "vm-cpu", "--set", "depth=2"]) == 2
    assert "depth is not an argument of tinyseg.py:build" in capsys.readouterr().err


UNSEEDED = textwrap.dedent("""
    import os
    import numpy as np
    from hpcnn import nn

    def build(in_channels, num_classes):
        rng = np.random.default_rng()   # not seeded: every rank draws other weights
        return nn.Sequential(("conv", nn.Conv2d(in_channels, num_classes, 3, padding=1, rng=rng)))
""")


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")
def test_ranks_that_build_other_weights_are_refused(tmp_path):
    (tmp_path / "net.py").write_text(UNSEEDED)
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent(f"""
        [model]
        factory = "net.py:build"
        [data]
        dataset = "textures"
        size = 16
        samples = 4
        val_samples = 2
        region = 6
        [training]
        steps = 1
        batch = 2
        [logging]
        dir = "{tmp_path / 'run'}"
    """))
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "hpcnn.cli", "train", str(job), "--grid",
                           "1x1x2"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "model.factory net.py:build built other weights on rank 1 than on rank 0" in proc.stderr, proc.stderr
