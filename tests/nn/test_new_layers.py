"""ConvTranspose2d/3d, GroupNorm, Dropout and bilinear Upsample against PyTorch: forward, dx and every parameter
gradient, 2-D and 3-D."""
import numpy as np
import pytest
import torch

from hpcnn import nn
from hpcnn.nn.torch_mirror import copy_into_torch, torch_mirror
from tests.oracle import check_against_torch, seeded


def check_layer(layer, x, dtype, what, tlayer=None):
    tlayer = copy_into_torch(layer, tlayer or torch_mirror(layer), dtype)
    return check_against_torch(layer.forward, layer.backward, tlayer, [x], dtype, what,
                               hp_grads=lambda: layer.grads, torch_params=dict(tlayer.named_parameters()))


def _input(shape, dtype, seed=0):
    return seeded(seed).standard_normal(shape).astype(dtype)


# (nd, N, Cin, Cout, spatial, kernel, stride, padding, output_padding, dilation, bias)
CONVT_CASES = [
    (2, 2, 3, 4, (5, 6), 2, 2, 0, 0, 1, True),
    (2, 2, 3, 2, (5, 4), 3, 2, 1, 1, 1, True),
    (2, 1, 2, 3, (4, 5), 3, 1, 1, 0, 1, False),
    (2, 2, 3, 2, (6, 5), 4, 3, 2, 2, 1, True),
    (2, 1, 2, 2, (5, 5), 3, 1, 0, 1, 2, True),      # output_padding < dilation
    (2, 1, 2, 3, (4, 6), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2), True),
    (2, 1, 2, 2, (3, 3), 5, 2, 0, 1, 1, True),
    (2, 1, 2, 2, (4, 3), 3, 1, 0, 2, 3, True),      # the last output_padding rows are read by no window
    (3, 2, 2, 3, (3, 4, 3), 2, 2, 0, 0, 1, True),
    (3, 1, 2, 2, (3, 3, 4), 3, 2, 1, 1, 1, False),
    (3, 1, 3, 2, (4, 3, 3), 3, 1, 1, 0, 2, True),
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=lambda c: f"{c[0]}d-k{c[5]}-s{c[6]}-p{c[7]}-op{c[8]}-d{c[9]}")
def test_conv_transpose_matches_torch(case, dtype):
    nd, n, cin, cout, spatial, kernel, stride, padding, op, dilation, bias = case
    cls = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
    layer = cls(cin, cout, kernel, stride=stride, padding=padding, output_padding=op, dilation=dilation,
                bias=bias, rng=seeded(1), dtype=dtype)
    tcls = torch.nn.ConvTranspose2d if nd == 2 else torch.nn.ConvTranspose3d
    tlayer = tcls(cin, cout, kernel, stride=stride, padding=padding, output_padding=op, dilation=dilation, bias=bias)
    x = _input((n, cin) + spatial, dtype)
    check_layer(layer, x, dtype, layer.describe(), tlayer)
    assert layer.params["weight"].shape == tuple(tlayer.weight.shape)


def test_conv_transpose_refusals():
    with pytest.raises(ValueError, match="output_padding must be smaller than stride or dilation"):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="only groups=1"):
        nn.ConvTranspose2d(2, 2, 3, groups=2)


# (groups, channels, input shape, affine, eps)
GROUPNORM_CASES = [
    (2, 4, (3, 4, 5, 6), True, 1e-5),
    (1, 3, (2, 3, 4, 4), True, 1e-5),         # one group: layer norm over (C, *S)
    (6, 6, (2, 6, 3, 5), True, 1e-3),         # one channel per group: instance norm
    (3, 6, (2, 6, 4, 3), False, 1e-5),
    (2, 4, (2, 4, 3, 4, 5), True, 1e-5),
    (4, 8, (1, 8, 2, 3, 4), False, 1e-4),
]


@pytest.mark.parametrize("case", GROUPNORM_CASES, ids=lambda c: f"g{c[0]}c{c[1]}-{len(c[2]) - 2}d-affine{c[3]}")
def test_groupnorm_matches_torch(case, dtype):
    groups, channels, shape, affine, eps = case
    layer = nn.GroupNorm(groups, channels, eps=eps, affine=affine, dtype=dtype)
    if affine:
        layer.params["weight"][...] = np.linspace(0.5, 1.5, channels)
        layer.params["bias"][...] = np.linspace(-1, 1, channels)
    x = _input(shape, dtype) * 3 + 1
    check_layer(layer, x, dtype, layer.describe())
    layer.eval()  # the same in evaluation: no running statistics
    check_layer(layer, x, dtype, layer.describe() + " eval")


def test_groupnorm_refuses_channels_not_divisible():
    with pytest.raises(ValueError, match="num_channels must be a positive multiple of num_groups"):
        nn.GroupNorm(3, 4)


@pytest.mark.parametrize("mode,scale,shape", [
    ("bilinear", 2, (2, 3, 5, 4)), ("bilinear", 3, (1, 2, 4, 5)), ("bilinear", (2, 3), (2, 2, 3, 4)),
    ("bilinear", (1, 4), (1, 2, 3, 3)), ("bilinear", 2, (1, 1, 1, 2)),
    ("trilinear", 2, (1, 2, 3, 4, 3)), ("trilinear", (3, 1, 2), (2, 1, 2, 3, 4)),
], ids=lambda v: str(v))
def test_linear_upsample_matches_torch(mode, scale, shape, dtype):
    layer = nn.Upsample(scale_factor=scale, mode=mode)
    check_layer(layer, _input(shape, dtype), dtype, layer.describe())


def test_upsample_refusals():
    with pytest.raises(ValueError, match="only align_corners=False"):
        nn.Upsample(2, mode="bilinear", align_corners=True)
    with pytest.raises(ValueError, match="mode must be one of 'nearest', 'bilinear', 'trilinear'"):
        nn.Upsample(2, mode="bicubic")
    with pytest.raises(ValueError):
        nn.Upsample(2, mode="bilinear").forward(np.zeros((1, 1, 2, 2, 2), np.float32))


@pytest.mark.parametrize("shape", [(4, 3, 20, 30), (3, 2, 6, 5, 7), (16, 40)], ids=str)
def test_dropout_matches_its_mirror_and_torch_in_eval(shape, dtype):
    layer = nn.Dropout(0.3, seed=5)
    check_layer(layer, _input(shape, dtype), dtype, layer.describe())
    layer.eval()
    x = _input(shape, dtype, seed=1)
    np.testing.assert_array_equal(layer.forward(x), torch.nn.Dropout(0.3).eval()(torch.from_numpy(x)).numpy())


def test_dropout_mask_statistics_and_steps():
    x = np.ones((8, 4, 64, 64), np.float32)
    layer = nn.Dropout(0.25, seed=1)
    y0 = layer.forward(x)
    assert abs((y0 == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(y0[y0 != 0], 1 / 0.75, rtol=1e-6)
    assert abs(y0.mean() - 1.0) < 0.02                                    # expectation kept
    y1 = layer.forward(x)                                                  # the next step: another mask
    assert layer.step == 2 and abs(((y0 == 0) == (y1 == 0)).mean() - (0.25 ** 2 + 0.75 ** 2)) < 0.01
    np.testing.assert_array_equal(layer.backward(x), y1)                  # the gradient goes through the mask
    again = nn.Dropout(0.25, seed=1)
    np.testing.assert_array_equal(again.forward(x), y0)                   # a function of (seed, step, index)
    again.step = 1
    np.testing.assert_array_equal(again.forward(x), y1)
    # a block of the tensor draws the block of the mask
    from hpcnn.kernels.dropout import dropout_mask
    block = dropout_mask(np, (3, 4, 10, 64), (2, 0, 20, 0), x.shape, 1, 0, 0.25, np.dtype(np.float32))
    np.testing.assert_array_equal(block * 1.0, y0[2:5, :, 20:30])
    assert np.array_equal(nn.Dropout(0.0).forward(x), x) and not nn.Dropout(1.0).forward(x).any()
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        nn.Dropout(1.5)


def test_dropout_on_the_emulated_gpu_draws_the_host_mask():
    from hpcnn.backend import open_device, to_host
    dev = open_device("emulated-gpu")
    x = np.ones((2, 3, 9, 7), np.float64)
    host, device = nn.Dropout(0.5, seed=3), nn.Dropout(0.5, seed=3)
    np.testing.assert_array_equal(to_host(device.forward(dev.put(x))), host.forward(x))
