"""Weights in and out as safetensors files (no pickle), under PyTorch's names.

hpcnn's parameter and state names are PyTorch's (`block1.conv.weight`, `bn.running_mean`): a
network written with torch.nn modules of the same names and structure (torch.nn.Sequential of
an OrderedDict, children called as hpcnn calls them) has the same state_dict keys. A file
written here loads into it with `model.load_state_dict(safetensors.torch.load_file(path))`, and
a file saved from it with `safetensors.torch.save_file(model.state_dict(), path)` loads here.

Batch norm's `num_batches_tracked`, which PyTorch keeps and hpcnn does not need (its running
averages always use `momentum`), is written as the number of training steps and skipped on
reading.
"""
import os

import numpy as np

from ..backend import to_host

__all__ = ["WeightsError", "save_weights", "load_weights", "weight_arrays", "TRACKED"]

TRACKED = "num_batches_tracked"


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file and both names."""


def weight_arrays(params, state, steps=0):
    """{name: host array} of parameters [(name, array)] and state [(name, array)], with a batch norm's
    num_batches_tracked = steps beside each running_mean."""
    out = {}
    for name, value in list(params) + list(state):
        out[name] = np.ascontiguousarray(to_host(value))
        if name.endswith(".running_mean") or name == "running_mean":
            out[name[:-len("running_mean")] + TRACKED] = np.array(int(steps), np.int64)
    return out


def save_weights(path, arrays, metadata=None):
    """Write {name: array} as a safetensors file at `path` (atomically: a temporary name, then a rename)."""
    from safetensors.numpy import save_file
    meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path):
    from safetensors.numpy import load_file
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} does not exist")
    try:
        return load_file(path)
    except Exception as e:  # a damaged or foreign file raises several kinds of error
        raise WeightsError(f"weights file {path} cannot be read as safetensors: {e}") from None


def load_weights(model, path):
    """Copy every parameter and state array of `model` from the safetensors file at `path`, cast to the
    model's dtype (on the model's device). Every name of the model must be in the file with the model's
    shape, and every name in the file must be the model's (num_batches_tracked aside); otherwise nothing
    is copied and a WeightsError names the file's and the model's names."""
    arrays = _read(path)
    targets = {name: p for name, p, _ in model.parameters()}
    targets.update(model.state())
    extra = sorted(k for k in arrays if k not in targets and k.rpartition(".")[2] != TRACKED)
    missing = [k for k in targets if k not in arrays]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the model's {_names(missing)} {'is' if len(missing) == 1 else 'are'} not in it")
        if extra:
            parts.append(f"its {_names(extra)} {'is' if len(extra) == 1 else 'are'} not the model's")
        raise WeightsError(f"weights file {path} does not fit the model: " + "; ".join(parts)
                           + f" (the model's names: {_names(list(targets), 6)})")
    for name, target in targets.items():
        if tuple(arrays[name].shape) != tuple(target.shape):
            raise WeightsError(f"weights file {path}: its {name!r} has shape {tuple(arrays[name].shape)}, the "
                               f"model's {name!r} has shape {tuple(target.shape)}")
        if arrays[name].dtype.kind != "f":
            raise WeightsError(f"weights file {path}: its {name!r} holds {arrays[name].dtype}, not floating point")
    for name, target in targets.items():
        target[...] = _put_like(arrays[name].astype(target.dtype), target)
    return model


def _put_like(host, target):
    from ..backend import array_module
    xp = array_module(target)
    return host if xp is np else xp.asarray(host)


def _names(names, limit=4):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
