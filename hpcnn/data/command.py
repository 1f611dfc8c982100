"""`hpcnn data generate` and `hpcnn data info`: write generated datasets to files, describe a data file."""
import os
import sys
import time

from . import DataError, generate, open_dataset

__all__ = ["generate_command", "info_command"]


def generate_command(dataset, out, fmt, seed, options, stream=None):
    """Write dataset `dataset` (options already checked) to `out`; returns the exit status."""
    stream = stream or sys.stdout
    if dataset in ("hdf5", "npy"):
        stream.write("hpcnn data generate: hdf5 and npy are file readers; generate digits, textures or fields3d\n")
        return 2
    fmt = fmt or ("hdf5" if out.endswith((".h5", ".hdf5")) else "npy")
    last = [0.0]

    def progress(split, done, total):
        now = time.perf_counter()
        if now - last[0] > 2.0 or done == total:
            last[0] = now
            stream.write(f"  {split}: {done}/{total} samples\n")
            stream.flush()

    t0 = time.perf_counter()
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    splits = generate(dataset, out, fmt=fmt, seed=seed, progress=progress, **options)
    for ds in splits.values():
        stream.write(f"  {ds.describe()}\n")
    stream.write(f"wrote {out} ({fmt}) in {time.perf_counter() - t0:.1f} s; train on it with\n"
                 f"  [data]\n  dataset = \"{fmt}\"\n  path = \"{out}\"\n")
    return 0


def info_command(path, stream=None):
    """Open both splits of a data file (checking its layout) and describe them; returns the exit status."""
    stream = stream or sys.stdout
    fmt = "npy" if os.path.isdir(path) else "hdf5"
    try:
        for split in ("train", "val"):
            stream.write(open_dataset(fmt, split, path=path).describe() + "\n")
    except DataError as e:
        sys.stderr.write(f"hpcnn data info: error: {e}\n")
        return 2
    return 0
