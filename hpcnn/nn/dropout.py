"""Dropout whose mask is a function of (seed, step, global element index): the same for a pixel whatever the grid."""
from ..backend import array_module
from ..kernels.dropout import dropout_mask
from .module import Module, default_rng
from .work import pointwise_spec

__all__ = ["Dropout", "dropout_work"]


class Dropout(Module):
    """Dropout(p=0.5), as PyTorch's in effect: in training each element is zeroed with probability p and the rest
    scaled by 1 / (1 - p); in evaluation the identity. x: any shape (N, ...) -> y: same shape.

    The mask is hpcnn.kernels.dropout_mask of (seed, step, the element's index in the global tensor), not
    PyTorch's generator: `seed` defaults to a draw from hpcnn.nn's default generator (seeded from the job's
    training.seed, so the same on every rank); `step` counts this layer's training forwards (the trainer sets
    it to the step on --resume). A distributed block draws exactly the single process's mask for its elements.
    """

    def __init__(self, p=0.5, seed=None, rng=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1], received {p}")
        self.p = float(p)
        rng = default_rng() if rng is None else rng
        self.seed = int(rng.integers(0, 2**62)) if seed is None else int(seed)
        self.step = 0
        self.mask = None

    def forward_block(self, x, offsets, global_shape):
        """y for the block x of a global tensor `global_shape` starting at `offsets` (one forward: one step)."""
        if not self.training or self.p == 0.0:
            self.mask = None
            return x
        self.mask = dropout_mask(array_module(x), x.shape, offsets, global_shape, self.seed, self.step, self.p,
                                 x.dtype)
        self.step += 1
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask

    def forward(self, x):
        return self.forward_block(x, (0,) * x.ndim, x.shape)

    def describe(self):
        return f"Dropout(p={self.p})"


def dropout_work(layer, name, shape):
    """The LayerSpec of Dropout `layer` on a global input `shape`: an elementwise pass and its mask."""
    return pointwise_spec(name, "dropout", layer, shape, 1.0)
