"""`hpcnn calibrate`: the microbenchmarks that measure a machine profile: kernels over sampled shapes, ping-pong, allreduce, all-to-all.

Run on every rank of a Communicator (`mpiexec -n P hpcnn calibrate -o PROFILE.json`). Kernels are
timed on rank 0 alone while the others wait (the fit), in CPU time of the rank's process on the CPU
(`kernels.kernel_clock`: a dedicated core's time, which other processes sharing the machine do not
inflate; messages are timed on the wall clock), and, with P > 1, every few shapes with
every rank running the same kernel at once, in wall time, the others asleep while rank 0 runs alone
(`kernels._concurrency`): the median ratio is the profile's `concurrency_slowdown` (cores of one node
share memory bandwidth, and a virtual machine's cores may share physical ones). With P > 1, batch-norm kernels run on every
rank at once, each followed by a small allreduce: the time ranks wait there for the slowest, as a fraction of
the kernel time, is the profile's `sync_wait` (`network.sync_wait`). On a node of several cores, rank 0 alone
times sampled calls of each operation on one thread and on every core, the others asleep: the profile's
`thread_speedup`, which prices runs with more threads per rank (`thread_scaling`). Each kernel model is fitted by
non-negative least squares on relative error (t = fixed + flops*a + bytes*b [+ lowered*c]
[+ thin*d] [+ weights*e]) and keeps its samples as a table for the local correction (see `perfmodel.machine`).
The fit rejects inflated samples (`fit_robust`): on a machine whose cores are shared, a timed
call whose process was descheduled reads whole scheduler time slices (4, 8, 16 ... ms) instead of
its kernel time; such a sample is marked ``"outlier": true`` in the table and ignored by the fit
and the correction. `refit_profile` redoes the fits of a stored profile from its tables. Point-to-point:
ping-pong between ranks 0 and 1 (alpha = half the small-message round trip, beta from the
large-message slope); allreduce and all-to-all: sweeps over sizes at P ranks, kept as measured
tables; each message time is the lower quartile of its repetitions (`network._undisturbed`). With one rank there are no messages to time: the links are then estimated from the
memory-copy bandwidth and say so in their source. Layer calls (`measure_layer_calls`): every
layer kind's distributed layer is timed on one rank, forward and backward, on a tiny and a large
shape; what the kernel models do not explain is the per-call term of the profile (see
`perfmodel.machine`). Then seeded random networks train (`context`): on rank 0 alone, whose layers refit
the per-call terms of the kinds they hold enough of; on every rank at once, each its own copy, whose
slowest rank gives the concurrency slowdown per operation in place of the kernel phase's; and split
over every rank. What the profile then still misses, layer by layer, on one rank and on several, is
its "layers_in_context" correction (`perfmodel.context`).

On a GPU (`device` = open_device("gpu"), `hpcnn calibrate --device gpu`) the same phases run on device
arrays, every call synchronized before its time is taken, the messages staged as a run stages them;
the profile's backend is "gpu", its memory the GPU's, and it gains a "staging" section: the
device-to-host and host-to-device copy latency and bandwidth (`hpcnn.calibrate.staging`).
"""
import math
import os
import platform
import socket
import time

import numpy as np

from perfmodel.fit import FEATURES, fit_robust
from perfmodel.machine import FORMAT, OPERATIONS, VERSION, MachineProfile
from perfmodel.provenance import measured_on

from ..backend import open_device
from ..threads import available_cores
from .kernels import kernel_call, kernel_clock, kernel_phase
from .shapes import sample_shapes
from .context import concurrency_in_context, context_section, fit_layer_calls, measure_layers_in_context
from .layers import GLIBC_MMAP_SOURCE, measure_fresh_memory, measure_layer_calls
from .network import pingpong as measure_pingpong, sweep, sync_wait as measure_sync_wait
from .staging import measure_staging, staging_section
from .thread_scaling import measure_thread_speedup

__all__ = ["calibrate", "sample_shapes", "measure_layer_calls", "measure_fresh_memory", "QUICK_BUDGET"]

# The measurement budget of `--quick` (seconds): with the messages and layer calls, under 2 minutes in all.
QUICK_BUDGET = 75.0
# The random networks trained for the layer calls in context (`context`): this share of the budget, at most
# CONTEXT_SECONDS (22 s with --quick, 60 s in a full calibration)
CONTEXT_SHARE, CONTEXT_SECONDS = 0.3, 60.0


def _rng(seed):
    return np.random.default_rng(seed)


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="s", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")


def calibrate(comm, budget=600.0, quick=False, progress=True, seed=0, name=None, threads=1, device=None):
    """Measure this machine on every rank of `comm` (a Communicator) on `device` (default: the CPU), each rank
    running `threads` BLAS/numba threads (the caller sets them; they are recorded in the profile); returns a
    MachineProfile (only rank 0's is complete)."""
    device = device or open_device("cpu")
    gpu = device.name == "gpu"
    if quick:
        budget = min(budget, QUICK_BUDGET)
    rank, size = comm.rank, comm.size
    t_start = time.perf_counter()
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    host = socket.gethostname()
    hosts = comm.allgather_object(host)
    rng = _rng(seed + 0)
    bar = _progress(round(budget), progress and rank == 0, "hpcnn calibrate")
    kernel_budget = budget * (0.6 if size > 1 else 0.7)
    tables, slowdown = kernel_phase(comm, kernel_budget, rng, bar, device)
    node_cores = comm.bcast_object(available_cores())
    speedup = measure_thread_speedup(comm, _rng(seed + 5), device, node_cores, calls=3 if quick else 6)

    max_bytes = 1 << (22 if quick else 25)
    sizes = [8 << (2 * i) for i in range(12) if (8 << (2 * i)) <= max_bytes]
    # every message waits for all its ranks to be on a core: on a loaded machine each repetition costs time
    # slices, so --quick times every other size (two of them large, for beta) with fewer repetitions
    if quick:
        sizes = sizes[1::2]
    reps = dict(pingpong=8, sweep=4, wait=3) if quick else dict(pingpong=20, sweep=10, wait=7)
    pingpong = measure_pingpong(comm, sizes, device.xp, reps["pingpong"]) if size > 1 else []
    allreduce = sweep(comm, sizes, "allreduce", device.xp, reps["sweep"]) if size > 1 else []
    alltoall = sweep(comm, [s * size for s in sizes], "alltoall", device.xp, reps["sweep"]) if size > 1 else []
    staged = measure_staging(device, sizes + [1 << 26]) if gpu and rank == 0 else None
    bn_shapes = [shape for shape in sample_shapes("batchnorm_forward", rng, 60)
                 if shape["n"] * shape["c"] * math.prod(shape["in_spatial"]) <= 1 << 20][:6 if quick else 12]
    wait = measure_sync_wait(comm, [kernel_call("batchnorm_forward", shape, rng, device) for shape in bn_shapes],
                             device.xp, reps["wait"], clock=kernel_clock(device))
    if bar is not None:
        bar.update(max(bar.total - bar.n, 0))
        bar.close()

    src = "measured"
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    what = f"{device.label}, " if gpu else ""
    sources = {src: f"measured on {host} ({what}{cpu}, {os.cpu_count()} cores) at {when} by `hpcnn calibrate` "
                    f"with {size} rank(s) on {device.name}, float32, {threads} thread(s) per rank; budget "
                    f"{budget:.0f} s; kernel and layer times "
                    f"{'wall' if gpu else 'CPU time of the rank (what a dedicated core takes)'}; 1-minute load average "
                    f"{load:.1f} at the end (a load above the core count means other processes shared the cores "
                    f"and the times are inflated and noisy: rerun on a quiet machine)"}
    compute = {}
    for op in OPERATIONS:
        names = FEATURES[op]
        coef, rms, med, outlier = fit_robust(tables[op], names)
        compute[op] = {
            "form": "linear", "source": src,
            "coef": {k: {"value": v, "source": src} for k, v in coef.items()},
            "fit": {"samples": len(tables[op]), "rejected": int(sum(outlier)), "relative_rms": rms,
                    "median_abs_relative": med},
            "table": {"source": src, "rows": [
                {"dims": list(f["dims"]), "flops": f["flops"], "bytes": f["bytes"],
                 **({k: f[k] for k in ("lowered", "thin", "weights", "rows", "runs") if k in f}), "seconds": t,
                 **({"outlier": True} if bad else {})}
                for (f, t), bad in zip(tables[op], outlier)]},
        }
    copy_per_byte = compute["copy"]["coef"]["bytes"]["value"] or 1e-10
    if pingpong:
        small = [t for b, t in pingpong if b <= 1024]
        alpha = float(np.median(small))
        big = [(b, t) for b, t in pingpong if b >= 1 << 16]
        beta = float(np.polyfit([b for b, _ in big], [t for _, t in big], 1)[0]) if len(big) >= 2 else copy_per_byte
        beta = max(beta, 1e-13)
        link_src = src
    else:
        alpha, beta = 1e-6, copy_per_byte
        link_src = "estimated"
        sources[link_src] = ("estimated on one rank (no messages to time): beta = the measured memory-copy time per "
                             "byte, alpha = 1 microsecond (assumed); rerun with mpiexec -n 2 to measure")
    sources["no-second-node"] = ("this calibration ran on one node: the between-node link is copied from the "
                                 "same-node one (rerun `hpcnn calibrate` across nodes to measure it)")
    gamma = compute["elementwise"]["coef"]["bytes"]["value"]
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ranks_here = max(hosts.count(host), 1)
    per_node = max(os.cpu_count() or 1, ranks_here)
    if gpu:
        gpus = device.xp.cuda.runtime.getDeviceCount()
        per_node = max(ranks_here, 1)
        # ranks share the node's GPUs round robin: the memory of one GPU over the ranks on it
        mem_rank = device.xp.cuda.runtime.memGetInfo()[1] / max(-(-per_node // gpus), 1)
        description = (f"GPU node {host}: {gpus} x {device.label}, {per_node} rank(s), CuPy kernels (NVRTC, cuBLAS), "
                       f"MPI messages staged through pinned host memory; measured by hpcnn calibrate --device gpu")
    else:
        mem_rank = mem_total // per_node
        description = (f"CPU node {host}: {per_node} cores, one rank per core, numpy + numba kernels, MPI over "
                       f"shared memory; measured by hpcnn calibrate")
    overlap_src = "gpu-overlap" if gpu else "cpu-overlap"
    doc = {
        "format": FORMAT, "version": VERSION,
        "name": name or f"{host}-{device.name}",
        "description": description,
        "backend": "gpu" if gpu else "cpu", "dtype": "float32",
        "sources": sources,
        "ranks_per_node": {"value": per_node, "source": src},
        "memory_per_rank": {"value": float(mem_rank), "source": src},
        "concurrency_slowdown": {"value": slowdown["all"], "source": src},
        "concurrency_slowdown_by_op": {op: {"value": r, "source": src} for op, r in slowdown["by_op"].items()},
        "sync_wait": {"value": wait, "source": src},
        "compute": compute,
        "links": {"intra_node": {"alpha": {"value": alpha, "source": link_src},
                                 "beta": {"value": beta, "source": link_src},
                                 "pingpong": {"source": link_src, "rows": [[b, t] for b, t in pingpong]}},
                  "inter_node": {"alpha": {"value": alpha, "source": "no-second-node"},
                                 "beta": {"value": beta, "source": "no-second-node"}}},
        "collectives": {
            "allreduce": {"gamma": {"value": gamma, "source": src},
                          "small_bytes": {"value": 2048, "source": "mpich-defaults"},
                          "ring_bytes": {"value": 1 << 20, "source": "mpich-defaults"},
                          "measured": {"source": src, "ranks": {str(size): [[b, t] for b, t in allreduce]}
                                       if allreduce else {}}},
            "alltoall": {"small_bytes": {"value": 256, "source": "mpich-defaults"},
                         "measured": {"source": src, "ranks": {str(size): [[b, t] for b, t in alltoall]}
                                      if alltoall else {}}},
        },
        "overlap": {"gradient_allreduce": {"value": 0.0, "source": overlap_src},
                    "halo": {"value": 0.0, "source": overlap_src}},
    }
    sources["mpich-defaults"] = ("MPICH's default algorithm thresholds (MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE = 2048, "
                                 "MPIR_CVAR_ALLTOALL_SHORT_MSG_SIZE = 256 bytes); used only for rank counts "
                                 "without a measured sweep")
    sources["cpu-overlap"] = ("assumption of hpcnn: on CPU ranks without an MPI progress thread, non-blocking "
                              "messages advance only inside MPI calls, so no overlap is counted")
    sources["gpu-overlap"] = ("assumption of hpcnn calibrate, which does not measure overlap: none is counted (the "
                              "interior stream of a GPU convolution hides some of its halo exchange)")
    doc["measured_on"] = measured_on(size, threads, src, when)
    if speedup:
        doc["thread_speedup"] = {"threads": {"value": node_cores, "source": src},
                                 "by_op": {op: {"value": v, "source": src} for op, v in speedup.items()}}
    if gpu:
        if staged is not None:
            doc["staging"] = staging_section(staged, src)
    else:
        sources["glibc-mmap-threshold"] = GLIBC_MMAP_SOURCE
        doc["fresh_memory"] = measure_fresh_memory(src, reps=3 if quick else 7)
    doc["layer_calls"] = measure_layer_calls(comm, MachineProfile(doc), src, device, reps=7 if quick else 15)
    in_context = measure_layers_in_context(comm, MachineProfile(doc), device, _rng(seed + 7),
                                           budget=min(budget * CONTEXT_SHARE, CONTEXT_SECONDS))
    doc["layer_calls"]["kinds"].update(fit_layer_calls(in_context, src))
    if rank == 0:
        # the layers' slowdown with every rank busy: hundreds of layers in context, not a few kernels alone
        for op, r in concurrency_in_context(in_context).items():
            doc["concurrency_slowdown_by_op"][op] = {"value": r, "source": src}
        doc["layers_in_context"] = context_section(in_context, MachineProfile(doc), src)
    doc["calibration_seconds"] = {"value": time.perf_counter() - t_start, "source": src}
    return MachineProfile(doc)
