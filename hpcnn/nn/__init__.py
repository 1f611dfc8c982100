"""Single-process layers with PyTorch's constructors, parameter names and shapes (see module.py for the protocol).

Every layer kind has one entry in the layer registry (`hpcnn.nn.registry`), which names its
distributed form, its cost description and pricing, its fused CHAOS op and its PyTorch mirror.
"""
from .activation import LeakyReLU, ReLU
from .container import Residual, Sequential, SkipConcat
from .conv import Conv2d, Conv3d
from .conv_transpose import ConvTranspose2d, ConvTranspose3d
from .dropout import Dropout
from .groupnorm import GroupNorm
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, default_rng, manual_seed
from .norm import BatchNorm2d, BatchNorm3d
from .pool import AvgPool2d, AvgPool3d, GlobalAvgPool, MaxPool2d, MaxPool3d
from .upsample import Upsample
from . import registry  # noqa: E402  (after the layers it registers)

__all__ = [
    "Module", "manual_seed", "default_rng",
    "Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "Dropout", "ReLU", "LeakyReLU",
    "MaxPool2d", "MaxPool3d", "AvgPool2d", "AvgPool3d", "GlobalAvgPool", "Flatten", "Linear", "Upsample",
    "Sequential", "Residual", "SkipConcat", "CrossEntropyLoss", "MSELoss", "registry",
]
