"""Weights out and in through safetensors: an export loads into the equivalent PyTorch network and computes the same
outputs; a file saved from PyTorch starts an hpcnn job and computes the same outputs; a misfit is refused by name."""
import io
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from hpcnn import models
from hpcnn.cli import main
from hpcnn.nn.torch_mirror import copy_into_torch, torch_mirror
from hpcnn.nn.weights import WeightsError, load_weights, save_weights, weight_arrays
from hpcnn.train.config import JobError, load_job
from hpcnn.train.trainer import Trainer


class Skip(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([x, self.inner(x)], dim=1)


def torch_tinyseg(in_channels, num_classes, width=8):
    """jobs/nets/tinyseg.py written in PyTorch, as a user would."""
    def block(cin, cout):
        return torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                               bn=torch.nn.BatchNorm2d(cout), relu=torch.nn.ReLU()))
    inner = torch.nn.Sequential(OrderedDict(pool=torch.nn.MaxPool2d(2), block=block(width, 2 * width),
                                            up=torch.nn.Upsample(scale_factor=2)))
    return torch.nn.Sequential(OrderedDict(block1=block(in_channels, width), skip=Skip(inner),
                                           block2=block(3 * width, width),
                                           head=torch.nn.Conv2d(width, num_classes, 1)))


SHORT = ["training.epochs=0", "training.steps=5", "checkpoint.every=5", "logging.progress=false",
         "data.size=32", "data.samples=8", "data.val_samples=2"]


def _inputs(seed=0, shape=(2, 1, 32, 32)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_export_loads_into_the_torch_network_and_agrees(tmp_path, capsys):
    t = Trainer(load_job("jobs/own-network.toml", [f"logging.dir='{tmp_path}'", *SHORT]), stream=io.StringIO())
    t.run()
    out = tmp_path / "model.safetensors"
    assert main(["export", str(tmp_path / "checkpoints"), "-o", str(out)]) == 0
    assert "under PyTorch's names" in capsys.readouterr().out
    names = set(load_file(str(out)))
    assert {"block1.conv.weight", "block1.bn.running_mean", "block1.bn.num_batches_tracked",
            "skip.inner.block.conv.weight", "head.bias"} <= names
    tnet = torch_tinyseg(1, 3, width=8)
    from safetensors.torch import load_file as torch_load
    tnet.load_state_dict(torch_load(str(out)))           # strict: every name and shape
    assert int(tnet.block1.bn.num_batches_tracked) == 5
    tnet.eval()
    t.model.eval()
    x = _inputs()
    np.testing.assert_allclose(t.model.forward(x), tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,shape", [("resnet18", (2, 3, 32, 32)), ("unet2d", (2, 1, 16, 16))])
def test_zoo_models_round_trip_with_torch(tmp_path, name, shape):
    opts = {"resnet18": dict(num_classes=5, width=8, small_input=True), "unet2d": dict(num_classes=3, width=4)}[name]
    model = models.build(name, in_channels=shape[1], seed=3, **opts)
    for _, s in model.state():                           # non-trivial batch-norm statistics
        s[...] = np.random.default_rng(1).uniform(0.5, 1.5, s.shape)
    path = tmp_path / "w.safetensors"
    save_weights(str(path), weight_arrays([(n, p) for n, p, _ in model.parameters()], model.state(), steps=7))
    tnet = copy_into_torch(models.build(name, in_channels=shape[1], seed=9, **opts), torch_mirror(model))
    from safetensors.torch import load_file as torch_load
    tnet.load_state_dict(torch_load(str(path)))
    tnet.eval()
    model.eval()
    x = _inputs(2, shape)
    np.testing.assert_allclose(model.forward(x), tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def _job_with_init(tmp_path, init):
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent(f"""
        [model]
        factory = "{__import__('os').path.abspath('jobs/nets/tinyseg.py')}:build"
        init = "{init}"
        [data]
        dataset = "textures"
        size = 32
        samples = 8
        val_samples = 2
        region = 8
        [training]
        steps = 1
        batch = 2
        [training.optimizer]
        name = "adam"
        [logging]
        dir = "{tmp_path / 'run'}"
        progress = false
    """))
    return load_job(str(job))


def test_a_torch_saved_file_starts_a_job_and_agrees(tmp_path):
    torch.manual_seed(0)
    tnet = torch_tinyseg(1, 3, width=8)
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1)
    for _ in range(3):                                   # trained a little in PyTorch: moved weights and statistics
        opt.zero_grad()
        tnet(torch.randn(4, 1, 32, 32)).square().mean().backward()
        opt.step()
    save_file(tnet.state_dict(), str(tmp_path / "torch.safetensors"))
    t = Trainer(_job_with_init(tmp_path, "torch.safetensors"), stream=io.StringIO())
    t._setup()
    assert t.init_from.endswith("torch.safetensors")
    t.model.eval()
    tnet.eval()
    x = _inputs(4)
    np.testing.assert_allclose(t.model.forward(x), tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_a_misfit_is_refused_with_both_names(tmp_path):
    tnet = torch_tinyseg(1, 3, width=8)
    state = tnet.state_dict()
    renamed = OrderedDict((k.replace("block2.", "decode."), v) for k, v in state.items())
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(JobError, match=r"model.init: weights file .*renamed.safetensors does not fit the model: "
                                       r"the model's 'block2.conv.weight', .* are not in it; its 'decode.bn.bias', "):
        Trainer(_job_with_init(tmp_path, "renamed.safetensors"), stream=io.StringIO())._setup()
    wide = torch_tinyseg(1, 4, width=8).state_dict()
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(JobError, match=r"its 'head.weight' has shape \(4, 8, 1, 1\), the model's 'head.weight' has "
                                       r"shape \(3, 8, 1, 1\)"):
        Trainer(_job_with_init(tmp_path, "wide.safetensors"), stream=io.StringIO())._setup()
    with pytest.raises(JobError, match="missing.safetensors does not exist"):
        Trainer(_job_with_init(tmp_path, "missing.safetensors"), stream=io.StringIO())._setup()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    model = models.build("lenet")
    with pytest.raises(WeightsError, match="cannot be read as safetensors"):
        load_weights(model, str(tmp_path / "junk.safetensors"))
    with pytest.raises(JobError, match="model.init must name a .safetensors file"):
        _job_with_init(tmp_path, "weights.pt")
