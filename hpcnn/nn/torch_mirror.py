"""The PyTorch modules equivalent to hpcnn.nn modules, with the same parameter names (the test and benchmark oracle).

`torch_mirror(model)` builds the torch module tree computing what an hpcnn module tree computes,
walking it through the layer registry (each kind's `mirror` entry names one function below);
`copy_into_torch(model, tmodel)` copies every parameter and state array across by name. Only
the tests and the benchmarks that compare against PyTorch import this module: PyTorch is
never needed to train.
"""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import to_host
from . import registry

__all__ = ["TORCH_DTYPE", "torch_mirror", "copy_into_torch", "torch_pads", "TorchResidual", "TorchSkipConcat"]

TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def torch_pads(padding):
    """hpcnn's ((lo, hi) per dimension, first spatial dimension first) as F.pad's list (last dimension first)."""
    out = []
    for lo, hi in reversed(padding):
        out += [lo, hi]
    return out


def _symmetric(padding):
    return all(lo == hi for lo, hi in padding)


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


class TorchGlobalAvgPool(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=tuple(range(2, x.dim())))


# --- one function per layer kind: (hpcnn module, [(name, mirrored child)]) -> torch module ----------------------

def conv(m, children):
    cls = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[m.nd]
    g = m.geometry
    symmetric = _symmetric(g.padding)
    out = cls(m.in_channels, m.out_channels, g.kernel, stride=g.stride, dilation=g.dilation,
              padding=tuple(lo for lo, _ in g.padding) if symmetric else 0, bias="bias" in m.params)
    if not symmetric:
        # torch's layers pad symmetrically: pad each side explicitly, keeping the parameter names.
        pads = torch_pads(g.padding)
        out.register_forward_pre_hook(lambda module, args: (F.pad(args[0], pads),))
    return out


def conv_transpose(m, children):
    cls = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[m.nd]
    return cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
               output_padding=m.output_padding, dilation=m.dilation, bias="bias" in m.params)


def pool(m, children):
    from .pool import _MaxPoolNd
    maximum = isinstance(m, _MaxPoolNd)
    cls = {(2, True): torch.nn.MaxPool2d, (3, True): torch.nn.MaxPool3d, (2, False): torch.nn.AvgPool2d,
           (3, False): torch.nn.AvgPool3d}[(m.nd, maximum)]
    g = m.geometry
    if not _symmetric(g.padding):
        raise ValueError(f"{m.describe()}: no PyTorch pooling layer pads its sides differently")
    return cls(g.kernel, stride=g.stride, padding=tuple(lo for lo, _ in g.padding))


def upsample(m, children):
    return torch.nn.Upsample(scale_factor=m.scale_factor, mode=m.mode, align_corners=m.align_corners)


def batchnorm(m, children):
    cls = {2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[m.nd]
    return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine)


def groupnorm(m, children):
    return torch.nn.GroupNorm(m.num_groups, m.num_channels, eps=m.eps, affine=m.affine)


class TorchDropout(torch.nn.Module):
    """Dropout with hpcnn's mask (hpcnn.kernels.dropout_mask of seed, step and index): PyTorch's generator draws
    other masks, so the oracle applies the same one; the identity in evaluation, as torch.nn.Dropout."""

    def __init__(self, p, seed, step):
        super().__init__()
        self.p, self.seed, self.step = p, seed, step

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        from ..kernels.dropout import dropout_mask
        mask = dropout_mask(np, tuple(x.shape), (0,) * x.dim(), tuple(x.shape), self.seed, self.step, self.p,
                            np.dtype(str(x.dtype).replace("torch.", "")))
        self.step += 1
        return x * torch.from_numpy(mask)


def dropout(m, children):
    return TorchDropout(m.p, m.seed, m.step)


def relu(m, children):
    return torch.nn.ReLU()


def leaky_relu(m, children):
    return torch.nn.LeakyReLU(m.negative_slope)


def global_avgpool(m, children):
    return TorchGlobalAvgPool()


def flatten(m, children):
    return torch.nn.Flatten()


def linear(m, children):
    return torch.nn.Linear(m.in_features, m.out_features, bias="bias" in m.params)


def sequential(m, children):
    return torch.nn.Sequential(OrderedDict(children))


def residual(m, children):
    parts = dict(children)
    return TorchResidual(parts["body"], parts.get("shortcut"))


def skip(m, children):
    return TorchSkipConcat(dict(children)["inner"])


def cross_entropy(m, children):
    return torch.nn.CrossEntropyLoss(ignore_index=m.ignore_index)


def mse(m, children):
    return torch.nn.MSELoss()


# --- the tree --------------------------------------------------------------------------------------------------

def torch_mirror(m):
    """A torch module computing what hpcnn module (or loss) `m` computes; parameters not yet copied."""
    children = [(name, torch_mirror(child)) for name, child in (m.children() if hasattr(m, "children") else [])]
    return registry.kind_of(m).resolve("mirror")(m, children)


def copy_into_torch(model, tmodel, dtype=None):
    """Copy every parameter and state array of hpcnn `model` into `tmodel` by name, in `model`'s dtype
    (or `dtype` for a model without parameters); returns `tmodel`."""
    if dtype is None:
        dtype = next(p for _, p, _ in model.parameters()).dtype
    tmodel.to(TORCH_DTYPE[np.dtype(dtype)])
    # host copies (explicit for device arrays): the mirror is the tests' oracle on the CPU
    values = {name: torch.from_numpy(np.array(to_host(p))) for name, p, _ in model.parameters()}
    values.update({name: torch.from_numpy(np.array(to_host(a))) for name, a in model.state()})
    result = tmodel.load_state_dict(values, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if result.unexpected_keys or missing:
        raise ValueError(f"copy_into_torch: names differ: hpcnn only {result.unexpected_keys}, torch only {missing}")
    return tmodel
