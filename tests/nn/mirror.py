"""The PyTorch module equivalent to an hpcnn.nn module tree, with the same parameter names and values."""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from hpcnn import nn

from tests.oracle import to_torch

__all__ = ["TORCH_DTYPE", "torch_mirror", "copy_into_torch", "TorchResidual", "TorchSkipConcat", "torch_pads"]

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_pads(padding):
    """hpcnn's ((lo, hi) per dimension, first spatial dimension first) as F.pad's list (last dimension first)."""
    out = []
    for lo, hi in reversed(padding):
        out += [lo, hi]
    return out


class TorchResidual(torch.nn.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchSkipConcat(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([x, self.inner(x)], dim=1)


class _GlobalAvgPool(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())))


def _symmetric(padding):
    return all(lo == hi for lo, hi in padding)


def torch_mirror(m):
    """A torch module computing what hpcnn module `m` computes (parameters not yet copied)."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        cls = torch.nn.Conv2d if isinstance(m, nn.Conv2d) else torch.nn.Conv3d
        g = m.geometry
        symmetric = _symmetric(g.padding)
        conv = cls(m.in_channels, m.out_channels, g.kernel, stride=g.stride, dilation=g.dilation,
                   padding=tuple(lo for lo, _ in g.padding) if symmetric else 0, bias="bias" in m.params)
        if not symmetric:
            # torch's layers pad symmetrically: pad each side explicitly, keeping the parameter names.
            pads = torch_pads(g.padding)
            conv.register_forward_pre_hook(lambda module, args: (F.pad(args[0], pads),))
        return conv
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
        cls = torch.nn.BatchNorm2d if isinstance(m, nn.BatchNorm2d) else torch.nn.BatchNorm3d
        return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)
    if isinstance(m, nn.ReLU):
        return torch.nn.ReLU()
    if isinstance(m, nn.LeakyReLU):
        return torch.nn.LeakyReLU(m.negative_slope)
    if isinstance(m, (nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)):
        cls = {nn.MaxPool2d: torch.nn.MaxPool2d, nn.MaxPool3d: torch.nn.MaxPool3d, nn.AvgPool2d: torch.nn.AvgPool2d,
               nn.AvgPool3d: torch.nn.AvgPool3d}[type(m)]
        g = m.geometry
        assert _symmetric(g.padding)
        return cls(g.kernel, stride=g.stride, padding=tuple(lo for lo, _ in g.padding))
    if isinstance(m, nn.GlobalAvgPool):
        return _GlobalAvgPool()
    if isinstance(m, nn.Flatten):
        return torch.nn.Flatten()
    if isinstance(m, nn.Linear):
        return torch.nn.Linear(m.in_features, m.out_features, bias="bias" in m.params)
    if isinstance(m, nn.Upsample):
        return torch.nn.Upsample(scale_factor=m.scale_factor, mode="nearest")
    if isinstance(m, nn.Sequential):
        return torch.nn.Sequential(OrderedDict((name, torch_mirror(child)) for name, child in m.children()))
    if isinstance(m, nn.Residual):
        return TorchResidual(torch_mirror(m.body), None if m.shortcut is None else torch_mirror(m.shortcut))
    if isinstance(m, nn.SkipConcat):
        return TorchSkipConcat(torch_mirror(m.inner))
    raise TypeError(f"no torch mirror for {type(m).__name__}")


def copy_into_torch(model, tmodel, dtype=None):
    """Copy every parameter and state buffer of hpcnn `model` into `tmodel` by name, in `model`'s dtype
    (or `dtype` for a model without parameters)."""
    if dtype is None:
        dtype = next(p for _, p, _ in model.parameters()).dtype
    tmodel.to(TORCH_DTYPE[np.dtype(dtype)])
    values = {name: to_torch(p.copy()) for name, p, _ in model.parameters()}
    values.update({name: to_torch(a.copy()) for name, a in model.state()})
    result = tmodel.load_state_dict(values, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    assert not missing, missing
    return tmodel
