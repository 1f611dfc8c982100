"""Compile a model's CPU kernels once, on tiny inputs, before the real work starts.

hpcnn's numba kernels compile on their first call and are cached on disk (`cache=True`, next to
the sources, or in NUMBA_CACHE_DIR). From a fresh clone every rank of a job compiles the same
kernels at the same moment; with more ranks than cores on a node that costs the whole compile
several times over (measured on 2 cores: the quickstart U-Net's first step compiles for most of
its time, on each of its 4 ranks). `warm_up(model, nd, dtype)` runs every leaf of `model`, each
on a private copy (so no running statistics, cached activations or gradients of the model
change), forward and backward on a tiny input with the leaf's own channels and window geometry
and, for a windowed leaf, again on one tiny sample (a halo piece's path) and on one with long lines
(the code paths of large blocks), then the
losses: the kernel specializations a training step calls (they depend on dtypes, array ranks and
code paths such as pointwise, strided or few-pixel windows, not on sizes). A trainer calls it on one rank per node first and on the other ranks afterwards
(`hpcnn.parallel.Communicator.node_first`), which then only load what the first one compiled.
A leaf whose tiny input it cannot construct is left to compile on its first real call.
"""
import copy

import numpy as np

from .. import kernels
from ..backend import array_module
from .linear import Linear

__all__ = ["warm_up"]


def _channels(leaf):
    for name in ("in_channels", "num_features", "num_channels"):
        value = getattr(leaf, name, None)
        if value:
            return int(value)
    return 2


def _tiny_input(leaf, nd, dtype, rng):
    if isinstance(leaf, Linear):
        return rng.standard_normal((2, leaf.in_features)).astype(dtype)
    g = getattr(leaf, "geometry", None)
    if g is None:
        spatial = (4,) * nd
    else:
        # two outputs along every dim whatever the padding: the window's extent plus one stride
        spatial = tuple((k - 1) * d + 1 + s for k, s, d in zip(g.kernel, g.stride, g.dilation))
    return rng.standard_normal((2, _channels(leaf)) + spatial).astype(dtype)


def _line_input(leaf, nd, dtype, rng):
    """One sample of a windowed leaf with long output lines (at least 130 outputs along the last dim, 64
    per W tap and dilation step): the kernels' code paths for large blocks (im2col in chunks, the W taps
    as shifted GEMMs, col2im), where the tiny input takes the one for few pixels (whole images per GEMM).
    None for a leaf without a window."""
    g = getattr(leaf, "geometry", None)
    if g is None:
        return None
    spatial = [(k - 1) * d + 1 for k, d in zip(g.kernel, g.dilation)]
    out_w = max(130, 64 * (g.kernel[-1] - 1) * g.dilation[-1])
    spatial[-1] = (out_w - 1) * g.stride[-1] + (g.kernel[-1] - 1) * g.dilation[-1] + 1
    return rng.standard_normal((1, _channels(leaf)) + tuple(spatial)).astype(dtype)


def warm_up(model, nd, dtype=np.float32, put=None):
    """Call each leaf of `model` (arrays of `dtype` with `nd` spatial dims, moved to the model's device by
    `put`, e.g. `Device.put`) forward and backward once on a copy, then the cross-entropy and
    squared-error kernels; returns the number of leaves warmed."""
    dtype = np.dtype(dtype)
    put = put or (lambda a: a)
    rng = np.random.default_rng(0)
    warmed = 0
    for _, leaf in model.named_leaves():
        try:
            tiny = _tiny_input(leaf, nd, dtype, rng)
            # one tiny sample too: a halo piece's few pixels of one image take their own code path
            for x in (tiny, tiny[:1] if getattr(leaf, "geometry", None) else None, _line_input(leaf, nd, dtype, rng)):
                if x is not None:
                    layer = copy.deepcopy(leaf).train()
                    y = layer.forward(put(x))
                    layer.backward(array_module(y).ones_like(y))
        except ValueError:
            continue  # an input this leaf refuses (a fixed size, say): it compiles on its first real call
        warmed += 1
    for shape in ((2, 3) + (4,) * nd, (2, 3)):
        logits = rng.standard_normal(shape).astype(dtype)
        kernels.softmax_cross_entropy(put(logits), put(rng.integers(0, 3, (shape[0],) + shape[2:])))
        kernels.squared_error(put(logits), put(logits[::-1].copy()))
    return warmed
