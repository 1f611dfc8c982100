"""Parameter initialization (PyTorch's defaults) and the dtype policy for layers with parameters."""
import math

import numpy as np

from ..backend import ALLOWED_DTYPES, DEFAULT_DTYPE
from .module import default_rng

__all__ = ["resolve_dtype", "resolve_rng", "uniform_fan_in", "kaiming_normal_fan_out", "constant",
           "check_dtype"]


def resolve_dtype(dtype):
    """`dtype` (None: hpcnn.backend.DEFAULT_DTYPE) as a numpy dtype, refusing anything but float32/float64."""
    dtype = DEFAULT_DTYPE if dtype is None else np.dtype(dtype)
    if dtype not in ALLOWED_DTYPES:
        raise ValueError(f"dtype: expected float32 or float64, received {dtype}")
    return dtype


def resolve_rng(rng):
    """`rng` (None: the generator that nn.manual_seed seeds) as a numpy Generator."""
    return default_rng() if rng is None else rng


def _cast(values, dtype):
    # Drawn in float64 so that float32 and float64 layers built from one seed agree; layers are built on
    # the host and moved to a device with Module.to(device).
    return values.astype(dtype)


def uniform_fan_in(rng, shape, fan_in, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    This is both PyTorch's default weight init for conv and linear layers
    (kaiming_uniform_ with a=sqrt(5): gain sqrt(1/3), bound gain*sqrt(3/fan_in)) and its bias init.
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return _cast(rng.uniform(-bound, bound, size=shape), dtype)


def kaiming_normal_fan_out(rng, shape, fan_out, dtype):
    """N(0, 2/fan_out): torchvision's ResNet conv init (kaiming_normal_, mode='fan_out', relu)."""
    return _cast(rng.normal(0.0, math.sqrt(2.0 / fan_out), size=shape), dtype)


def constant(shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


def check_dtype(where, x, dtype):
    """Refuse an input whose dtype differs from the layer's parameters (no silent up- or down-casting)."""
    if x.dtype != dtype:
        raise ValueError(f"{where}: expected dtype {np.dtype(dtype)} (the dtype of its parameters), "
                         f"received {x.dtype} with shape {tuple(x.shape)}")
