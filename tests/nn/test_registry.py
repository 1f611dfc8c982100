"""The layer registry: every nn layer class has one entry, and every entry's form, pricing, op and mirror exist."""
import inspect

import pytest

from hpcnn import nn
from hpcnn.nn import registry
from hpcnn.nn.module import Module

REFERENCES = ("distributed", "cost", "fused", "mirror")


def _public_layer_classes():
    """Every concrete class hpcnn.nn exports that is a Module or a loss."""
    out = []
    for name in nn.__all__:
        obj = getattr(nn, name)
        if inspect.isclass(obj) and obj is not Module and (issubclass(obj, Module) or name.endswith("Loss")):
            out.append(obj)
    return out


@pytest.mark.parametrize("cls", _public_layer_classes(), ids=lambda c: c.__name__)
def test_every_nn_class_has_exactly_one_kind(cls):
    kinds = [k for k in registry.KINDS if cls in k.classes]
    assert len(kinds) == 1, f"{cls.__name__} is registered {len(kinds)} times"


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda k: k.name)
def test_every_kind_resolves_its_references(kind):
    assert kind.resolve("distributed") is not None, f"{kind.name}: no distributed form"
    assert kind.resolve("mirror") is not None, f"{kind.name}: no PyTorch mirror"
    if kind.role == "loss":
        assert kind.cost is None and kind.work is None   # the model prices no loss
    else:
        assert callable(kind.resolve("cost")), f"{kind.name}: no pricing in perfmodel"
    if kind.role == "layer":
        assert callable(kind.work), f"{kind.name}: no cost description"
    else:
        assert kind.work is None
    if kind.fused is not None:
        assert callable(kind.resolve("fused"))


def test_distributed_forms_are_distributed_modules():
    from hpcnn.parallel.module import DistModule
    for kind in registry.KINDS:
        form = kind.resolve("distributed")
        assert (kind.role == "loss") != issubclass(form, DistModule), kind.name


# One example per leaf layer kind: a new kind fails test_examples_cover_every_layer_kind until it has one.
EXAMPLES = {
    "conv": (lambda: nn.Conv3d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6, 5)),
    "conv_transpose": (lambda: nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 4, 2)),
    "maxpool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 9, 8)),
    "avgpool": (lambda: nn.AvgPool3d(2), (2, 2, 4, 6, 4)),
    "upsample": (lambda: nn.Upsample((2, 3)), (2, 2, 4, 3)),
    "batchnorm": (lambda: nn.BatchNorm2d(2), (3, 2, 4, 4)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3, 5)),
    "dropout": (lambda: nn.Dropout(0.3), (2, 3, 4, 4)),
    "relu": (lambda: nn.ReLU(), (2, 3, 4, 4)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (2, 5)),
    "global_avgpool": (lambda: nn.GlobalAvgPool(), (2, 3, 4, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 4, 5)),
    "linear": (lambda: nn.Linear(6, 4), (3, 6)),
}


def test_examples_cover_every_layer_kind():
    assert set(EXAMPLES) == {k.name for k in registry.KINDS if k.role == "layer"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_kind_describes_what_its_layer_computes(name):
    """The cost description carries the kind's name (how perfmodel finds its pricing) and the output shape the
    layer really produces."""
    import numpy as np
    make, shape = EXAMPLES[name]
    layer = make()
    kind = registry.kind_of(layer)
    spec = kind.describe(layer, "x", shape)
    y = layer.forward(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    assert kind.name == name and spec.kind == name
    assert spec.in_shape == shape and spec.out_shape == tuple(y.shape)
    assert spec.params == sum(p.size for p in layer.params.values())


def test_an_unregistered_layer_is_refused_by_name():
    class Mine(Module):
        pass
    with pytest.raises(ValueError, match="no layer kind is registered for Mine"):
        registry.kind_of(Mine())
