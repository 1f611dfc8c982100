"""Devices and their array modules, the dtype policy, and the one place that moves arrays between host and device.

Devices: "cpu" (numpy), "gpu" (cupy, on the GPU of this rank's node-local rank) and "emulated-gpu"
(`hpcnn.emulated`, the strict stand-in for cupy that checks the GPU code path without a GPU).

- `array_module(*arrays)` is the one helper that gives the array module (numpy, cupy or
  hpcnn.emulated) of the arrays a function receives; mixing host and device arrays is a TypeError.
- `to_host(x)` is the explicit device-to-host copy (checkpoints, logged scalars, metrics);
  `Device.put(host)` the explicit host-to-device copy (inputs and labels once per step, a loaded
  checkpoint). Nothing else moves data between the two.
- `open_device(name)` makes a Device; "gpu" selects the GPU (`select_gpu_for_rank`) and checks that
  CuPy, the driver, NVRTC and cuBLAS work, raising DeviceUnavailable with one clear message if not.
"""
import os

import numpy as np

from . import emulated

__all__ = [
    "DEFAULT_DTYPE", "ALLOWED_DTYPES", "DEVICES", "CUDA_LIBRARIES_HELP", "gpu_scratch_bytes", "DeviceUnavailable",
    "Device", "open_device", "array_module", "is_device_array", "is_emulated", "to_host", "host_scalars",
    "gpu_available", "check_float_array", "LOCAL_RANK_VARIABLES", "node_local_rank", "select_gpu_for_rank",
]

DEFAULT_DTYPE = np.dtype(np.float32)
# float64 is allowed so that tests can check gradients to 1e-10; everything runs in float32 by default.
ALLOWED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

DEVICES = ("cpu", "gpu", "emulated-gpu")


# What brings the CUDA libraries CuPy loads at run time (NVRTC compiles hpcnn's kernels, cuBLAS runs its GEMMs).
CUDA_LIBRARIES_HELP = ("install cupy-cuda13x[ctk] (pip install 'hpcnn[gpu]'), which brings CUDA 13's NVRTC and "
                       "cuBLAS libraries, or put a CUDA 13 toolkit's lib64 on LD_LIBRARY_PATH")


def gpu_scratch_bytes(free_bytes):
    """The scratch budget of one GPU convolution tile for `free_bytes` of free device memory: an eighth of
    it, at most 2 GiB (the GPU kernels' rule, and the performance model's price of it)."""
    return int(min(free_bytes // 8, 2 * 2**30))


class DeviceUnavailable(RuntimeError):
    """The device a job asks for cannot be used here (no CuPy, no GPU, a CUDA library missing)."""


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


def _is_cupy(x):
    return type(x).__module__.startswith("cupy")


def is_emulated(x):
    """True for an array of the emulated GPU."""
    return type(x) is emulated.ndarray


def is_device_array(x):
    """True for a device array (cupy or emulated-gpu), without importing cupy."""
    return type(x) is emulated.ndarray or _is_cupy(x)


def _module_of(x):
    t = type(x)
    if t is np.ndarray:
        return np
    if t is emulated.ndarray:
        return emulated
    if _is_cupy(x):
        import cupy
        return cupy
    return None


def array_module(*arrays):
    """numpy, cupy or hpcnn.emulated: the module of `arrays` (None entries and scalars are skipped; numpy
    when there are no arrays). Host and device arrays together are a TypeError."""
    found = None
    for a in arrays:
        xp = _module_of(a)
        if xp is None:
            continue
        if found is None:
            found = xp
        elif xp is not found:
            raise TypeError(f"arrays of {found.__name__} and {xp.__name__} met: move one of them explicitly "
                            "(Device.put, hpcnn.backend.to_host)")
    return np if found is None else found


def to_host(x):
    """The explicit device-to-host copy: a numpy array of any array (a numpy array as it is)."""
    if is_device_array(x):
        return x.get()
    return np.asarray(x)


def host_scalars(*values):
    """Python floats of scalars (numbers, or 0-d arrays of one device): the explicit host copy of a loss or a
    metric, one copy for all of them."""
    xp = array_module(*values)
    if xp is np:
        return tuple(float(v) for v in values)
    return tuple(float(v) for v in to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for v in values])))


class Device:
    """Where a rank computes: `name` (one of DEVICES), `xp` (its array module), `index` (the GPU, or None).

    put(host) -> the array on this device (the explicit upload; an array already there stays as it is).
    """

    def __init__(self, name, xp, index=None, label=None):
        self.name = name
        self.xp = xp
        self.index = index
        self.label = label or name

    def put(self, host):
        """`host` (a numpy array) on this device: one explicit host-to-device copy (none on "cpu")."""
        if array_module(host) is self.xp:
            return host
        if is_device_array(host):
            raise TypeError(f"Device.put: expected a host array or an array on {self.label}, received a "
                            f"{type(host).__module__} array")
        return self.xp.asarray(host)

    def synchronize(self):
        """Wait for the work queued on this device (timing a step)."""
        if self.name == "gpu":
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self):
        return f"Device({self.label})"


def _gpu_device(environ):
    cp = _cupy()
    if cp is None:
        raise DeviceUnavailable("device \"gpu\" needs CuPy, which is not installed: pip install 'hpcnn[gpu]' "
                                "(cupy-cuda13x with the CUDA 13 libraries) on a machine with an NVIDIA GPU")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or a driver older than the CUDA runtime
        raise DeviceUnavailable(f"device \"gpu\": CuPy finds no usable CUDA driver ({type(e).__name__}: {e})") \
            from None
    if count < 1:
        raise DeviceUnavailable("device \"gpu\": CuPy sees no CUDA device (check CUDA_VISIBLE_DEVICES and "
                                "nvidia-smi)")
    index = select_gpu_for_rank(environ=environ)
    _probe_gpu_libraries(cp)
    try:
        name = cp.cuda.runtime.getDeviceProperties(index)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "CUDA device"
    return Device("gpu", cp, index, f"GPU {index} ({name})")


def _probe_gpu_libraries(cp):
    """Compile one kernel with NVRTC and run one cuBLAS product, so that a missing library is one clear
    message before any work rather than a traceback in the first layer."""
    fix = CUDA_LIBRARIES_HELP
    try:
        kernel = cp.RawKernel(r'extern "C" __global__ void hpcnn_probe(float* x) { x[threadIdx.x] += 1.0f; }',
                              "hpcnn_probe")
        x = cp.zeros(32, dtype=cp.float32)
        kernel((1,), (32,), (x,))
    except Exception as e:
        raise DeviceUnavailable(f"device \"gpu\": CuPy cannot compile kernels with NVRTC "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {fix}") from None
    try:
        a = cp.ones((4, 4), dtype=cp.float32)
        cp.matmul(a, a)
        cp.cuda.get_current_stream().synchronize()
    except Exception as e:
        raise DeviceUnavailable(f"device \"gpu\": CuPy cannot run cuBLAS "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {fix}") from None


def open_device(name, environ=None):
    """The Device called `name` (one of DEVICES); "gpu" also makes this rank's GPU current.

    Raises DeviceUnavailable (one line: what is missing and how to get it) when "gpu" cannot work here.
    """
    if name == "cpu":
        return Device("cpu", np)
    if name == "emulated-gpu":
        return Device("emulated-gpu", emulated, None, "emulated-gpu (CPU kernels behind a host round trip)")
    if name == "gpu":
        return _gpu_device(os.environ if environ is None else environ)
    raise ValueError(f"unknown device {name!r}: expected one of {', '.join(DEVICES)}")


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
        cp = _cupy()
        if cp is None:
            raise DeviceUnavailable("select_gpu_for_rank: CuPy is not installed")
        device_count = cp.cuda.runtime.getDeviceCount()
    if device_count < 1:
        raise RuntimeError("select_gpu_for_rank: no CUDA device is visible to this process")
    index = node_local_rank(environ) % device_count
    if use:
        cp.cuda.Device(index).use()
    return index
