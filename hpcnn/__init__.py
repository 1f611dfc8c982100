"""hpcnn: spatially parallel training of convolutional networks on inputs too large for one process."""
from . import backend, kernels, nn
from .nn import models

__all__ = ["backend", "kernels", "nn", "models"]
__version__ = "0.1.0"
