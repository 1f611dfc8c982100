"""Every layer against PyTorch with the same weights: forward output, dx and every parameter gradient."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpcnn import nn

from hpcnn.nn.torch_mirror import copy_into_torch, torch_pads
from tests.oracle import assert_close, check_against_torch, seeded


def check_layer(layer, tlayer, x, dtype, what):
    """Copy layer's parameters into tlayer by name, then compare forward, dx and each parameter gradient."""
    copy_into_torch(layer, tlayer, dtype)
    return check_against_torch(layer.forward, layer.backward, tlayer, [x], dtype, what,
                               hp_grads=lambda: layer.grads, torch_params=dict(tlayer.named_parameters()))


def _input(shape, dtype, seed=0):
    return seeded(seed).standard_normal(shape).astype(dtype)


# --- convolution -----------------------------------------------------------------------------------------------

# (nd, N, C, K, spatial, kernel, stride, padding, dilation, bias)
CONV_CASES = [
    (2, 2, 3, 4, (9, 11), 1, 1, 0, 1, True),
    (2, 2, 3, 5, (9, 11), 3, 1, 1, 1, True),
    (2, 1, 4, 3, (10, 7), 3, 2, 1, 1, False),
    (2, 2, 3, 4, (12, 13), 5, 1, "same", 1, True),
    (2, 2, 2, 3, (15, 14), 7, 2, 3, 1, True),
    (2, 1, 2, 3, (13, 12), 7, 1, "same", 1, False),
    (2, 2, 3, 4, (11, 9), 3, 1, "same", 2, True),
    (2, 2, 3, 2, (11, 12), 3, 2, 0, 2, True),
    (2, 2, 3, 4, (8, 9), 4, 1, "same", 1, True),
    (2, 2, 3, 4, (9, 8), 3, 1, ((1, 0), (2, 1)), 1, True),
    (2, 1, 3, 4, (6, 7), (3, 1), (2, 1), (1, 0), 1, True),
    (2, 1, 3, 4, (7, 7), 5, 2, "valid", 1, True),
    (3, 2, 2, 3, (5, 6, 7), 3, 1, 1, 1, True),
    (3, 1, 3, 2, (7, 6, 5), 3, 2, 1, 1, False),
    (3, 2, 2, 3, (6, 5, 7), 1, 1, 0, 1, True),
    (3, 1, 2, 2, (9, 8, 7), 3, 1, "same", 2, True),
    (3, 1, 2, 2, (6, 6, 6), 2, 1, "same", 1, True),
    (3, 1, 2, 2, (9, 9, 9), 5, 2, 2, 1, True),
    (3, 1, 1, 2, (8, 9, 7), 7, 1, 3, 1, True),
    (3, 1, 2, 3, (5, 6, 4), 3, 1, ((0, 1), (1, 1), (2, 0)), 1, True),
]


def _torch_conv(nd, cin, cout, kernel, stride, padding, dilation, bias):
    """torch's own layer; per-side pairs (which torch's layers do not take) by padding the input first."""
    cls = torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d
    per_side = isinstance(padding, tuple) and isinstance(padding[0], tuple)
    conv = cls(cin, cout, kernel, stride=stride, padding=0 if per_side else padding, dilation=dilation, bias=bias)
    if per_side:
        pads = torch_pads(padding)
        conv.register_forward_pre_hook(lambda module, args: (F.pad(args[0], pads),))
    return conv


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}d-S{c[4]}-k{c[5]}-s{c[6]}-p{c[7]}-d{c[8]}")
def test_conv(case, dtype):
    nd, n, c, k, spatial, kernel, stride, padding, dilation, bias = case
    cls = nn.Conv2d if nd == 2 else nn.Conv3d
    layer = cls(c, k, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, rng=seeded(3),
                dtype=dtype)
    assert layer.params["weight"].dtype == dtype
    tlayer = _torch_conv(nd, c, k, kernel, stride, padding, dilation, bias)
    assert layer.params["weight"].shape == tuple(tlayer.weight.shape)
    check_layer(layer, tlayer, _input((n, c) + spatial, dtype), dtype, layer.describe())


def test_conv_attributes():
    layer = nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1, dilation=1, bias=False)
    assert (layer.in_channels, layer.out_channels) == (16, 32)
    assert layer.geometry.kernel == (3, 3) and layer.geometry.stride == (2, 2)
    assert layer.geometry.padding == ((1, 1), (1, 1)) and layer.geometry.dilation == (1, 1)
    assert layer.kernel_size == (3, 3) and "bias" not in layer.params and "bias" not in layer.grads
    assert layer.params["weight"].dtype == np.float32
    assert nn.Conv3d(2, 3, 3, padding="same", dilation=2).geometry.padding == ((2, 2),) * 3
    assert layer.describe() == "Conv2d(16, 32, kernel_size=3, stride=2, padding=1, bias=False)"


def test_conv_init_matches_torch_default_bounds():
    # kaiming_uniform_(a=sqrt(5)) and the bias rule both give U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    layer = nn.Conv2d(8, 64, 3, rng=seeded(0))
    bound = 1 / np.sqrt(8 * 9)
    w, b = layer.params["weight"], layer.params["bias"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound
    lin = nn.Linear(50, 400, rng=seeded(0))
    assert np.abs(lin.params["weight"]).max() <= 1 / np.sqrt(50)


def test_manual_seed_reproduces_initialization():
    nn.manual_seed(7)
    a = nn.Conv2d(3, 4, 3).params["weight"].copy()
    nn.manual_seed(7)
    b = nn.Conv2d(3, 4, 3).params["weight"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.Conv2d(3, 4, 3).params["weight"])


# --- pooling ---------------------------------------------------------------------------------------------------

# (nd, spatial, kernel, stride, padding)
POOL_CASES = [
    (2, (9, 11), 2, None, 0),
    (2, (9, 11), 3, 2, 1),
    (2, (8, 7), 3, 1, 1),
    (2, (10, 9), (2, 3), (1, 2), 0),
    (2, (11, 10), 5, 2, 2),
    (3, (5, 6, 7), 2, None, 0),
    (3, (7, 6, 5), 3, 2, 1),
    (3, (5, 5, 6), 3, 1, 1),
]
_TORCH_POOL = {(nn.MaxPool2d, 2): torch.nn.MaxPool2d, (nn.MaxPool3d, 3): torch.nn.MaxPool3d,
               (nn.AvgPool2d, 2): torch.nn.AvgPool2d, (nn.AvgPool3d, 3): torch.nn.AvgPool3d}


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}d-S{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}")
def test_pool(case, kind, dtype):
    nd, spatial, kernel, stride, padding = case
    cls = {("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d, ("avg", 2): nn.AvgPool2d,
           ("avg", 3): nn.AvgPool3d}[(kind, nd)]
    layer = cls(kernel, stride=stride, padding=padding)
    tlayer = _TORCH_POOL[(cls, nd)](kernel, stride=stride, padding=padding)
    check_layer(layer, tlayer, _input((2, 3) + spatial, dtype), dtype, layer.describe())


def test_pool_stride_defaults_to_kernel():
    assert nn.MaxPool2d(3).geometry.stride == (3, 3)
    assert nn.AvgPool3d(2).geometry.stride == (2, 2, 2)
    with pytest.raises(ValueError, match="at most half"):
        nn.MaxPool2d(2, padding=2)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 3, 4, 5, 3)])
def test_global_avg_pool(shape, dtype):
    check_layer(nn.GlobalAvgPool(), _TorchMeanSpatial(), _input(shape, dtype), dtype, "GlobalAvgPool")


class _TorchMeanSpatial(torch.nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dim() == 4 else F.adaptive_avg_pool3d(x, 1).flatten(1)


# --- batch norm ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (2, 3, 4, 3, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("affine, momentum", [(True, 0.1), (False, 0.3)])
def test_batchnorm_train_then_eval(shape, affine, momentum, dtype):
    cls, tcls = (nn.BatchNorm2d, torch.nn.BatchNorm2d) if len(shape) == 4 else (nn.BatchNorm3d, torch.nn.BatchNorm3d)
    c = shape[1]
    layer = cls(c, eps=1e-3, momentum=momentum, affine=affine, dtype=dtype)
    if affine:  # non-trivial gamma and beta, copied into torch
        layer.params["weight"][...] = seeded(5).uniform(0.5, 1.5, c)
        layer.params["bias"][...] = seeded(6).standard_normal(c)
    tlayer = tcls(c, eps=1e-3, momentum=momentum, affine=affine)
    copy_into_torch(layer, tlayer, dtype)
    for step in range(2):  # two training steps: the running statistics follow torch's rule
        x = (_input(shape, dtype, seed=10 + step) * 2 + 3).astype(dtype)
        check_against_torch(layer.forward, layer.backward, tlayer, [x], dtype, f"{layer.describe()} train {step}",
                            hp_grads=lambda: layer.grads, torch_params=dict(tlayer.named_parameters()))
        assert_close(layer.running_mean, tlayer.running_mean.numpy(), dtype, "running_mean")
        assert_close(layer.running_var, tlayer.running_var.numpy(), dtype, "running_var")
        for p in tlayer.parameters():
            p.grad = None
    layer.eval()
    tlayer.eval()
    check_against_torch(layer.forward, layer.backward, tlayer, [_input(shape, dtype, seed=20)], dtype,
                        f"{layer.describe()} eval", hp_grads=lambda: layer.grads,
                        torch_params=dict(tlayer.named_parameters()))
    assert_close(layer.running_mean, tlayer.running_mean.numpy(), dtype, "running_mean after eval")


def test_batchnorm_state_and_defaults():
    bn = nn.BatchNorm2d(4)
    assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.1, True)
    assert [n for n, _ in bn.state()] == ["running_mean", "running_var"]
    np.testing.assert_array_equal(bn.params["weight"], 1)
    np.testing.assert_array_equal(bn.params["bias"], 0)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\).*more than one value"):
        bn.forward(np.ones((1, 4, 1, 1), np.float32))


# --- activations, linear, flatten, upsample ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5, 6), (2, 2, 3, 4, 5)])
@pytest.mark.parametrize("layer, tlayer", [(nn.ReLU(), torch.nn.ReLU()),
                                           (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
                                           (nn.LeakyReLU(), torch.nn.LeakyReLU())],
                         ids=["relu", "leaky0.1", "leaky-default"])
def test_activation(layer, tlayer, shape, dtype):
    check_layer(layer, tlayer, _input(shape, dtype), dtype, layer.describe())


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, dtype):
    layer = nn.Linear(7, 5, bias=bias, rng=seeded(2), dtype=dtype)
    assert layer.params["weight"].shape == (5, 7)
    check_layer(layer, torch.nn.Linear(7, 5, bias=bias), _input((6, 7), dtype), dtype, layer.describe())


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 2, 3, 4), (4, 6)])
def test_flatten(shape, dtype):
    check_layer(nn.Flatten(), torch.nn.Flatten(), _input(shape, dtype), dtype, "Flatten")


@pytest.mark.parametrize("shape, scale", [((2, 3, 4, 5), 2), ((1, 2, 3, 4), (2, 3)), ((2, 2, 3, 2, 4), 2),
                                          ((1, 2, 2, 3, 2), (1, 2, 3))])
def test_upsample(shape, scale, dtype):
    layer = nn.Upsample(scale_factor=scale)
    check_layer(layer, torch.nn.Upsample(scale_factor=scale, mode="nearest"), _input(shape, dtype), dtype,
                layer.describe())


def test_upsample_refuses_fractional_scale():
    with pytest.raises(ValueError, match="scale_factor"):
        nn.Upsample(1.5)
    with pytest.raises(ValueError, match=r"expected a 5-D input, received shape \(1, 2, 3, 4\)"):
        nn.Upsample((1, 2, 2)).forward(np.zeros((1, 2, 3, 4), np.float32))
