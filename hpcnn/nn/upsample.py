"""Nearest-neighbour upsampling by integer factors (the decoder half of a U-Net)."""
from .. import kernels
from .module import Module

__all__ = ["Upsample"]


class Upsample(Module):
    """Repeat every element `scale_factor` times along each spatial dimension (mode='nearest').

    scale_factor: a positive int, or one int per spatial dimension.
    x: (N, C, H, W) -> y: (N, C, H*sH, W*sW); x: (N, C, D, H, W) -> y: (N, C, D*sD, H*sH, W*sW).
    """

    def __init__(self, scale_factor=2, mode="nearest"):
        super().__init__()
        if mode != "nearest":
            raise ValueError(f"Upsample: only mode='nearest' is implemented, received {mode!r}")
        single = not isinstance(scale_factor, (tuple, list))
        factors = (scale_factor,) if single else tuple(scale_factor)
        # Integral floats (2.0) are accepted as torch users write them; 1.5 has no nearest-neighbour block form.
        if not factors or not all(isinstance(f, (int, float)) and float(f).is_integer() and f >= 1 for f in factors):
            raise ValueError(f"Upsample: scale_factor must be positive integers, received {scale_factor!r}")
        factors = tuple(int(f) for f in factors)
        self.scale_factor = factors[0] if single else factors
        self.mode = mode

    def _scale(self, x):
        if isinstance(self.scale_factor, int):
            return (self.scale_factor,) * (x.ndim - 2)
        if len(self.scale_factor) != x.ndim - 2:
            raise ValueError(f"{self.describe()}: expected a {len(self.scale_factor) + 2}-D input, "
                             f"received shape {tuple(x.shape)}")
        return self.scale_factor

    def forward(self, x):
        self.check_input(x, ndim=(4, 5))
        return kernels.upsample_nearest_forward(x, self._scale(x))

    def backward(self, dy):
        return kernels.upsample_nearest_backward(dy, self._scale(dy))

    def describe(self):
        return f"Upsample(scale_factor={self.scale_factor!r}, mode='nearest')"
