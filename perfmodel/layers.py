"""The model walk: a built hpcnn model and an input shape -> the chain of layer descriptions the planner costs.

A chain is a list of nodes in forward order. A node is a `LayerSpec` (one leaf layer, described
by its kind's `work` entry in the layer registry, `hpcnn.nn.registry`) or a `Block` (a residual
block with its body and shortcut chains, or a U-Net skip with its inner chain: the registry's
container structures). Shapes are global: (N, C, *S) for activations, (N, F) after flatten or
global pooling. Layer names are the dotted module paths of `Module.named_leaves()`, which is
also how a plan names layers.
"""
from dataclasses import dataclass

from hpcnn.nn import registry
from hpcnn.nn.work import LayerSpec

__all__ = ["LayerSpec", "Block", "walk", "model_chain", "iter_layers", "chain_params"]


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


def _walk(module, prefix, shape):
    """(chain, output shape) of `module` applied to a global input `shape`."""
    kind = registry.kind_of(module)
    name = prefix[:-1]
    if kind.structure == "chain":
        chain = []
        for cname, child in module.children():
            sub, shape = _walk(child, prefix + cname + ".", shape)
            chain.extend(sub)
        return chain, shape
    if kind.structure == "residual":
        body, out = _walk(module.body, prefix + "body.", shape)
        shortcut = None
        if module.shortcut is not None:
            shortcut, s_out = _walk(module.shortcut, prefix + "shortcut.", shape)
            if s_out != out:
                raise ValueError(f"block {name!r}: body gives {out}, shortcut gives {s_out}")
        elif out != shape:
            raise ValueError(f"block {name!r}: body gives {out} but the identity shortcut keeps {shape}")
        return [Block(name, "residual", shape, out, body, shortcut)], out
    if kind.structure == "skip":
        inner, z = _walk(module.inner, prefix + "inner.", shape)
        if z[0] != shape[0] or z[2:] != shape[2:]:
            raise ValueError(f"block {name!r}: the inner branch gives {z} for input {shape}")
        out = (shape[0], shape[1] + z[1]) + tuple(shape[2:])
        return [Block(name, "skip", shape, out, inner)], out
    if kind.role != "layer":
        raise ValueError(f"{name or 'the model'}: a {kind.name} is not a layer the performance model can walk")
    spec = kind.describe(module, name, shape)
    return [spec], spec.out_shape


def _mark_kept(chain, next_keeps_input=True):
    """Set keeps_output where a layer or its successor holds the tensor until backward."""
    for i, node in enumerate(chain):
        if isinstance(node, Block):
            _mark_kept(node.body, True)
            if node.shortcut:
                _mark_kept(node.shortcut, True)
            continue
        keeps_out = registry.by_name(node.kind).keeps[1]
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        if nxt is None:
            succ = next_keeps_input
        elif isinstance(nxt, Block):
            succ = True                      # a block's input feeds the shortcut / the skip
        else:
            succ = registry.by_name(nxt.kind).keeps[0]
        node.keeps_output = keeps_out or succ


def walk(model, input_shape):
    """The chain of `model` for a global input (N, C, *S)."""
    chain, _ = _walk(model, "", tuple(int(s) for s in input_shape))
    _mark_kept(chain)
    return chain


def model_chain(name, input_shape, batch, **options):
    """(model, chain) of a zoo model for a batch of `batch` inputs of shape (C, *S)."""
    from hpcnn.nn import models
    model = models.build_for_input(name, input_shape, **options)
    return model, walk(model, (int(batch),) + tuple(int(s) for s in input_shape))
