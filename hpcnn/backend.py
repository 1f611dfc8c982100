"""The array module (numpy, or cupy on a GPU) and the dtype policy: the one place that knows the device."""
import os

import numpy as np

__all__ = [
    "DEFAULT_DTYPE", "ALLOWED_DTYPES", "get_array_module", "xp_for_device", "is_gpu_array",
    "gpu_available", "default_device", "set_default_device", "check_float_array", "to_numpy",
    "as_array", "LOCAL_RANK_VARIABLES", "node_local_rank", "select_gpu_for_rank", "GPU_SCRATCH_BYTES",
]

DEFAULT_DTYPE = np.dtype(np.float32)
# float64 is allowed so that tests can check gradients to 1e-10; everything runs in float32 by default.
ALLOWED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_default_device = os.environ.get("HPCNN_DEVICE", "cpu")
# Upper bound of a GPU convolution's im2col scratch buffer (HPCNN_GPU_SCRATCH_MB, default 256 MiB).
GPU_SCRATCH_BYTES = int(float(os.environ.get("HPCNN_GPU_SCRATCH_MB", "256")) * 2**20)


def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def gpu_available():
    """True when cupy imports and sees at least one CUDA device."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


def is_gpu_array(x):
    """True for a cupy array (without importing cupy when it is not already loaded)."""
    return type(x).__module__.startswith("cupy")


def get_array_module(x):
    """numpy or cupy, whichever owns `x`."""
    if is_gpu_array(x):
        import cupy
        return cupy
    return np


def xp_for_device(device=None):
    """The array module for a device name ('cpu' or 'gpu'); 'gpu' without cupy is a clear error."""
    device = device or _default_device
    if device == "cpu":
        return np
    if device == "gpu":
        cp = _cupy()
        if cp is None or not gpu_available():
            raise RuntimeError("device 'gpu' was asked for, but cupy is not installed or sees no CUDA device "
                               "(install hpcnn[gpu] on a machine with an NVIDIA GPU)")
        return cp
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'gpu'")


def default_device():
    return _default_device


def set_default_device(device):
    """Select the device new parameters and data are created on ('cpu' or 'gpu')."""
    global _default_device
    xp_for_device(device)
    _default_device = device


def check_float_array(x, where, ndim=None, channels=None, channel_axis=1):
    """Refuse anything but a float32/float64 array of the expected rank and channel count.

    `where` names the layer in the message; `ndim` may be an int or a tuple of allowed ranks.
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise ValueError(f"{where}: expected an array, received {type(x).__name__}")
    if x.dtype not in ALLOWED_DTYPES:
        raise ValueError(f"{where}: expected float32 or float64, received dtype {x.dtype} (shape {tuple(x.shape)})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{where}: expected a {want} input, received shape {tuple(x.shape)}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{where}: expected {channels} channels on axis {channel_axis}, "
                         f"received shape {tuple(x.shape)}")


def to_numpy(x):
    """A host copy of any array (no copy for numpy)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def as_array(x, like):
    """`x` as an array of the same module as `like`."""
    xp = get_array_module(like)
    return xp.asarray(x)


# Where launchers put a rank's index among the ranks of its node, in the order they are read:
# SLURM (srun), Open MPI, MPICH's hydra (two spellings), MVAPICH2.
LOCAL_RANK_VARIABLES = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK",
                        "MV2_COMM_WORLD_LOCAL_RANK")


def node_local_rank(environ=None):
    """This process's rank among the ranks on its node, from the launcher's environment (0 when none says)."""
    environ = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                rank = int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a node-local rank (expected an integer)") from None
            if rank < 0:
                raise ValueError(f"{name}={value!r} is not a node-local rank (expected 0 or more)")
            return rank
    return 0


def select_gpu_for_rank(device_count=None, environ=None):
    """Make GPU (node-local rank mod device count) this process's current CUDA device; returns its index.

    Several ranks may share one GPU (more ranks on a node than GPUs). `device_count` defaults to
    what CUDA reports (after CUDA_VISIBLE_DEVICES); passing it skips touching CUDA at all.
    """
    use = device_count is None
    if use:
        xp_for_device("gpu")
        import cupy
        device_count = cupy.cuda.runtime.getDeviceCount()
    if device_count < 1:
        raise RuntimeError("select_gpu_for_rank: no CUDA device is visible to this process")
    index = node_local_rank(environ) % device_count
    if use:
        import cupy
        cupy.cuda.Device(index).use()
    return index
