"""A small encoder-decoder for per-pixel classes, written with hpcnn.nn as one writes a PyTorch module.

`hpcnn train jobs/own-network.toml` builds it through `[model] factory = "nets/tinyseg.py:build"`:
in_channels and num_classes come from the data, width from the job file. Its parameter names
(block1.conv.weight, ...) are those of the same network written with torch.nn.Sequential and
OrderedDict, so an export (`hpcnn export`) loads into that network in PyTorch.
"""
from hpcnn import nn


def _block(cin, cout):
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                         ("bn", nn.BatchNorm2d(cout)), ("relu", nn.ReLU()))


def build(in_channels, num_classes, width=8):
    """x: (N, in_channels, H, W), H and W even -> logits (N, num_classes, H, W)."""
    inner = nn.Sequential(("pool", nn.MaxPool2d(2)), ("block", _block(width, 2 * width)),
                          ("up", nn.Upsample(scale_factor=2)))
    return nn.Sequential(("block1", _block(in_channels, width)),
                         ("skip", nn.SkipConcat(inner)),            # concat([x, inner(x)]): 3 * width channels
                         ("block2", _block(3 * width, width)),
                         ("head", nn.Conv2d(width, num_classes, 1)))
