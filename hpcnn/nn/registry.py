"""The layer registry: one entry per layer kind, naming everything hpcnn knows about that kind.

An entry (`LayerKind`) gives the kind's nn classes and

- `work`: the cost description, (layer, name, global input shape) -> hpcnn.nn.work.LayerSpec,
  which perfmodel prices (leaves only; containers have a `structure` instead);
- `distributed`: its distributed form in hpcnn.parallel (a DistModule class, or a loss class);
- `cost`: perfmodel's pricing of a LayerSpec (or of a container's own work) under a grid;
- `fused`: its op in the CHAOS fused step (hpcnn.chaos.ops), where it has one;
- `mirror`: the PyTorch module computing the same (hpcnn.nn.torch_mirror), for tests and benchmarks.

Forms, pricing, ops and mirrors live in the packages above nn (which nn must not import), so
the entry names them as "module:attribute" and `LayerKind.resolve` imports them when asked:
everything that dispatches on layers (distribute, the model walk, the fused program builder,
the mirror) reads this table, and adding a layer kind is one nn file and one entry here.
tests/nn/test_registry.py fails for any nn layer class without an entry, or an entry whose
form, pricing or mirror does not resolve.
"""
import importlib
from dataclasses import dataclass

from .activation import LeakyReLU, ReLU, leaky_relu_work, relu_work
from .container import Residual, Sequential, SkipConcat
from .conv import Conv2d, Conv3d, conv_work
from .conv_transpose import ConvTranspose2d, ConvTranspose3d, conv_transpose_work
from .dropout import Dropout, dropout_work
from .groupnorm import GroupNorm, groupnorm_work
from .linear import Flatten, Linear, flatten_work, linear_work
from .loss import CrossEntropyLoss, MSELoss
from .norm import BatchNorm2d, BatchNorm3d, batchnorm_work
from .pool import (AvgPool2d, AvgPool3d, GlobalAvgPool, MaxPool2d, MaxPool3d, global_avgpool_work,
                   pool_work)
from .upsample import Upsample, upsample_work

__all__ = ["LayerKind", "KINDS", "kind_of", "by_name", "register"]

ROLES = ("layer", "container", "loss")
STRUCTURES = ("chain", "residual", "skip")


@dataclass(frozen=True)
class LayerKind:
    """One layer kind. name: as perfmodel and machine profiles call it; classes: its nn classes;
    role: 'layer', 'container' or 'loss'; keeps: (input, output) held from forward until backward
    (what its activation memory is made of); structure: how a container composes its children
    ('chain', 'residual', 'skip'). work is a function; distributed, cost, fused and mirror are
    "module:attribute" references (fused None: no fused op; cost None: losses, which the
    performance model leaves out of an iteration). channel_splits: whether its distributed form runs on
    a grid that splits channels or filters (C x F > 1); the planner offers such grids only then."""
    name: str
    classes: tuple
    role: str
    distributed: str
    mirror: str
    cost: str = None
    work: object = None
    keeps: tuple = (False, False)
    fused: str = None
    structure: str = None
    channel_splits: bool = True

    def resolve(self, field):
        """The object a reference field names (None when the field is None)."""
        ref = getattr(self, field)
        if ref is None:
            return None
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    def describe(self, layer, name, in_shape):
        """The LayerSpec of `layer` (named `name`) on a global input `in_shape`."""
        if self.work is None:
            raise ValueError(f"layer kind {self.name!r} ({self.role}) has no cost description of its own")
        return self.work(layer, name, tuple(int(s) for s in in_shape))


KINDS = []
_BY_CLASS = {}
_BY_NAME = {}


def register(kind):
    """Add a LayerKind (its name and classes must be new)."""
    if kind.role not in ROLES:
        raise ValueError(f"layer kind {kind.name!r}: role must be one of {ROLES}, received {kind.role!r}")
    if (kind.role == "container") != (kind.structure is not None) or \
            (kind.structure is not None and kind.structure not in STRUCTURES):
        raise ValueError(f"layer kind {kind.name!r}: containers, and only they, have a structure in {STRUCTURES}")
    if kind.name in _BY_NAME or any(c in _BY_CLASS for c in kind.classes):
        raise ValueError(f"layer kind {kind.name!r} or one of its classes is registered already")
    KINDS.append(kind)
    _BY_NAME[kind.name] = kind
    for cls in kind.classes:
        _BY_CLASS[cls] = kind
    return kind


def kind_of(layer):
    """The LayerKind of an nn module or loss (by its class, or the nearest registered base class)."""
    for cls in type(layer).__mro__:
        kind = _BY_CLASS.get(cls)
        if kind is not None:
            return kind
    describe = getattr(layer, "describe", None)
    raise ValueError(f"no layer kind is registered for {describe() if callable(describe) else type(layer).__name__} "
                     f"(hpcnn.nn.registry)")


def by_name(name):
    """The LayerKind called `name`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown layer kind {name!r}: expected one of {', '.join(_BY_NAME)}") from None


_P, _C, _F, _M = "hpcnn.parallel.", "perfmodel.kinds:", "hpcnn.chaos.ops:", "hpcnn.nn.torch_mirror:"

register(LayerKind("conv", (Conv2d, Conv3d), "layer", _P + "conv:DistConv", _M + "conv", _C + "conv", conv_work,
                   keeps=(True, False), fused=_F + "conv"))
register(LayerKind("conv_transpose", (ConvTranspose2d, ConvTranspose3d), "layer", _P + "conv_transpose:DistConvTranspose",
                   _M + "conv_transpose", _C + "conv_transpose", conv_transpose_work, keeps=(True, False),
                   channel_splits=False))
register(LayerKind("maxpool", (MaxPool2d, MaxPool3d), "layer", _P + "windows:DistMaxPool", _M + "pool",
                   _C + "pool", pool_work, fused=_F + "pool"))
register(LayerKind("avgpool", (AvgPool2d, AvgPool3d), "layer", _P + "windows:DistAvgPool", _M + "pool",
                   _C + "pool", pool_work, fused=_F + "pool"))
register(LayerKind("upsample", (Upsample,), "layer", _P + "windows:DistUpsample", _M + "upsample",
                   _C + "upsample", upsample_work))
register(LayerKind("batchnorm", (BatchNorm2d, BatchNorm3d), "layer", _P + "norm:DistBatchNorm", _M + "batchnorm",
                   _C + "batchnorm", batchnorm_work, keeps=(True, False)))
register(LayerKind("groupnorm", (GroupNorm,), "layer", _P + "groupnorm:DistGroupNorm", _M + "groupnorm",
                   _C + "groupnorm", groupnorm_work, keeps=(True, False),
                   channel_splits=False))
register(LayerKind("relu", (ReLU,), "layer", _P + "dense:DistElementwise", _M + "relu", _C + "pointwise",
                   relu_work, keeps=(False, True), fused=_F + "activation"))
register(LayerKind("leaky_relu", (LeakyReLU,), "layer", _P + "dense:DistElementwise", _M + "leaky_relu",
                   _C + "pointwise", leaky_relu_work, keeps=(True, False), fused=_F + "activation"))
register(LayerKind("dropout", (Dropout,), "layer", _P + "dense:DistDropout", _M + "dropout", _C + "dropout",
                   dropout_work))
register(LayerKind("global_avgpool", (GlobalAvgPool,), "layer", _P + "dense:DistGlobalAvgPool",
                   _M + "global_avgpool", _C + "global_avgpool", global_avgpool_work, fused=_F + "global_avgpool"))
register(LayerKind("flatten", (Flatten,), "layer", _P + "dense:DistFlatten", _M + "flatten", _C + "flatten",
                   flatten_work, fused=_F + "flatten"))
register(LayerKind("linear", (Linear,), "layer", _P + "dense:DistLinear", _M + "linear", _C + "linear",
                   linear_work, keeps=(True, False), fused=_F + "linear"))
register(LayerKind("sequential", (Sequential,), "container", _P + "containers:DistSequential", _M + "sequential",
                   _C + "sequential", structure="chain"))
register(LayerKind("residual", (Residual,), "container", _P + "containers:DistResidual", _M + "residual",
                   _C + "residual", structure="residual"))
register(LayerKind("skip", (SkipConcat,), "container", _P + "containers:DistSkipConcat", _M + "skip",
                   _C + "skip", structure="skip"))
register(LayerKind("cross_entropy", (CrossEntropyLoss,), "loss", _P + "losses:DistCrossEntropyLoss",
                   _M + "cross_entropy"))
register(LayerKind("mse", (MSELoss,), "loss", _P + "losses:DistMSELoss", _M + "mse"))
