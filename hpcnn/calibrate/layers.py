"""Per-call layer overheads and page-fault costs for the calibration: what the kernel models do not explain."""
import time

import numpy as np

from perfmodel.costs import kernel_cost, local_numel
from perfmodel.layers import walk

from ..kernels.cpu._memory import mmap_threshold, release_free_pages
from .kernels import kernel_clock

__all__ = ["measure_layer_calls", "measure_fresh_memory", "GLIBC_MMAP_SOURCE"]


def _layer_cases():
    """kind -> (layer factory, tiny input shape, large input shape or None: no per-byte term).

    Convolutions get no per-byte term: their kernels' own fit already covers their data, and a
    large convolution's kernel-model error would be read as overhead."""
    from hpcnn import nn
    big = (2, 16, 256, 256)          # 8 MiB of float32: well beyond the caches
    return {
        "conv": (lambda: nn.Conv2d(8, 8, 3, padding=1, bias=False), (1, 8, 4, 4), None),
        "batchnorm": (lambda: nn.BatchNorm2d(16), (1, 16, 4, 4), big),
        "relu": (lambda: nn.ReLU(), (1, 16, 4, 4), big),
        "leaky_relu": (lambda: nn.LeakyReLU(0.01), (1, 16, 4, 4), big),
        "maxpool": (lambda: nn.MaxPool2d(2), (1, 16, 4, 4), big),
        "avgpool": (lambda: nn.AvgPool2d(2), (1, 16, 4, 4), big),
        "global_avgpool": (lambda: nn.GlobalAvgPool(), (1, 16, 4, 4), big),
        "flatten": (lambda: nn.Flatten(), (1, 16, 4, 4), big),
        "upsample": (lambda: nn.Upsample(2), (1, 16, 4, 4), (2, 16, 128, 128)),
        "linear": (lambda: nn.Linear(64, 16), (1, 64), (2, 4096, 256)),
    }


def _time_layer(layer, shape, comm, reps, device):
    """Median (forward, backward) seconds of `layer`'s distributed layer on one rank for input `shape`, on
    `device` (synchronized after each call), on the kernels' clock (`kernel_clock`)."""
    from .. import nn, parallel
    x = device.put(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    grid = (1,) * max(len(shape) - 1, 3)
    d = parallel.Distribution(comm, grid)
    dm = parallel.distribute(nn.Sequential(layer).to(device), d)
    leaf = dm.root.leaves()[0]
    xt = parallel.scatter(x, d)
    fwd, bwd = [], []
    clock = kernel_clock(device)
    for i in range(reps + 1):
        t0 = clock()
        y = leaf.forward(xt)
        device.synchronize()
        t1 = clock()
        g = y.like(device.xp.ones_like(y.local))       # the gradient's allocation is not the layer's
        device.synchronize()
        t2 = clock()
        leaf.backward(g)
        device.synchronize()
        t3 = clock()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
    return float(np.median(fwd)), float(np.median(bwd))


def measure_layer_calls(comm, machine, source, device, reps=15):
    """The "layer_calls" section of a profile: per layer kind and direction, fixed seconds and seconds
    per byte (local input + output + parameters) that a distributed layer call costs beyond the kernel
    models of `machine` (a profile without layer-call terms), on `device`. Timed on rank 0 of `comm` alone
    (the others wait); every term cites `source`."""
    from .. import nn
    rank = comm.rank
    alone = comm.split(rank, 0)
    kinds = {}
    if rank == 0:
        for kind, (factory, tiny, large) in _layer_cases().items():
            resid = []
            for shape in (tiny,) + ((large,) if large else ()):
                if kind == "linear" and len(shape) == 3:
                    layer, shape = nn.Linear(shape[1], shape[2]), shape[:2]
                else:
                    layer = factory()
                spec = walk(nn.Sequential(layer), shape)[0]
                grid = (1,) * max(len(shape) - 1, 3)
                kc = kernel_cost(spec, grid, machine)
                f, b = _time_layer(layer, shape, alone, reps if large is None or shape == tiny else max(reps // 3, 3),
                                   device)
                nbytes = (local_numel(spec.in_shape, grid) + local_numel(spec.out_shape, grid)
                          + spec.params) * machine.itemsize
                resid.append((nbytes, f - kc.forward, b - kc.backward))
            terms = {}
            for j, direction in ((1, "forward"), (2, "backward")):
                fixed = max(resid[0][j], 0.0)
                per_byte = max((resid[1][j] - fixed) / resid[1][0], 0.0) if len(resid) > 1 else 0.0
                terms[direction] = {"fixed": {"value": fixed, "source": source},
                                    "per_byte": {"value": per_byte, "source": source}}
            kinds[kind] = terms
        # 3-D layers run the same layer code as their 2-D kinds
    comm.barrier()
    return {"source": source, "kinds": kinds}


# glibc's malloc maps requests above its mmap threshold from the kernel and unmaps them on free; hpcnn's
# entry points raise that threshold (`hpcnn.kernels.cpu._memory`), so arrays below it reuse mapped pages.
GLIBC_MMAP_SOURCE = ("glibc mallopt(3), M_MMAP_THRESHOLD: requests above it are mapped on allocation and unmapped "
                     "on free; hpcnn sets it to 1 GiB (hpcnn.kernels.cpu._memory), else glibc's dynamic threshold "
                     "never exceeds DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit systems")


def measure_fresh_memory(source, reps=7):
    """The "fresh_memory" section of a profile: seconds per byte of allocating and first writing an array
    above the mmap threshold, beyond writing one that exists (median over 48 and 96 MiB arrays whose pages
    are fresh, malloc's free pages handed back before each), and that threshold: hpcnn's."""
    rates = [_fresh_rate((mib << 20) // 4, reps) for mib in (48, 96)]
    return {"per_byte": {"value": float(np.median(rates)), "source": source},
            "threshold_bytes": {"value": mmap_threshold(), "source": "glibc-mmap-threshold"}}


def _fresh_rate(n, reps):
    """Seconds per byte of allocating and filling n float32 beyond filling n that exist."""
    kept = np.empty(n, np.float32)
    kept.fill(1.0)
    fresh, reuse = [], []
    for _ in range(reps):
        release_free_pages()
        t0 = time.process_time()            # CPU time, as the kernels (page faults are system time)
        a = np.empty(n, np.float32)
        a.fill(1.0)
        fresh.append(time.process_time() - t0)
        del a
        t0 = time.process_time()
        kept.fill(1.0)
        reuse.append(time.process_time() - t0)
    return max(float(np.median(fresh)) - float(np.median(reuse)), 0.0) / (n * 4)
