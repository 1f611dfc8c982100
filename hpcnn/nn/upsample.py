"""Nearest-neighbour upsampling by integer factors (the decoder half of a U-Net)."""
import math

from .. import kernels
from .module import Module
from .work import LayerSpec, param_sizes

__all__ = ["Upsample", "upsample_work"]


MODES = {"nearest": (4, 5), "bilinear": (4,), "trilinear": (5,)}


class Upsample(Module):
    """Upsampling by integer factors, as PyTorch's: mode='nearest' repeats every element `scale_factor` times
    along each spatial dimension; mode='bilinear' (2-D) or 'trilinear' (3-D) interpolates linearly with
    align_corners=False (hpcnn.kernels.resample).

    scale_factor: a positive int, or one int per spatial dimension.
    x: (N, C, H, W) -> y: (N, C, H*sH, W*sW); x: (N, C, D, H, W) -> y: (N, C, D*sD, H*sH, W*sW).
    """

    def __init__(self, scale_factor=2, mode="nearest", align_corners=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Upsample: mode must be one of {', '.join(repr(m) for m in MODES)}, received {mode!r}")
        if align_corners:
            raise ValueError("Upsample: only align_corners=False (PyTorch's default) is implemented")
        if align_corners is not None and mode == "nearest":
            raise ValueError("Upsample: align_corners applies to linear modes only (as in PyTorch)")
        single = not isinstance(scale_factor, (tuple, list))
        factors = (scale_factor,) if single else tuple(scale_factor)
        # Integral floats (2.0) are accepted as torch users write them; 1.5 has no nearest-neighbour block form.
        if not factors or not all(isinstance(f, (int, float)) and float(f).is_integer() and f >= 1 for f in factors):
            raise ValueError(f"Upsample: scale_factor must be positive integers, received {scale_factor!r}")
        factors = tuple(int(f) for f in factors)
        self.scale_factor = factors[0] if single else factors
        self.mode = mode
        self.align_corners = None if mode == "nearest" else False

    def _scale(self, x):
        if isinstance(self.scale_factor, int):
            return (self.scale_factor,) * (x.ndim - 2)
        if len(self.scale_factor) != x.ndim - 2:
            raise ValueError(f"{self.describe()}: expected a {len(self.scale_factor) + 2}-D input, "
                             f"received shape {tuple(x.shape)}")
        return self.scale_factor

    def forward(self, x):
        self.check_input(x, ndim=MODES[self.mode])
        if self.mode == "nearest":
            return kernels.upsample_nearest_forward(x, self._scale(x))
        self._in_spatial = x.shape[2:]
        return kernels.upsample_linear_forward(x, self._scale(x))

    def backward(self, dy):
        if self.mode == "nearest":
            return kernels.upsample_nearest_backward(dy, self._scale(dy))
        return kernels.upsample_linear_backward(dy, self._scale(dy), self._in_spatial)

    def describe(self):
        return f"Upsample(scale_factor={self.scale_factor!r}, mode={self.mode!r})"


def upsample_work(layer, name, shape):
    """The LayerSpec of Upsample `layer` on a global input `shape` (N, C, *S)."""
    nd = len(shape) - 2
    if nd not in (2, 3):
        raise ValueError(f"layer {name!r}: {layer.describe()} expects a 4-D or 5-D input, receives shape {tuple(shape)}")
    scale = layer.scale_factor
    scale = (scale,) * nd if isinstance(scale, int) else tuple(scale)
    if len(scale) != nd:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects a {len(scale) + 2}-D input, receives shape "
                         f"{tuple(shape)}")
    out = tuple(shape[:2]) + tuple(s * f for s, f in zip(shape[2:], scale))
    per_output = 1.0 if layer.mode == "nearest" else 2.0 * 2 ** nd     # a copy, or 2^nd multiply-adds
    spec = LayerSpec(name, "upsample", tuple(shape), out, None, param_sizes(layer), per_output * math.prod(out))
    spec.options["scale"] = scale
    spec.options["mode"] = layer.mode
    return spec
