"""The model zoo against PyTorch: a training step of ResNet and CosmoFlow, U-Net gradients, shapes, options."""
import numpy as np
import pytest
import torch

from hpcnn import models, nn
from hpcnn.train import SGD

from hpcnn.nn.torch_mirror import copy_into_torch, torch_mirror, TORCH_DTYPE
from tests.oracle import assert_close, seeded, to_torch


# --- a torchvision-style ResNet, written independently of hpcnn's module tree ----------------------------------

class _BasicBlock(torch.nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(torch.nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(planes * 4)
        self.relu = torch.nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet(torch.nn.Module):
    def __init__(self, block, counts, in_channels, num_classes, small_input, width):
        super().__init__()
        if small_input:
            self.conv1 = torch.nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = torch.nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.Identity() if small_input else torch.nn.MaxPool2d(3, 2, 1)
        self.inplanes = width
        self.layers = torch.nn.ModuleList()
        for i, count in enumerate(counts):
            planes, stride = width * 2 ** i, (1 if i == 0 else 2)
            blocks = []
            for b in range(count):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or self.inplanes != planes * block.expansion:
                    down = torch.nn.Sequential(torch.nn.Conv2d(self.inplanes, planes * block.expansion, 1, s,
                                                               bias=False),
                                               torch.nn.BatchNorm2d(planes * block.expansion))
                blocks.append(block(self.inplanes, planes, s, down))
                self.inplanes = planes * block.expansion
            self.layers.append(torch.nn.Sequential(*blocks))
        self.fc = torch.nn.Linear(self.inplanes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in self.layers:
            x = layer(x)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _copy_by_order(model, tmodel, dtype):
    """Parameters and BN buffers in registration order (torchvision's order is forward order), shapes checked."""
    tmodel.to(TORCH_DTYPE[np.dtype(dtype)])
    ours = list(model.parameters())
    theirs = list(tmodel.named_parameters())
    assert len(ours) == len(theirs)
    with torch.no_grad():
        for (name, p, _), (tname, tp) in zip(ours, theirs):
            assert p.shape == tuple(tp.shape), (name, tname)
            tp.copy_(to_torch(p))
        tbuffers = [(n, b) for n, b in tmodel.named_buffers() if not n.endswith("num_batches_tracked")]
        ours_state = list(model.state())
        assert len(ours_state) == len(tbuffers)
        for (name, a), (tname, tb) in zip(ours_state, tbuffers):
            assert name.rsplit(".", 1)[1] == tname.rsplit(".", 1)[1], (name, tname)
            tb.copy_(to_torch(a))
    return list(zip([n for n, _, _ in ours], [tp for _, tp in theirs]))


def _train_step_against_torch(model, tmodel, pairs, x, target, loss, tloss, dtype, what):
    """One forward, loss, backward and SGD(momentum, weight_decay) step in both; compare everything."""
    settings = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = SGD(model, **settings)
    topt = torch.optim.SGD([tp for _, tp in pairs], **settings)
    y = model.forward(x)
    ty = tmodel(to_torch(x))
    assert_close(y, ty.detach().numpy(), dtype, f"{what} forward")
    value = loss.forward(y, target)
    tvalue = tloss(ty, to_torch(target))
    assert_close(value, tvalue.item(), dtype, f"{what} loss")
    model.zero_grad()
    model.backward(loss.backward())
    topt.zero_grad()
    tvalue.backward()
    for (name, _, g), (_, tp) in zip(model.parameters(), pairs):
        assert_close(g, tp.grad.numpy(), dtype, f"{what} grad {name}")
    opt.step()
    topt.step()
    for (name, p, _), (_, tp) in zip(model.parameters(), pairs):
        assert_close(p, tp.detach().numpy(), dtype, f"{what} param {name} after SGD step")
    tstate = [b for n, b in tmodel.named_buffers() if not n.endswith("num_batches_tracked")]
    for (name, a), tb in zip(model.state(), tstate):
        assert_close(a, tb.numpy(), dtype, f"{what} {name}")


def test_resnet18_training_step_matches_torchvision_architecture():
    dtype = np.float64
    model = models.build("resnet18", in_channels=3, num_classes=10, small_input=True, dtype=dtype, seed=1)
    tmodel = _TorchResNet(_BasicBlock, (2, 2, 2, 2), 3, 10, True, 64)
    pairs = _copy_by_order(model, tmodel, dtype)
    rng = seeded(0)
    x = rng.standard_normal((2, 3, 32, 32))
    labels = np.array([3, 7])
    _train_step_against_torch(model, tmodel, pairs, x, labels, nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(),
                              dtype, "resnet18")


@pytest.mark.parametrize("name, block, counts", [("resnet18", _BasicBlock, (2, 2, 2, 2)),
                                                 ("resnet50", _Bottleneck, (3, 4, 6, 3))])
def test_resnet_standard_stem_matches_torchvision_architecture(name, block, counts):
    # The 7x7/2 stem and 3/2/1 max-pool at a reduced width, on an odd image size.
    dtype = np.float64
    model = models.build(name, in_channels=2, num_classes=5, width=4, dtype=dtype)
    tmodel = _TorchResNet(block, counts, 2, 5, False, 4)
    _copy_by_order(model, tmodel, dtype)
    x = seeded(1).standard_normal((2, 2, 45, 37))
    tx = to_torch(x, requires_grad=True)
    ty = tmodel(tx)
    y = model.forward(x)
    assert_close(y, ty.detach().numpy(), dtype, f"{name} forward")
    dy = seeded(2).standard_normal(y.shape)
    ty.backward(to_torch(dy))
    assert_close(model.backward(dy), tx.grad.numpy(), dtype, f"{name} dx")


@pytest.mark.parametrize("name, count", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                         ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_equal_torchvision(name, count):
    model = models.build(name, dtype=np.float32)
    assert sum(p.size for _, p, _ in model.parameters()) == count


def test_resnet_init_follows_torchvision():
    model = models.build("resnet50", num_classes=10, width=16)
    conv = model["layer3"][0]["residual"].body["conv2"]  # 64 -> 64 channels, 3x3
    w = conv.params["weight"]
    assert abs(w.std() / np.sqrt(2.0 / (64 * 9)) - 1) < 0.05


def test_cosmoflow_training_step_matches_torch():
    dtype = np.float64
    model = models.build("cosmoflow", in_channels=1, input_size=16, width=4, dtype=dtype, seed=2)
    tmodel = copy_into_torch(model, torch_mirror(model))
    pairs = list(zip([n for n, _, _ in model.parameters()], [tp for _, tp in tmodel.named_parameters()]))
    assert [n for n, _ in pairs] == [n for n, _ in tmodel.named_parameters()]
    rng = seeded(3)
    x = rng.standard_normal((2, 1, 16, 16, 16))
    target = rng.standard_normal((2, 4))
    _train_step_against_torch(model, tmodel, pairs, x, target, nn.MSELoss(), torch.nn.MSELoss(), dtype, "cosmoflow")


def test_cosmoflow_kernel_two_pads_after_only():
    model = models.build("cosmoflow", in_channels=1, input_size=16, width=2)
    conv = model["block1"]["conv"]
    assert conv.geometry.padding == ((0, 1),) * 3
    assert model.forward(np.zeros((1, 1, 16, 16, 16), np.float32)).shape == (1, 4)
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool3d)]) == 2
    assert len([m for m in models.build("cosmoflow", width=1, fc_sizes=(4,)).modules()
                if isinstance(m, nn.MaxPool3d)]) == 5


def test_unet2d_gradients_match_torch(dtype):
    model = models.build("unet2d", in_channels=2, num_classes=3, width=4, depth=2, dtype=dtype)
    tmodel = copy_into_torch(model, torch_mirror(model))
    x = seeded(4).standard_normal((2, 2, 12, 16)).astype(dtype)
    tx = to_torch(x, requires_grad=True)
    y = model.forward(x)
    assert y.shape == (2, 3, 12, 16)
    ty = tmodel(tx)
    assert_close(y, ty.detach().numpy(), dtype, "unet2d forward")
    labels = seeded(5).integers(0, 3, size=(2, 12, 16))
    loss, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    assert_close(loss.forward(y, labels), tloss(ty, to_torch(labels)).item(), dtype, "unet2d loss")
    tloss(ty, to_torch(labels)).backward()
    dx = model.backward(loss.backward())
    assert_close(dx, tx.grad.numpy(), dtype, "unet2d dx")
    for (name, _, g), (_, tp) in zip(model.parameters(), tmodel.named_parameters()):
        assert_close(g, tp.grad.numpy(), dtype, f"unet2d grad {name}")


def test_meshnet_shapes_and_gradients():
    model = models.build("meshnet", widths=(8, 8, 4), dilations=(1, 2, 4), dtype=np.float64)
    x = seeded(6).standard_normal((2, 18, 21, 26))
    y = model.forward(x)
    assert y.shape == (2, 2, 21, 26)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert all(g.shape == p.shape for _, p, g in model.parameters())
    tmodel = copy_into_torch(model, torch_mirror(model))
    tx = to_torch(x, requires_grad=True)
    ty = tmodel(tx)
    assert_close(y, ty.detach().numpy(), np.float64, "meshnet forward")
    ty.sum().backward()
    assert_close(dx, tx.grad.numpy(), np.float64, "meshnet dx")


@pytest.mark.parametrize("name", models.names())
def test_every_model_runs_in_float32_with_default_dtype(name):
    small = {"lenet": {}, "resnet18": dict(width=4, num_classes=3), "resnet34": dict(width=4, num_classes=3),
             "resnet50": dict(width=2, num_classes=3), "unet2d": dict(width=2),
             "meshnet": dict(widths=(4,), dilations=(2,)), "cosmoflow": dict(input_size=8, width=2)}[name]
    shape = {"lenet": (2, 1, 8, 8), "resnet18": (2, 3, 32, 32), "resnet34": (2, 3, 32, 32),
             "resnet50": (2, 3, 32, 32), "unet2d": (2, 1, 8, 8), "meshnet": (2, 18, 9, 7),
             "cosmoflow": (2, 4, 8, 8, 8)}[name]
    model = models.build(name, **small)
    y = model.forward(seeded(0).standard_normal(shape).astype(np.float32))
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    dx = model.backward(np.ones_like(y))
    assert dx.shape == shape and dx.dtype == np.float32


def test_build_refuses_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*cosmoflow, lenet, meshnet, resnet18"):
        models.build("resnet19")
    with pytest.raises(ValueError, match=r"unknown option\(s\) depth.*valid options: in_channels=3, num_classes"):
        models.build("resnet18", depth=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        models.build("lenet", input_size=10)
    with pytest.raises(ValueError, match="widths and dilations"):
        models.build("meshnet", widths=(4, 4), dilations=(1,))
    assert models.options("unet2d") == dict(in_channels=1, num_classes=2, width=16, depth=2, seed=0, dtype=None)


def test_seed_and_dtype():
    a = models.build("unet2d", width=4, seed=11)
    b = models.build("unet2d", width=4, seed=11)
    c = models.build("unet2d", width=4, seed=12)
    d = models.build("unet2d", width=4, seed=11, dtype="float64")
    for (n, pa, _), (_, pb, _), (_, pc, _), (_, pd, _) in zip(a.parameters(), b.parameters(), c.parameters(),
                                                              d.parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=n)
        assert pd.dtype == np.float64 and pa.dtype == np.float32
        np.testing.assert_array_equal(pa, pd.astype(np.float32), err_msg=n)
        if n.endswith("conv1.weight"):
            assert not np.array_equal(pa, pc)
