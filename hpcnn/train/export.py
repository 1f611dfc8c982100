"""`hpcnn export`: a checkpoint's parameters and batch-norm state as a safetensors file under PyTorch's names."""
import os

from ..nn.weights import save_weights, weight_arrays
from . import checkpoint as ckpt

__all__ = ["export_checkpoint", "command"]


def export_checkpoint(path, out):
    """Write the weights of checkpoint `path` (a checkpoint file, or a checkpoint folder: its newest) to the
    safetensors file `out`; returns (checkpoint path, number of arrays written)."""
    if os.path.isdir(path):
        newest = ckpt.latest(path)
        if newest is None:
            raise ckpt.CheckpointError(f"{path} holds no checkpoint")
        path = newest
    arrays, header = ckpt.load(path)
    params = [(k[len("param/"):], v) for k, v in arrays.items() if k.startswith("param/")]
    state = [(k[len("state/"):], v) for k, v in arrays.items() if k.startswith("state/")]
    if not params:
        raise ckpt.CheckpointError(f"checkpoint {path} holds no parameters")
    weights = weight_arrays(params, state, steps=header.get("step", 0))
    save_weights(out, weights, metadata={"hpcnn_model": header.get("model"), "hpcnn_step": header.get("step"),
                                         "hpcnn_checkpoint": os.path.basename(path)})
    return path, len(weights)


def command(path, out):
    """`hpcnn export CHECKPOINT -o OUT`; returns the exit status (2: the checkpoint cannot be read)."""
    import sys
    try:
        source, count = export_checkpoint(path, out)
    except (ckpt.CheckpointError, OSError) as e:
        sys.stderr.write(f"hpcnn export: error: {e}\n")
        return 2
    print(f"wrote {out}: {count} arrays of {source} under PyTorch's names (load with safetensors.torch.load_file)")
    return 0
