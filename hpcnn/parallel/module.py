"""The distributed layer protocol: an nn layer run on local blocks of DistTensors under one distribution.

Each distributed layer wraps the nn layer it was built from and shares its parameters, gradients
and running statistics, so `dm.parameters()` is `model.parameters()`. forward/backward take and
return `DistTensor`s. A layer owns a distribution; an input under another distribution is first
shuffled to it (and the gradient shuffled back), which is how a plan changes grids between layers.

Output blocks: every output is block-distributed over its own global shape (see `hpcnn.geometry`).
Replicated tensors: (N, F) tensors (after global pooling or flatten) are held whole by every rank
of a spatial group, and so are their gradients; a layer computing on replicated rows (Linear)
counts its parameter gradient on spatial rank 0 only, and a loss on them sums over the sample
group, so nothing is counted twice.

The forms themselves: conv.py (convolutions), windows.py (pooling, upsampling), norm.py
(batch-norm), dense.py (pointwise, global pooling, flatten, linear), containers.py, losses.py.
Which form runs which nn layer is the layer registry's `distributed` entry (`hpcnn.nn.registry`).
"""
from .shuffle import Shuffle

__all__ = ["DistModule", "is_empty", "arrive"]


def is_empty(shape):
    """True when a block of `shape` holds no elements."""
    return any(s == 0 for s in shape)


def arrive(t, d, cache):
    """(t under distribution d, the Shuffle that moved it or None); shuffles are cached in `cache`."""
    if t.distribution == d:
        return t, None
    key = (t.distribution.grid, d.grid, t.global_shape)
    if key not in cache:
        cache[key] = Shuffle(t.distribution, d, t.global_shape)
    return cache[key].forward(t), cache[key]


class DistModule:
    """A distributed layer or container. `layer` is the nn module it runs, `d` its distribution, `name` its
    dotted name in the model; containers hold their distributed `children`."""

    def __init__(self, layer, d, context, name="", children=()):
        self.layer = layer
        self.d = d
        self.context = context
        self.name = name
        self.children = list(children)
        self.exchanges = {}         # the HaloExchanges this layer has built, by input geometry
        self._arrivals = {}
        self._arrival = None

    # --- grid changes ----------------------------------------------------------------------
    def _arrive(self, t):
        """t under this layer's distribution (shuffled when it arrives under another)."""
        t, self._arrival = arrive(t, self.d, self._arrivals)
        return t

    def _leave(self, g):
        """Adjoint of `_arrive` for the gradient of the input."""
        return g if self._arrival is None else self._arrival.backward(g)

    def forward(self, t):
        t = self._arrive(t)
        return self._forward(t)

    def backward(self, g):
        dx = self._backward(g)
        if self.layer.params:
            self.context.ready(self.layer)
        return self._leave(dx)

    def gradient_slices(self):
        """{parameter name: hpcnn.parallel.reducer.GradientSlice} of the parameters this layer computes in pieces
        over ranks; the others (all, by default) are computed whole on every rank and summed over all of them."""
        return {}

    def modules(self):
        """This module and every distributed descendant, in forward order."""
        yield self
        for child in self.children:
            yield from child.modules()

    def leaves(self):
        """The distributed leaf layers, in forward order."""
        return [m for m in self.modules() if not m.children]

    def describe(self):
        return f"{type(self).__name__}[{self.layer.describe()}] on grid {self.d.grid}"
