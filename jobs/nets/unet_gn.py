"""A U-Net with transposed convolutions and GroupNorm, written with hpcnn.nn (as one writes it with torch.nn).

Each level: two [3x3 conv, GroupNorm, ReLU]; a skip around [2x2 max-pool, the next level at twice the
width, a 2x2 transposed convolution of stride 2 back to the width]; the concatenation; two
[3x3 conv, GroupNorm, ReLU]. A 1x1 convolution gives the class scores.
"""
from hpcnn import nn


def _block(cin, cout, groups):
    return nn.Sequential(("conv1", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
                         ("norm1", nn.GroupNorm(groups, cout)), ("relu1", nn.ReLU()),
                         ("conv2", nn.Conv2d(cout, cout, 3, padding=1, bias=False)),
                         ("norm2", nn.GroupNorm(groups, cout)), ("relu2", nn.ReLU()))


def _level(cin, width, depth, groups):
    if depth == 0:
        return _block(cin, width, groups)
    inner = nn.Sequential(("pool", nn.MaxPool2d(2)), ("level", _level(width, 2 * width, depth - 1, groups)),
                          ("up", nn.ConvTranspose2d(2 * width, width, 2, stride=2)))
    return nn.Sequential(("encode", _block(cin, width, groups)), ("skip", nn.SkipConcat(inner)),
                         ("decode", _block(2 * width, width, groups)))


def build(in_channels, num_classes, width=8, depth=2, groups=4):
    """x: (N, in_channels, H, W), H and W divisible by 2**depth -> logits (N, num_classes, H, W)."""
    if width % groups:
        raise ValueError(f"width {width} must be a multiple of groups {groups}")
    return nn.Sequential(("body", _level(in_channels, width, depth, groups)),
                         ("head", nn.Conv2d(width, num_classes, 1)))
