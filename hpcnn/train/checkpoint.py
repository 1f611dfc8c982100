"""Checkpoints: atomic .npz files (no pickle) with a JSON header; the last K kept.

A checkpoint is one file `step-000001234.npz` holding plain arrays: `param/<name>` (the
model's parameters, global: the same on every rank, whatever the grid), `state/<name>`
(batch-norm running statistics), `optim/<key>` (the optimizer's state_dict), and
`__header__`, the UTF-8 bytes of a JSON object (step, epoch, position in the epoch, the RNG
state, the job, the number of ranks and grid it was written with, and `arrays`: the shape and
dtype of every array written). It is loaded with np.load(allow_pickle=False), so loading never
runs code from the file; an array missing from the file, or of another shape or dtype than its
header lists, refuses the checkpoint, and `check_complete` refuses one that lacks an entry the
model or its optimizer needs.

Writing is atomic: the file is written under a temporary name in the same folder, flushed
and fsynced, renamed over the final name with os.replace, and the folder is fsynced, so a
job killed at any moment leaves either the previous checkpoints or the new one, never a
partial file under a checkpoint's name.
"""
import glob
import json
import os
import re

import numpy as np

from ..backend import to_host

__all__ = ["FORMAT_VERSION", "CheckpointError", "save", "load", "latest", "list_checkpoints", "checkpoint_path",
           "check_complete"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.npz$")
_HEADER = "__header__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def checkpoint_path(folder, step):
    return os.path.join(folder, f"step-{int(step):09d}.npz")


def list_checkpoints(folder):
    """[(step, path)] of the complete checkpoints in `folder`, oldest first."""
    out = []
    for path in glob.glob(os.path.join(glob.escape(folder), "step-*.npz")):
        m = _NAME.match(os.path.basename(path))
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(folder, step, arrays, header, keep=None):
    """Write arrays {key: array} and a JSON-able header as checkpoint `step`; returns its path.

    Arrays on a device are copied to the host here (the checkpoint's one host copy).

    `keep`: delete all but the newest `keep` checkpoints afterwards (None keeps all).
    """
    os.makedirs(folder, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = os.path.join(folder, f".{os.path.basename(final)}.tmp-{os.getpid()}")
    payload = {}
    for key, value in arrays.items():
        if key == _HEADER:
            raise ValueError(f"checkpoint array key {key!r} is reserved")
        payload[key] = np.ascontiguousarray(to_host(value))
    manifest = {key: [list(a.shape), a.dtype.str] for key, a in payload.items()}
    head = dict(header, format_version=FORMAT_VERSION, step=int(step), arrays=manifest)
    payload[_HEADER] = np.frombuffer(json.dumps(head).encode("utf-8"), dtype=np.uint8)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    if keep is not None:
        prune(folder, keep)
    return final


def prune(folder, keep):
    """Delete all but the newest `keep` checkpoints, and temporary files left by killed writers."""
    for _, path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        os.unlink(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), ".step-*.npz.tmp-*")):
        pid = stale.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            os.unlink(stale)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(path):
    """(arrays {key: ndarray}, header dict) of the checkpoint at `path` (no pickle)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except Exception as e:  # a damaged zip raises several kinds of error
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    if _HEADER not in arrays:
        raise CheckpointError(f"checkpoint {path} has no header: not an hpcnn checkpoint")
    try:
        header = json.loads(arrays.pop(_HEADER).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a damaged header: {e}") from None
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise CheckpointError(f"checkpoint {path} has format version {version}, this hpcnn reads {FORMAT_VERSION}")
    for key, (shape, dtype) in (header.get("arrays") or {}).items():
        if key not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks {key}, which its header lists: the file was altered "
                                  "or damaged")
        if list(arrays[key].shape) != list(shape) or arrays[key].dtype.str != dtype:
            raise CheckpointError(f"checkpoint {path}: {key} is {arrays[key].dtype} {arrays[key].shape}, its header "
                                  f"lists {np.dtype(dtype)} {tuple(shape)}: the file was altered or damaged")
    return arrays, header


def check_complete(where, arrays, targets, params, counters=()):
    """Refuse (CheckpointError naming the entry) a checkpoint that lacks what a model and its optimizer need.

    targets: [(key, array)]: the model's parameters and states ("param/<name>", "state/<name>"), each needed
    with the array's shape and dtype. params: {name: parameter}: an optimizer entry is "optim/<state>.<name>"
    for a per-parameter state (momentum_buffer, exp_avg, ...); every state the checkpoint holds for one
    parameter it must hold for all, with the parameter's shape and dtype, except `counters` (the optimizer's
    per-parameter counters, such as Adam's step), which are needed for all but have their own shape.
    """
    for key, target in targets:
        if key not in arrays:
            raise CheckpointError(f"{where} has no {key}: it was written for another model, or altered")
        a = arrays[key]
        if a.shape != tuple(target.shape) or a.dtype != target.dtype:
            raise CheckpointError(f"{where}: {key} is {a.dtype} {a.shape}, the model's is {target.dtype} "
                                  f"{tuple(target.shape)}" + (" (training.dtype changed?)" if a.shape ==
                                                              tuple(target.shape) else ""))
    states = {}
    for key in arrays:
        if key.startswith("optim/"):
            state, _, name = key[6:].partition(".")
            if name in params:
                states.setdefault(state, set()).add(name)
    for state, names in sorted(states.items()):
        missing = [n for n in params if n not in names]
        if missing:
            raise CheckpointError(f"{where} lacks optim/{state}.{missing[0]} (the optimizer's {state} of parameter "
                                  f"{missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}): "
                                  "it cannot continue the run exactly")
        for name in names if state not in counters else ():
            a, p = arrays[f"optim/{state}.{name}"], params[name]
            if a.shape != tuple(p.shape) or a.dtype != p.dtype:
                raise CheckpointError(f"{where}: optim/{state}.{name} is {a.dtype} {a.shape}, the parameter is "
                                      f"{p.dtype} {tuple(p.shape)}")


def latest(folder):
    """The path of the newest checkpoint in `folder` that reads back, or None."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            with np.load(path, allow_pickle=False) as z:
                if _HEADER in z.files:
                    return path
        except Exception:
            continue
    return None
