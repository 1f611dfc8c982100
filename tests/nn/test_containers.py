"""Sequential, Residual and SkipConcat against PyTorch; the module protocol: names, hooks, replicas, dtypes."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

from hpcnn import models, nn

from hpcnn.nn.torch_mirror import TorchResidual, TorchSkipConcat, copy_into_torch, torch_mirror
from tests.oracle import assert_close, check_against_torch, seeded


def _compare(model, tmodel, x, dtype, what):
    copy_into_torch(model, tmodel, dtype)
    return check_against_torch(model.forward, model.backward, tmodel, [x], dtype, what,
                               hp_grads=lambda: dict((n, g) for n, _, g in model.parameters()),
                               torch_params=dict(tmodel.named_parameters()))


def _body(rng, dtype, cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype),
                         nn.BatchNorm2d(cout, dtype=dtype), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, rng=rng, dtype=dtype))


def _torch_body(cin, cout, stride):
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                               torch.nn.BatchNorm2d(cout), torch.nn.ReLU(), torch.nn.Conv2d(cout, cout, 3, padding=1))


@pytest.mark.parametrize("projection", [False, True], ids=["identity", "projection"])
def test_residual(projection, dtype):
    rng = seeded(4)
    if projection:
        model = nn.Residual(_body(rng, dtype, 3, 5, 2),
                            nn.Sequential(nn.Conv2d(3, 5, 1, stride=2, bias=False, rng=rng, dtype=dtype),
                                          nn.BatchNorm2d(5, dtype=dtype)))
        tmodel = TorchResidual(_torch_body(3, 5, 2),
                               torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1, stride=2, bias=False),
                                                   torch.nn.BatchNorm2d(5)))
    else:
        model = nn.Residual(_body(rng, dtype, 3, 3, 1))
        tmodel = TorchResidual(_torch_body(3, 3, 1))
    x = seeded(0).standard_normal((2, 3, 9, 7)).astype(dtype)
    _compare(model, tmodel, x, dtype, model.describe())
    names = [n for n, _, _ in model.parameters()]
    assert names[:2] == ["body.0.weight", "body.1.weight"]
    assert ("shortcut.0.weight" in names) == projection


def test_residual_shape_mismatch_names_both_shapes():
    model = nn.Residual(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"Residual.*\(1, 4, 3, 3\).*\(1, 3, 5, 5\)"):
        model.forward(np.zeros((1, 3, 5, 5), np.float32))


def test_skip_concat(dtype):
    rng = seeded(5)
    inner = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1, rng=rng, dtype=dtype), nn.ReLU(),
                          nn.Upsample(2), nn.Conv2d(4, 2, 1, rng=rng, dtype=dtype))
    model = nn.Sequential(nn.SkipConcat(inner), nn.Conv2d(5, 3, 3, padding="same", rng=rng, dtype=dtype))
    tinner = torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(4, 2, 1))
    tmodel = torch.nn.Sequential(TorchSkipConcat(tinner), torch.nn.Conv2d(5, 3, 3, padding="same"))
    y, _ = _compare(model, tmodel, seeded(0).standard_normal((2, 3, 8, 6)).astype(dtype), dtype, "SkipConcat")
    assert y.shape == (2, 3, 8, 6)


def test_skip_concat_refuses_spatial_mismatch():
    model = nn.SkipConcat(nn.Sequential(nn.MaxPool2d(2), nn.Upsample(2)))
    with pytest.raises(ValueError, match=r"SkipConcat.*\(1, 2, 4, 4\).*\(1, 2, 5, 5\).*2\*\*depth"):
        model.forward(np.zeros((1, 2, 5, 5), np.float32))


def test_sequential_names_and_indexing():
    relu = nn.ReLU()
    seq = nn.Sequential(("stem", nn.Conv2d(1, 2, 3)), ("act", relu), nn.Linear(2, 3))
    assert [n for n, _ in seq.children()] == ["stem", "act", "2"]
    assert seq["act"] is relu and seq[1] is relu and len(seq) == 3
    assert [n for n, _, _ in seq.parameters()] == ["stem.weight", "stem.bias", "2.weight", "2.bias"]
    with pytest.raises(ValueError, match="unique"):
        nn.Sequential(("a", nn.ReLU()), ("a", nn.ReLU()))
    with pytest.raises(ValueError, match="hpcnn.nn modules"):
        nn.Sequential(torch.nn.ReLU())


def test_gradient_hook_fires_once_per_layer_in_backward_order():
    model = models.build("lenet")
    seen = []

    def hook(module):
        # The hook runs after the layer's gradients are filled in.
        assert all(np.any(g != 0) for g in module.grads.values())
        seen.append(module)

    model.set_grad_hook(hook)
    x = seeded(0).random((3, 1, 8, 8)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    owners = [m for m in model.modules() if m.params]
    assert seen == owners[::-1]


def test_parameter_names_and_order_are_stable():
    expected = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                "fc2.weight", "fc2.bias"]
    a = [n for n, _, _ in models.build("lenet").parameters()]
    b = [n for n, _, _ in models.build("lenet", seed=3).parameters()]
    assert a == b == expected
    names = [n for n, _, _ in models.build("resnet18", num_classes=10, width=8).parameters()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer2.0.residual.shortcut.0.weight" in names and names[-2:] == ["fc.weight", "fc.bias"]
    assert len(names) == len(set(names)) == 62
    state = [n for n, _ in models.build("resnet18", num_classes=10, width=8).state()]
    assert state[:2] == ["bn1.running_mean", "bn1.running_var"] and len(state) == 40


def test_parameters_are_writable_in_place():
    model = models.build("lenet")
    for _, p, _ in model.parameters():
        p[...] = 0.5
    assert np.all(model[0].params["weight"] == 0.5)


def test_replicate_shares_parameters_not_gradients():
    model = models.build("unet2d", width=4, depth=1)
    replica = model.replicate()
    for (n, p, g), (rn, rp, rg) in zip(model.parameters(), replica.parameters()):
        assert n == rn and p is rp and g is not rg
    x = seeded(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    replica.backward(np.ones_like(replica.forward(x)))
    assert all(np.all(g == 0) for _, _, g in model.parameters())
    assert any(np.any(g != 0) for _, _, g in replica.parameters())
    # Activation caches are the replica's own: the original's forward does not disturb the replica's backward.
    model.forward(seeded(1).standard_normal((1, 1, 8, 8)).astype(np.float32))
    dx = replica.backward(np.ones((2, 2, 8, 8), np.float32))
    assert dx.shape == (2, 1, 8, 8)
    # A weight update through the original is seen by the replica.
    next(model.parameters())[1][...] = 0
    assert np.all(next(replica.parameters())[1] == 0)


def test_astype_converts_params_grads_and_state():
    model = models.build("unet2d", width=4, depth=1).astype(np.float64)
    assert all(p.dtype == g.dtype == np.float64 for _, p, g in model.parameters())
    assert all(a.dtype == np.float64 for _, a in model.state())
    y = model.forward(seeded(0).standard_normal((1, 1, 4, 4)))
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match="expected dtype float64"):
        model.forward(np.zeros((1, 1, 4, 4), np.float32))


def test_train_and_eval_switch_every_layer():
    model = models.build("meshnet", widths=(4,), dilations=(1,))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_mirror_names_match():
    # The test oracle's torch twin has exactly hpcnn's parameter names (what "copy by name" relies on).
    model = models.build("unet2d", width=4, depth=2)
    tmodel = torch_mirror(model)
    assert [n for n, _, _ in model.parameters()] == [n for n, _ in tmodel.named_parameters()]
    assert OrderedDict(model.state()).keys() <= dict(tmodel.named_buffers()).keys()


# --- input checks ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, x, pattern", [
    (nn.Conv2d(16, 32, kernel_size=3), np.zeros((2, 8, 10, 10), np.float32),
     r"Conv2d\(16, 32, kernel_size=3\).*16 channels.*\(2, 8, 10, 10\)"),
    (nn.Conv2d(16, 32, kernel_size=3), np.zeros((16, 10, 10), np.float32),
     r"Conv2d\(16, 32, kernel_size=3\).*4-D.*\(16, 10, 10\)"),
    (nn.Conv2d(16, 32, kernel_size=3), np.zeros((1, 16, 10, 10), np.int32),
     r"Conv2d\(16, 32, kernel_size=3\).*float32 or float64.*int32"),
    (nn.Conv2d(16, 32, kernel_size=3), np.zeros((1, 16, 10, 10), np.float64),
     r"Conv2d\(16, 32, kernel_size=3\).*expected dtype float32.*float64.*\(1, 16, 10, 10\)"),
    (nn.Conv2d(2, 2, kernel_size=5), np.zeros((1, 2, 3, 3), np.float32),
     r"Conv2d\(2, 2, kernel_size=5\).*smaller than.*\(1, 2, 3, 3\)"),
    (nn.Conv3d(4, 8, 3, padding=1), np.zeros((1, 4, 5, 5), np.float32),
     r"Conv3d\(4, 8, kernel_size=3, padding=1\).*5-D.*\(1, 4, 5, 5\)"),
    (nn.BatchNorm2d(6), np.zeros((2, 5, 3, 3), np.float32), r"BatchNorm2d\(6\).*6 channels.*\(2, 5, 3, 3\)"),
    (nn.BatchNorm3d(6), np.zeros((2, 6, 3, 3), np.float32), r"BatchNorm3d\(6\).*5-D.*\(2, 6, 3, 3\)"),
    (nn.Linear(10, 3), np.zeros((4, 9), np.float32),
     r"Linear\(in_features=10, out_features=3\).*10 channels.*\(4, 9\)"),
    (nn.MaxPool2d(2), np.zeros((2, 3, 4), np.float32), r"MaxPool2d\(kernel_size=2, stride=2\).*4-D.*\(2, 3, 4\)"),
    (nn.AvgPool3d(3, stride=1), np.zeros((1, 1, 2, 4, 4), np.float32), r"AvgPool3d.*smaller.*\(1, 1, 2, 4, 4\)"),
    (nn.GlobalAvgPool(), np.zeros((2, 3), np.float32), r"GlobalAvgPool.*4-D or 5-D.*\(2, 3\)"),
    (nn.ReLU(), [1.0, 2.0], r"ReLU.*expected an array"),
])
def test_bad_input_names_layer_and_shapes(layer, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        layer.forward(x)


def test_error_inside_a_model_names_the_failing_layer():
    model = models.build("lenet")
    with pytest.raises(ValueError, match=r"Conv2d\(1, 16, kernel_size=3, padding=1\).*\(2, 3, 8, 8\)"):
        model.forward(np.zeros((2, 3, 8, 8), np.float32))


def test_running_stats_follow_torch_rule_after_astype():
    bn = nn.BatchNorm2d(3).astype(np.float64)
    x = seeded(0).standard_normal((2, 3, 4, 4)) * 2 + 1
    bn.forward(x)
    assert bn.running_mean.dtype == np.float64
    assert_close(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), np.float64, "running_mean")
    assert_close(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), np.float64, "running_var")
