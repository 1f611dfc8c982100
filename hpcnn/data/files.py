"""HDF5 and .npy datasets on disk, read block by block: a rank reads only its block (plus halo), never a whole sample.

Layouts (what `hpcnn data generate` writes):

- HDF5: one file with a group per split, `train/x`, `train/y`, `val/x`, `val/y`; x is
  (N, C, H, W) or (N, C, D, H, W), any real dtype (read as float32); y is (N,) integer class
  labels, (N, *S) integer label maps, or (N, K) float targets. The file's attributes `task`
  ("classify", "segment", "regress") and `num_classes` say what y means; without them the
  task is inferred from y's dtype and shape. A block is read as an HDF5 hyperslab,
  `x[i, :, h0:h1, w0:w1]`, one sample at a time.
- .npy: a folder with `train_x.npy`, `train_y.npy`, `val_x.npy`, `val_y.npy` (same shapes)
  and an optional `meta.json` holding {"task": ..., "num_classes": ...}. A block is read
  with positioned reads (os.pread) of its contiguous runs only; `bytes_read` counts them.

A missing, truncated or wrongly shaped file is refused with its path when the dataset is
opened, before any training starts.
"""
import json
import os

import numpy as np

from .dataset import TASKS, DataError, Dataset

__all__ = ["HDF5Dataset", "NpyDataset", "NpyBlockReader", "HDF5_OPTIONS", "NPY_OPTIONS",
           "write_hdf5", "write_npy"]

_COMMON = {
    "task": (str, "", ("",) + TASKS, "what the labels are ('' : from the file's attributes or the labels' shape)"),
    "num_classes": (int, 0, "nonnegative", "classes or regression outputs (0: from the file)"),
}
HDF5_OPTIONS = {"path": (str, None, "required", "the HDF5 file (groups train/ and val/ with x and y)"), **_COMMON}
NPY_OPTIONS = {"path": (str, None, "required", "the folder with train_x.npy, train_y.npy, val_x.npy, val_y.npy"),
               **_COMMON}


def _infer_task(y_shape, y_dtype, x_shape, where):
    if np.dtype(y_dtype).kind in "iu":
        if len(y_shape) == 1:
            return "classify"
        if tuple(y_shape[1:]) == tuple(x_shape[2:]):
            return "segment"
    elif np.dtype(y_dtype).kind == "f" and len(y_shape) == 2:
        return "regress"
    raise DataError(f"{where}: cannot tell the task from labels of shape {tuple(y_shape)} and dtype {y_dtype} "
                    f"for inputs {tuple(x_shape)}; expected (N,) or (N, *S) integers or (N, K) floats")


def _check_layout(x_shape, y_shape, task, where):
    if len(x_shape) not in (4, 5):
        raise DataError(f"{where}: inputs must be laid out (N, C, H, W) or (N, C, D, H, W), found shape {tuple(x_shape)}")
    if x_shape[0] == 0 or min(x_shape[1:]) <= 0:
        raise DataError(f"{where}: inputs of shape {tuple(x_shape)} hold no data")
    if y_shape[0] != x_shape[0]:
        raise DataError(f"{where}: {x_shape[0]} inputs but {y_shape[0]} labels")
    expect = {"classify": (x_shape[0],), "segment": (x_shape[0],) + tuple(x_shape[2:])}.get(task)
    if expect is not None and tuple(y_shape) != expect:
        raise DataError(f"{where}: labels for task {task!r} must have shape {expect}, found {tuple(y_shape)}")
    if task == "regress" and len(y_shape) != 2:
        raise DataError(f"{where}: regression targets must be laid out (N, K), found shape {tuple(y_shape)}")


def _num_classes(task, given, y_reader, where):
    if given:
        return int(given)
    if task == "regress":
        return int(y_reader.shape[1])
    if task == "classify":
        return int(np.max(y_reader[...])) + 1
    raise DataError(f"{where}: a segmentation file must state num_classes (file attribute, meta.json "
                    f"or the job's data.num_classes)")


def _require_file(path, what):
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist ({what})")
    if not os.path.isfile(path):
        raise DataError(f"data file {path} is not a file ({what})")


class HDF5Dataset(Dataset):
    """One split of an HDF5 file (group `split` with datasets x and y); blocks are hyperslabs."""

    def __init__(self, split="train", seed=0, path=None, task="", num_classes=0):
        import h5py
        _require_file(path, "data.path")
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"data file {path} cannot be read as HDF5 (truncated or not HDF5): {e}") from None
        where = f"data file {path}"
        for key in ("x", "y"):
            if f"{split}/{key}" not in self._file:
                found = sorted(self._file.keys())
                raise DataError(f"{where} has no dataset '{split}/{key}' (top level holds {found})")
        self._x, self._y = self._file[f"{split}/x"], self._file[f"{split}/y"]
        task = task or self._file.attrs.get("task", "") or _infer_task(self._y.shape, self._y.dtype, self._x.shape, where)
        task = task.decode() if isinstance(task, bytes) else str(task)
        if task not in TASKS:
            raise DataError(f"{where}: unknown task {task!r} (expected one of {TASKS})")
        _check_layout(self._x.shape, self._y.shape, task, f"{where} ({split}/x, {split}/y)")
        self.task = task
        self.num_classes = _num_classes(task, num_classes or int(self._file.attrs.get("num_classes", 0)), self._y, where)
        self.sample_shape = tuple(int(s) for s in self._x.shape[1:])
        self.length = int(self._x.shape[0])
        self.name = f"{os.path.basename(path)}[{split}]"
        self.path = path

    def _inputs(self, index, spatial):
        return self._x[(index, slice(None)) + spatial]

    def _labels(self, index, spatial):
        if self.task == "segment":
            return self._y[(index,) + spatial]
        return self._y[index]


class NpyBlockReader:
    """Positioned reads of one block of a C-ordered .npy array, without mapping or loading the rest.

    array on disk: (N, *T); read(i, slices) -> the block of sample i, slices over T.
    """

    def __init__(self, path):
        _require_file(path, "data.path")
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran, dtype = read_header(f)
            except ValueError as e:
                raise DataError(f"data file {path} is not a .npy file: {e}") from None
            self.offset = f.tell()
        if fortran:
            raise DataError(f"data file {path} is stored in Fortran order; hpcnn reads C-ordered arrays")
        if dtype.hasobject:
            raise DataError(f"data file {path} holds Python objects; hpcnn reads numeric arrays only")
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        need = self.offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.path.getsize(path)
        if size < need:
            raise DataError(f"data file {path} is truncated: shape {self.shape} {dtype} needs {need} bytes, "
                            f"the file has {size}")
        self.bytes_read = 0
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, index, slices):
        """The block (*extents of slices) of sample `index`; slices: one per trailing axis."""
        inner = self.shape[1:]
        slices = tuple(slices)
        ext = tuple(s.stop - s.start for s in slices)
        out = np.empty(ext, self.dtype)
        if out.size == 0:
            return out
        # The longest contiguous run: trailing full axes plus the innermost partial one.
        j = len(inner) - 1
        while j > 0 and ext[j] == inner[j]:
            j -= 1
        run = int(np.prod(ext[j:]))
        strides = np.cumprod((1,) + inner[::-1])[::-1][1:]  # element strides of the axes of `inner`
        base = index * int(np.prod(inner))
        flat = out.reshape(-1, run)
        nbytes = run * self.dtype.itemsize
        for k, lead in enumerate(np.ndindex(*ext[:j])):
            first = base + sum((slices[a].start + lead[a]) * int(strides[a]) for a in range(j)) \
                + slices[j].start * int(strides[j])
            chunk = os.pread(self._fd, nbytes, self.offset + first * self.dtype.itemsize)
            if len(chunk) != nbytes:
                raise DataError(f"data file {self.path} ended early (truncated while in use?)")
            flat[k] = np.frombuffer(chunk, self.dtype)
            self.bytes_read += nbytes
        return out


class NpyDataset(Dataset):
    """One split of a .npy folder (`{split}_x.npy`, `{split}_y.npy`); blocks are positioned reads."""

    def __init__(self, split="train", seed=0, path=None, task="", num_classes=0):
        if not os.path.isdir(path):
            raise DataError(f"data folder {path} does not exist (data.path)")
        self.x_reader = NpyBlockReader(os.path.join(path, f"{split}_x.npy"))
        self.y_reader = NpyBlockReader(os.path.join(path, f"{split}_y.npy"))
        meta = {}
        meta_path = os.path.join(path, "meta.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        where = f"data folder {path}"
        xs, ys = self.x_reader.shape, self.y_reader.shape
        task = task or meta.get("task", "") or _infer_task(ys, self.y_reader.dtype, xs, where)
        if task not in TASKS:
            raise DataError(f"{where}: unknown task {task!r} (expected one of {TASKS})")
        _check_layout(xs, ys, task, f"{where} ({split}_x.npy, {split}_y.npy)")
        self.task = task
        if task in ("classify", "regress"):
            self._y_all = np.load(self.y_reader.path, mmap_mode="r")  # (N,) or (N, K): small
        self.num_classes = _num_classes(task, num_classes or int(meta.get("num_classes", 0)),
                                        getattr(self, "_y_all", None), where)
        self.sample_shape = tuple(xs[1:])
        self.length = int(xs[0])
        self.name = f"{os.path.basename(os.path.normpath(path))}[{split}]"
        self.path = path

    def _inputs(self, index, spatial):
        return self.x_reader.read(index, (slice(0, self.sample_shape[0]),) + spatial)

    def _labels(self, index, spatial):
        if self.task == "segment":
            return self.y_reader.read(index, spatial)
        return self._y_all[index]


# --- writers (`hpcnn data generate`) ---------------------------------------------------------
def _attrs(dataset):
    return {"task": dataset.task, "num_classes": int(dataset.num_classes), "source": dataset.name}


def write_hdf5(path, splits, chunk_side=256, progress=None):
    """Write {split: Dataset} to one HDF5 file, one sample at a time (groups split/x, split/y).

    x is chunked in tiles of chunk_side along each spatial axis so a block read touches
    only the tiles it overlaps.
    """
    import h5py
    tmp = f"{path}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        first = next(iter(splits.values()))
        for key, value in _attrs(first).items():
            f.attrs[key] = value
        for split, ds in splits.items():
            n = len(ds)
            chunks = (1, 1) + tuple(min(s, chunk_side) for s in ds.spatial_shape)
            x = f.create_dataset(f"{split}/x", (n,) + ds.sample_shape, np.float32, chunks=chunks)
            yshape = ds.label_shape()
            ydtype = np.float32 if ds.task == "regress" else np.int64
            y = f.create_dataset(f"{split}/y", (n,) + yshape, ydtype,
                                 chunks=((1,) + tuple(min(s, chunk_side) for s in yshape)) if yshape else None)
            for i in range(n):
                xi, yi = ds.read([i])
                x[i] = xi[0]
                y[i] = yi[0]
                if progress:
                    progress(split, i + 1, n)
    os.replace(tmp, path)


def write_npy(folder, splits, progress=None):
    """Write {split: Dataset} as `{split}_x.npy` / `{split}_y.npy` (+ meta.json), one sample at a time."""
    os.makedirs(folder, exist_ok=True)
    first = next(iter(splits.values()))
    for split, ds in splits.items():
        n = len(ds)
        ydtype = np.float32 if ds.task == "regress" else np.int64
        x = np.lib.format.open_memmap(os.path.join(folder, f"{split}_x.npy"), "w+", np.float32,
                                      (n,) + ds.sample_shape)
        y = np.lib.format.open_memmap(os.path.join(folder, f"{split}_y.npy"), "w+", ydtype, (n,) + ds.label_shape())
        for i in range(n):
            xi, yi = ds.read([i])
            x[i] = xi[0]
            y[i] = yi[0]
            if progress:
                progress(split, i + 1, n)
        x.flush()
        y.flush()
        del x, y
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(_attrs(first), f)
