"""The fused CHAOS step's ops: how each layer kind becomes a row of the fused layer table.

One function per layer kind whose registry entry names a `fused` op (`hpcnn.nn.registry`):
op(layer, shape) -> `FusedOp` for a per-sample input `shape` ((C, H, W) or (F,)), or raises
`NotFusable` naming what it cannot run. `hpcnn.chaos.fused.FusedNetwork.from_model` places the
rows, their activations and their parameters.
"""
from dataclasses import dataclass, field

import numpy as np

from .kernels import OP_AVGPOOL, OP_CONV, OP_GLOBAL_AVGPOOL, OP_LEAKY_RELU, OP_LINEAR, OP_MAXPOOL, OP_RELU

__all__ = ["NotFusable", "FusedOp", "conv", "linear", "activation", "pool", "global_avgpool", "flatten", "describe"]


class NotFusable(ValueError):
    """The model or loss has a part the fused step cannot run (the layer-by-layer step can)."""


@dataclass
class FusedOp:
    """One layer as the fused step runs it. fields: its LAYER_COLUMNS entries (op, window geometry);
    out: the per-sample output shape; slope: LeakyReLU's; switches: it writes pooling switches (a slot
    of the worker's argmax buffer);
    layout: per parameter key, how it is laid out ("conv", "linear", "bias"); row: False for a layer
    that only reinterprets its input's memory (Flatten), which gets no row."""
    fields: dict
    out: tuple
    slope: float = 0.0
    switches: bool = False
    layout: dict = field(default_factory=dict)
    row: bool = True


def describe(obj):
    d = getattr(obj, "describe", None)
    return d() if callable(d) else type(obj).__name__


def _need(ok, layer, shape):
    if not ok:
        raise NotFusable(f"{describe(layer)} cannot take a sample of shape {tuple(shape)}")


def _window(g):
    return dict(kh=g.kernel[0], kw=g.kernel[1], sh=g.stride[0], sw=g.stride[1], ph=g.padding[0][0],
                pw=g.padding[1][0])


def _window_2d(layer, shape):
    """The geometry and output size of a 2-D window layer (the kernels read the low-side padding and the
    output size, which together give any per-side padding)."""
    g = layer.geometry
    _need(len(shape) == 3 and g.nd == 2, layer, shape)
    out = g.output_shape(shape[1:])
    _need(min(out) >= 1, layer, shape)
    return g, tuple(out)


def conv(layer, shape):
    g, out = _window_2d(layer, shape)
    _need(shape[0] == layer.in_channels, layer, shape)
    return FusedOp(dict(op=OP_CONV, dh=g.dilation[0], dw=g.dilation[1], **_window(g)), (layer.out_channels,) + out,
                   layout={"weight": "conv", "bias": "bias"})


def linear(layer, shape):
    _need(len(shape) == 1 and shape[0] == layer.in_features, layer, shape)
    return FusedOp(dict(op=OP_LINEAR), (layer.out_features,), layout={"weight": "linear", "bias": "bias"})


def activation(layer, shape):
    """ReLU and LeakyReLU."""
    slope = getattr(layer, "negative_slope", None)
    return FusedOp(dict(op=OP_RELU if slope is None else OP_LEAKY_RELU), tuple(shape), slope=slope or 0.0)


def pool(layer, shape):
    """MaxPool2d and AvgPool2d."""
    from ..nn.pool import _MaxPoolNd
    g, out = _window_2d(layer, shape)
    maximum = isinstance(layer, _MaxPoolNd)
    # both pooling kernels write their window's switches (the average's are unused): each needs its own slot
    return FusedOp(dict(op=OP_MAXPOOL if maximum else OP_AVGPOOL, **_window(g)), (shape[0],) + out, switches=True)


def global_avgpool(layer, shape):
    _need(len(shape) == 3, layer, shape)
    return FusedOp(dict(op=OP_GLOBAL_AVGPOOL), (shape[0],))


def flatten(layer, shape):
    return FusedOp({}, (int(np.prod(shape)),), row=False)
