"""The model zoo: build(name, **options) for LeNet, ResNet-18/34/50, a small U-Net, MeshNet and CosmoFlow.

Every model is an nn.Sequential tree of hpcnn.nn layers, built reproducibly from `seed` (the same seed
gives the same weights on every rank and in every dtype up to rounding) in `dtype` (float32 default).
"""
import inspect
import math
from functools import partial

import numpy as np

from . import (BatchNorm2d, Conv2d, Conv3d, Flatten, GlobalAvgPool, LeakyReLU, Linear, MaxPool2d,
               MaxPool3d, ReLU, Residual, Sequential, SkipConcat, Upsample)
from .init import kaiming_normal_fan_out, resolve_dtype
from .module import default_rng

__all__ = ["build", "build_for_input", "input_options", "default_input", "names", "options", "DEFAULT_INPUTS",
           "lenet", "resnet18", "resnet34", "resnet50", "unet2d", "meshnet", "cosmoflow"]

_MODELS = {}

# Each model's usual input (C, *S), for commands that are not told one.
DEFAULT_INPUTS = {"resnet18": (3, 224, 224), "resnet34": (3, 224, 224), "resnet50": (3, 224, 224),
                  "unet2d": (1, 256, 256), "meshnet": (18, 2048, 2048), "cosmoflow": (4, 128, 128, 128),
                  "lenet": (1, 8, 8)}


def _registered(fn):
    _MODELS[fn.__name__] = fn
    return fn


def names():
    """The model names that build() knows, sorted."""
    return sorted(_MODELS)


def options(name):
    """{option: default} for one model."""
    _known(name)
    return {p.name: p.default for p in inspect.signature(_MODELS[name]).parameters.values()}


def _known(name):
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(names())}")


def build(name, **opts):
    """The model `name` with `opts` (see options(name)); an unknown name or option is a ValueError."""
    _known(name)
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {', '.join(unknown)}; valid options: "
                         + ", ".join(f"{k}={v!r}" for k, v in valid.items()))
    return _MODELS[name](**opts)


def default_input(name):
    """The usual input (C, *S) of model `name`."""
    _known(name)
    if name not in DEFAULT_INPUTS:
        raise ValueError(f"model {name!r} has no usual input size: give one")
    return DEFAULT_INPUTS[name]


def input_options(name, input_shape):
    """The build options that an input (C, *S) fixes: in_channels, and input_size where the model has one."""
    _known(name)
    c, spatial = int(input_shape[0]), tuple(int(s) for s in input_shape[1:])
    opts = {"in_channels": c}
    if name == "cosmoflow":
        if len(spatial) != 3 or len(set(spatial)) != 1:
            raise ValueError(f"model 'cosmoflow' takes a cubic input CxSxSxS, received {tuple(input_shape)}")
        opts["input_size"] = spatial[0]
    elif name == "lenet":
        if len(spatial) != 2 or spatial[0] != spatial[1]:
            raise ValueError(f"model 'lenet' takes a square input CxSxS, received {tuple(input_shape)}")
        opts["input_size"] = spatial[0]
    elif len(spatial) != 2:
        raise ValueError(f"model {name!r} takes a 2-D input CxHxW, received {tuple(input_shape)}")
    return opts


def build_for_input(name, input_shape, **opts):
    """build(name) for inputs of shape (C, *S): in_channels (and input_size) from the shape, then `opts`."""
    return build(name, **{**input_options(name, input_shape), **opts})


def _binder(seed, dtype):
    """bind(LayerClass) -> the class with this model's generator and dtype filled in."""
    rng = default_rng() if seed is None else np.random.default_rng(seed)
    dtype = resolve_dtype(dtype)
    return rng, (lambda cls: partial(cls, rng=rng, dtype=dtype))


def _positive(model, **values):
    for key, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"model {model!r}: {key} must be a positive int, received {v!r}")


# --- LeNet ------------------------------------------------------------------------------------------------

@_registered
def lenet(in_channels=1, num_classes=10, input_size=8, seed=0, dtype=None):
    """A LeNet-style classifier for scikit-learn's 8x8 digits (or digits upscaled to `input_size`).

    x: (N, in_channels, input_size, input_size), input_size divisible by 4 -> logits (N, num_classes).
    Two [3x3 conv, ReLU, 2x2 max-pool] stages (16 and 32 channels), then 64 hidden units.
    """
    _positive("lenet", in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    if input_size % 4:
        raise ValueError(f"model 'lenet': input_size must be divisible by 4, received {input_size}")
    _, bind = _binder(seed, dtype)
    conv, linear = bind(Conv2d), bind(Linear)
    side = input_size // 4
    return Sequential(
        ("conv1", conv(in_channels, 16, 3, padding=1)), ("relu1", ReLU()), ("pool1", MaxPool2d(2)),
        ("conv2", conv(16, 32, 3, padding=1)), ("relu2", ReLU()), ("pool2", MaxPool2d(2)),
        ("flatten", Flatten()),
        ("fc1", linear(32 * side * side, 64)), ("relu3", ReLU()),
        ("fc2", linear(64, num_classes)))


# --- ResNet (torchvision's architecture) ---------------------------------------------------------------------

def _basic_block(bind, inplanes, planes, stride):
    conv, bn = bind(Conv2d), bind(BatchNorm2d)
    body = Sequential(("conv1", conv(inplanes, planes, 3, stride=stride, padding=1, bias=False)),
                      ("bn1", bn(planes)), ("relu", ReLU()),
                      ("conv2", conv(planes, planes, 3, padding=1, bias=False)), ("bn2", bn(planes)))
    return body, planes


def _bottleneck_block(bind, inplanes, planes, stride):
    # ResNet v1.5 (torchvision): the stride sits on the 3x3 convolution.
    conv, bn = bind(Conv2d), bind(BatchNorm2d)
    out = planes * 4
    body = Sequential(("conv1", conv(inplanes, planes, 1, bias=False)), ("bn1", bn(planes)), ("relu1", ReLU()),
                      ("conv2", conv(planes, planes, 3, stride=stride, padding=1, bias=False)),
                      ("bn2", bn(planes)), ("relu2", ReLU()),
                      ("conv3", conv(planes, out, 1, bias=False)), ("bn3", bn(out)))
    return body, out


def _resnet(name, block, counts, in_channels, num_classes, small_input, width, seed, dtype):
    _positive(name, in_channels=in_channels, num_classes=num_classes, width=width)
    rng, bind = _binder(seed, dtype)
    conv, bn = bind(Conv2d), bind(BatchNorm2d)
    if small_input:
        stem = [("conv1", conv(in_channels, width, 3, padding=1, bias=False)), ("bn1", bn(width)),
                ("relu", ReLU())]
    else:
        stem = [("conv1", conv(in_channels, width, 7, stride=2, padding=3, bias=False)), ("bn1", bn(width)),
                ("relu", ReLU()), ("maxpool", MaxPool2d(3, stride=2, padding=1))]
    stages = []
    inplanes = width
    for i, count in enumerate(counts):
        blocks = []
        for b in range(count):
            stride = 2 if (i > 0 and b == 0) else 1
            body, out = block(bind, inplanes, width * 2 ** i, stride)
            shortcut = None
            if stride != 1 or inplanes != out:
                shortcut = Sequential(("0", conv(inplanes, out, 1, stride=stride, bias=False)), ("1", bn(out)))
            blocks.append(Sequential(("residual", Residual(body, shortcut)), ("relu", ReLU())))
            inplanes = out
        stages.append((f"layer{i + 1}", Sequential(*blocks)))
    model = Sequential(*stem, *stages, ("avgpool", GlobalAvgPool()),
                       ("fc", bind(Linear)(inplanes, num_classes)))
    # torchvision re-initializes every convolution (kaiming_normal_, mode='fan_out', relu); BN and fc keep
    # PyTorch's defaults.
    for m in model.modules():
        if isinstance(m, Conv2d):
            w = m.params["weight"]
            w[...] = kaiming_normal_fan_out(rng, w.shape, m.out_channels * math.prod(m.kernel_size), w.dtype)
    return model


@_registered
def resnet18(in_channels=3, num_classes=1000, small_input=False, width=64, seed=0, dtype=None):
    """ResNet-18 (torchvision's: BasicBlocks [2, 2, 2, 2]).

    x: (N, in_channels, H, W) -> logits (N, num_classes). small_input=True replaces the 7x7/2 stem and
    its max-pool by a 3x3/1 convolution (CIFAR-sized images); width scales every stage (64 in the paper).
    """
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), in_channels, num_classes, small_input, width, seed,
                   dtype)


@_registered
def resnet34(in_channels=3, num_classes=1000, small_input=False, width=64, seed=0, dtype=None):
    """ResNet-34 (torchvision's: BasicBlocks [3, 4, 6, 3]); options as resnet18."""
    return _resnet("resnet34", _basic_block, (3, 4, 6, 3), in_channels, num_classes, small_input, width, seed,
                   dtype)


@_registered
def resnet50(in_channels=3, num_classes=1000, small_input=False, width=64, seed=0, dtype=None):
    """ResNet-50 (torchvision's v1.5: Bottlenecks [3, 4, 6, 3], expansion 4); options as resnet18."""
    return _resnet("resnet50", _bottleneck_block, (3, 4, 6, 3), in_channels, num_classes, small_input, width,
                   seed, dtype)


# --- U-Net -----------------------------------------------------------------------------------------------------

def _conv_bn_relu_twice(bind, cin, cout):
    conv, bn = bind(Conv2d), bind(BatchNorm2d)
    return Sequential(("conv1", conv(cin, cout, 3, padding=1, bias=False)), ("bn1", bn(cout)), ("relu1", ReLU()),
                      ("conv2", conv(cout, cout, 3, padding=1, bias=False)), ("bn2", bn(cout)), ("relu2", ReLU()))


def _unet_level(bind, cin, width, depth):
    if depth == 0:
        return _conv_bn_relu_twice(bind, cin, width)
    inner = Sequential(("pool", MaxPool2d(2)), ("level", _unet_level(bind, width, 2 * width, depth - 1)),
                       ("upsample", Upsample(2)), ("reduce", bind(Conv2d)(2 * width, width, 1)))
    return Sequential(("encode", _conv_bn_relu_twice(bind, cin, width)), ("skip", SkipConcat(inner)),
                      ("decode", _conv_bn_relu_twice(bind, 2 * width, width)))


@_registered
def unet2d(in_channels=1, num_classes=2, width=16, depth=2, seed=0, dtype=None):
    """A small 2-D U-Net for per-pixel classes.

    x: (N, in_channels, H, W) with H, W divisible by 2**depth -> logits (N, num_classes, H, W).
    Each level: two [3x3 conv, BN, ReLU], a skip (SkipConcat) around [2x2 max-pool, the next level at
    twice the width, nearest upsampling, 1x1 conv back to the width], two [3x3 conv, BN, ReLU]; a 1x1
    classifier at the end.
    """
    _positive("unet2d", in_channels=in_channels, num_classes=num_classes, width=width)
    if not isinstance(depth, int) or depth < 0:
        raise ValueError(f"model 'unet2d': depth must be a non-negative int, received {depth!r}")
    _, bind = _binder(seed, dtype)
    return Sequential(("body", _unet_level(bind, in_channels, width, depth)),
                      ("classifier", bind(Conv2d)(width, num_classes, 1)))


# --- MeshNet -------------------------------------------------------------------------------------------------

@_registered
def meshnet(in_channels=18, num_classes=2, widths=(32, 32, 32, 32), dilations=(1, 2, 4, 1), seed=0, dtype=None):
    """A fully convolutional per-pixel classifier for very large 2-D inputs (the mesh-tangling problem:
    18 input channels per mesh cell).

    x: (N, in_channels, H, W) -> logits (N, num_classes, H, W), any H, W. One [3x3 conv (dilation d,
    'same' padding), BN, ReLU] block per entry of widths/dilations, then a 1x1 classifier.
    """
    _positive("meshnet", in_channels=in_channels, num_classes=num_classes)
    widths, dilations = tuple(widths), tuple(dilations)
    if len(widths) != len(dilations) or not widths:
        raise ValueError(f"model 'meshnet': widths and dilations need one entry per block, received "
                         f"widths={widths}, dilations={dilations}")
    _positive("meshnet", **{f"widths[{i}]": w for i, w in enumerate(widths)},
              **{f"dilations[{i}]": d for i, d in enumerate(dilations)})
    _, bind = _binder(seed, dtype)
    conv, bn = bind(Conv2d), bind(BatchNorm2d)
    layers = []
    cin = in_channels
    for i, (w, d) in enumerate(zip(widths, dilations)):
        layers.append((f"block{i + 1}", Sequential(("conv", conv(cin, w, 3, padding=d, dilation=d, bias=False)),
                                                   ("bn", bn(w)), ("relu", ReLU()))))
        cin = w
    layers.append(("classifier", conv(cin, num_classes, 1)))
    return Sequential(*layers)


# --- CosmoFlow -----------------------------------------------------------------------------------------------

@_registered
def cosmoflow(in_channels=4, num_outputs=4, input_size=128, width=16, kernel_size=2, num_blocks=None,
              fc_sizes=(128, 64), seed=0, dtype=None):
    """CosmoFlow (MLPerf HPC): regress `num_outputs` cosmological parameters from a 3-D density cube.

    x: (N, in_channels, S, S, S) with S = input_size -> y: (N, num_outputs). `num_blocks` blocks of
    [conv3d kernel_size 'same' with width*2**i channels, LeakyReLU(0.3), 2x2x2 max-pool] (default: as
    many as bring S down to 4), then Flatten and Linear layers of fc_sizes with LeakyReLU(0.3).
    kernel_size=2 with 'same' padding pads one cell after and none before (as the reference does).
    """
    _positive("cosmoflow", in_channels=in_channels, num_outputs=num_outputs, input_size=input_size, width=width,
              kernel_size=kernel_size)
    if num_blocks is None:
        num_blocks = max(int(math.log2(input_size // 4)), 1) if input_size >= 8 else 1
    _positive("cosmoflow", num_blocks=num_blocks)
    if input_size % 2 ** num_blocks:
        raise ValueError(f"model 'cosmoflow': input_size {input_size} must be divisible by 2**num_blocks = "
                         f"{2 ** num_blocks}")
    _, bind = _binder(seed, dtype)
    conv, linear = bind(Conv3d), bind(Linear)
    layers = []
    cin = in_channels
    for i in range(num_blocks):
        cout = width * 2 ** i
        layers.append((f"block{i + 1}", Sequential(("conv", conv(cin, cout, kernel_size, padding="same")),
                                                   ("act", LeakyReLU(0.3)), ("pool", MaxPool3d(2)))))
        cin = cout
    layers.append(("flatten", Flatten()))
    features = cin * (input_size // 2 ** num_blocks) ** 3
    for i, size in enumerate(fc_sizes):
        layers += [(f"fc{i + 1}", linear(features, size)), (f"act{i + 1}", LeakyReLU(0.3))]
        features = size
    layers.append(("output", linear(features, num_outputs)))
    return Sequential(*layers)

