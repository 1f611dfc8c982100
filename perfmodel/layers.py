"""The layer walk: a built hpcnn model and an input shape -> the chain of layer descriptions the planner costs.

A chain is a list of nodes in forward order. A node is a `LayerSpec` (one leaf layer) or a
`Block` (a `Residual` with its body and shortcut chains, or a `SkipConcat` with its inner
chain). Shapes are global: (N, C, *S) for activations, (N, F) after flatten or global pooling.
Layer names are the dotted module paths that `Module.parameters()` uses as prefixes (e.g.
"layer1.0.body.conv1"), which is also how a plan names layers.
"""
import math
from dataclasses import dataclass, field

__all__ = ["LayerSpec", "Block", "walk", "build_model", "model_chain", "iter_layers", "chain_params",
           "KINDS"]

# What each kind keeps from forward for backward (what its activation memory is made of).
KINDS = {
    # kind:          (keeps input, keeps output)
    "conv":          (True, False),
    "batchnorm":     (True, False),
    "relu":          (False, True),
    "leaky_relu":    (True, False),
    "maxpool":       (False, False),   # keeps int64 argmax of the output's size instead
    "avgpool":       (False, False),
    "global_avgpool": (False, False),
    "flatten":       (False, False),
    "linear":        (True, False),
    "upsample":      (False, False),
}


@dataclass
class LayerSpec:
    """One leaf layer. in_shape/out_shape: global (N, C, *S) or (N, F); geometry: WindowGeometry or None.

    param_sizes: element counts of each parameter array; flops: forward multiply-adds x 2.
    """
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    geometry: object = None
    param_sizes: tuple = ()
    flops: float = 0.0
    options: dict = field(default_factory=dict)
    keeps_output: bool = False      # set by the walk: some layer holds this layer's output until backward

    @property
    def params(self):
        return sum(self.param_sizes)

    @property
    def nd(self):
        return max(len(self.in_shape) - 2, 0)

    def signature(self):
        """What the cost of this layer depends on (for caching)."""
        g = self.geometry
        geo = None if g is None else (g.kernel, g.stride, g.dilation, g.padding)
        return (self.kind, self.in_shape, self.out_shape, geo, self.param_sizes, self.keeps_output,
                tuple(sorted(self.options.items())))


@dataclass
class Block:
    """A residual block (kind 'residual': y = body(x) + shortcut(x), shortcut None = identity) or a
    U-Net skip (kind 'skip': y = concat([x, inner(x)], channels), the inner chain in `body`)."""
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    body: list
    shortcut: list = None

    @property
    def params(self):
        return chain_params(self.body) + chain_params(self.shortcut or [])


def chain_params(chain):
    return sum(node.params for node in chain)


def iter_layers(chain):
    """Every LayerSpec of a chain, depth first in forward order (body before shortcut)."""
    for node in chain:
        if isinstance(node, Block):
            yield from iter_layers(node.body)
            yield from iter_layers(node.shortcut or [])
        else:
            yield node


def _window_spec(name, kind, layer, shape, channels_out, param_sizes, flops_per_output):
    spatial = shape[2:]
    out = (shape[0], channels_out) + tuple(layer.geometry.output_shape(spatial))
    if any(o < 1 for o in out[2:]):
        raise ValueError(f"layer {name!r} ({type(layer).__name__}): input {shape} is too small for its window "
                         f"{layer.geometry}")
    flops = float(math.prod(out)) * flops_per_output
    return LayerSpec(name, kind, tuple(shape), out, layer.geometry, tuple(param_sizes), flops)


def _leaf(name, layer, shape):
    cls = type(layer).__name__
    numel = math.prod(shape)
    sizes = tuple(int(p.size) for p in layer.params.values())
    if cls in ("Conv2d", "Conv3d"):
        if shape[1] != layer.in_channels:
            raise ValueError(f"layer {name!r}: expects {layer.in_channels} channels, receives shape {shape}")
        taps = math.prod(layer.geometry.kernel)
        spec = _window_spec(name, "conv", layer, shape, layer.out_channels, sizes, 2.0 * layer.in_channels * taps)
        spec.options["bias"] = "bias" in layer.params
        return spec
    if cls in ("MaxPool2d", "MaxPool3d", "AvgPool2d", "AvgPool3d"):
        kind = "maxpool" if cls.startswith("Max") else "avgpool"
        return _window_spec(name, kind, layer, shape, shape[1], sizes, float(math.prod(layer.geometry.kernel)))
    if cls in ("BatchNorm2d", "BatchNorm3d"):
        return LayerSpec(name, "batchnorm", shape, shape, None, sizes, 8.0 * numel)
    if cls == "ReLU":
        return LayerSpec(name, "relu", shape, shape, None, sizes, float(numel))
    if cls == "LeakyReLU":
        return LayerSpec(name, "leaky_relu", shape, shape, None, sizes, 2.0 * numel)
    if cls == "GlobalAvgPool":
        return LayerSpec(name, "global_avgpool", shape, shape[:2], None, sizes, float(numel))
    if cls == "Flatten":
        return LayerSpec(name, "flatten", shape, (shape[0], math.prod(shape[1:])), None, sizes, 0.0)
    if cls == "Linear":
        if len(shape) != 2 or shape[1] != layer.in_features:
            raise ValueError(f"layer {name!r}: Linear({layer.in_features}, {layer.out_features}) receives shape {shape}")
        return LayerSpec(name, "linear", shape, (shape[0], layer.out_features), None, sizes,
                         2.0 * shape[0] * layer.in_features * layer.out_features)
    if cls == "Upsample":
        nd = len(shape) - 2
        scale = layer.scale_factor
        scale = (scale,) * nd if isinstance(scale, int) else tuple(scale)
        out = shape[:2] + tuple(s * f for s, f in zip(shape[2:], scale))
        spec = LayerSpec(name, "upsample", shape, out, None, sizes, float(math.prod(out)))
        spec.options["scale"] = scale
        return spec
    raise ValueError(f"layer {name!r}: the performance model does not know layers of type {cls}")


def _walk(module, prefix, shape):
    """(chain, output shape) of `module` applied to a global input `shape`."""
    cls = type(module).__name__
    if cls == "Sequential":
        chain = []
        for cname, child in module.children():
            sub, shape = _walk(child, prefix + cname + ".", shape)
            chain.extend(sub)
        return chain, shape
    name = prefix[:-1]
    if cls == "Residual":
        body, out = _walk(module.body, prefix + "body.", shape)
        shortcut = None
        if module.shortcut is not None:
            shortcut, s_out = _walk(module.shortcut, prefix + "shortcut.", shape)
            if s_out != out:
                raise ValueError(f"block {name!r}: body gives {out}, shortcut gives {s_out}")
        elif out != shape:
            raise ValueError(f"block {name!r}: body gives {out} but the identity shortcut keeps {shape}")
        return [Block(name, "residual", shape, out, body, shortcut)], out
    if cls == "SkipConcat":
        inner, z = _walk(module.inner, prefix + "inner.", shape)
        if z[0] != shape[0] or z[2:] != shape[2:]:
            raise ValueError(f"block {name!r}: the inner branch gives {z} for input {shape}")
        out = (shape[0], shape[1] + z[1]) + tuple(shape[2:])
        return [Block(name, "skip", shape, out, inner)], out
    spec = _leaf(name, module, tuple(shape))
    return [spec], spec.out_shape


def _mark_kept(chain, next_keeps_input=True):
    """Set keeps_output where a layer or its successor holds the tensor until backward."""
    for i, node in enumerate(chain):
        if isinstance(node, Block):
            _mark_kept(node.body, True)
            if node.shortcut:
                _mark_kept(node.shortcut, True)
            continue
        keeps_out = KINDS[node.kind][1]
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        if nxt is None:
            succ = next_keeps_input
        elif isinstance(nxt, Block):
            succ = True                      # a block's input feeds the shortcut / the skip
        else:
            succ = KINDS[nxt.kind][0]
        node.keeps_output = keeps_out or succ


def walk(model, input_shape):
    """The chain of `model` for a global input (N, C, *S)."""
    chain, _ = _walk(model, "", tuple(int(s) for s in input_shape))
    _mark_kept(chain)
    return chain


def build_model(name, input_shape, **options):
    """Build a zoo model for an input (C, *S): sets in_channels and the input size where the model has one."""
    from hpcnn import models
    known = models.names()
    if name not in known:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(known)}")
    c, spatial = int(input_shape[0]), tuple(int(s) for s in input_shape[1:])
    opts = {"in_channels": c}
    if name == "cosmoflow":
        if len(spatial) != 3 or len(set(spatial)) != 1:
            raise ValueError(f"model 'cosmoflow' takes a cubic input CxSxSxS, received {input_shape}")
        opts["input_size"] = spatial[0]
    elif name == "lenet":
        if len(spatial) != 2 or spatial[0] != spatial[1]:
            raise ValueError(f"model 'lenet' takes a square input CxSxS, received {input_shape}")
        opts["input_size"] = spatial[0]
    elif len(spatial) != 2:
        raise ValueError(f"model {name!r} takes a 2-D input CxHxW, received {input_shape}")
    opts.update(options)
    return models.build(name, **opts)


def model_chain(name, input_shape, batch, **options):
    """(model, chain) of a zoo model for a batch of `batch` inputs of shape (C, *S)."""
    model = build_model(name, input_shape, **options)
    return model, walk(model, (int(batch),) + tuple(int(s) for s in input_shape))
