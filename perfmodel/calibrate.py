"""The microbenchmarks behind `hpcnn calibrate`: kernels over sampled shapes, ping-pong, allreduce, all-to-all.

Run on every rank of a communicator (`mpiexec -n P hpcnn calibrate -o PROFILE.json`). Kernels are
timed on rank 0 alone while the others wait (the fit), and, with P > 1, every few shapes with
every rank running the same kernel at once: the median ratio is the profile's
`concurrency_slowdown` (cores of one node share memory bandwidth). Each kernel model is fitted by
non-negative least squares on relative error (t = fixed + flops*a + bytes*b [+ lowered*c]
[+ thin*d] [+ weights*e]) and keeps its samples as a table for the local correction (see `perfmodel.machine`).
The fit rejects inflated samples (`fit_robust`): on a machine whose cores are shared, a timed
call whose process was descheduled reads whole scheduler time slices (4, 8, 16 ... ms) instead of
its kernel time; such a sample is marked ``"outlier": true`` in the table and ignored by the fit
and the correction. `refit_profile` redoes the fits of a stored profile from its tables. Point-to-point:
ping-pong between ranks 0 and 1 (alpha = half the small-message round trip, beta from the
large-message slope); allreduce and all-to-all: sweeps over sizes at P ranks, kept as measured
tables. With one rank there are no messages to time: the links are then estimated from the
memory-copy bandwidth and say so in their source. Layer calls (`measure_layer_calls`): every
layer kind's distributed layer is timed on one rank, forward and backward, on a tiny and a large
shape; what the kernel models do not explain is the per-call term of the profile (see
`perfmodel.machine`).
"""
import math
import os
import platform
import socket
import time

import numpy as np

from hpcnn import kernels
from hpcnn.dist import comm as _comm

from .machine import FORMAT, OPERATIONS, VERSION, MachineProfile, operation_features, row_features

__all__ = ["calibrate", "sample_shapes", "fit_linear", "fit_robust", "refit_profile", "measure_layer_calls",
           "measure_fresh_memory", "FRESH_MEMORY_THRESHOLD"]

_FEATURES = {op: ("fixed", "flops", "bytes", "lowered", "thin", "weights") if op.startswith("conv_") else
             ("fixed", "flops", "bytes", "thin") if op == "gemm" else ("fixed", "flops", "bytes") for op in OPERATIONS}


def _zoo_shapes(op):
    """Local shapes of the zoo's layers (meshnet, resnet18 small input, cosmoflow, unet2d) at a few batch and
    block sizes: half of the sampled shapes come from here, so the tables cover the layers CNNs have."""
    from .layers import iter_layers, model_chain
    cases = [("meshnet", (18, 256, 256)), ("meshnet", (18, 512, 512)), ("resnet18", (3, 32, 32)),
             ("cosmoflow", (4, 32, 32, 32)), ("cosmoflow", (4, 16, 16, 16)), ("unet2d", (1, 128, 128))]
    out = []
    for name, shape in cases:
        opts = {"small_input": True} if name == "resnet18" else {}
        try:
            _, chain = model_chain(name, shape, 1, **opts)
        except ValueError:
            continue
        for layer in iter_layers(chain):
            for n in (1, 2, 4):
                for split in (1, 2):
                    spatial = list(layer.in_shape[2:])
                    if len(spatial) == 0:
                        continue
                    spatial[0] = -(-spatial[0] // split)
                    if op.startswith("conv_") and layer.kind == "conv":
                        g = layer.geometry
                        sp = tuple(spatial)
                        out.append(dict(n=n, c=layer.in_shape[1], k=layer.out_shape[1], in_spatial=sp, kernel=g.kernel,
                                        out_spatial=g.output_shape(sp), stride=g.stride, dilation=g.dilation,
                                        padding=g.padding))
                    elif op.startswith("pool_") and layer.kind in ("maxpool", "avgpool"):
                        g = layer.geometry
                        sp = tuple(spatial)
                        out.append(dict(n=n, c=layer.in_shape[1], in_spatial=sp, kernel=g.kernel,
                                        out_spatial=g.output_shape(sp), stride=g.stride, padding=g.padding,
                                        kind=layer.kind[:3]))
                    elif (op.startswith("batchnorm_") and layer.kind == "batchnorm") or \
                            (op == "elementwise" and layer.kind in ("relu", "leaky_relu")):
                        out.append(dict(n=n, c=layer.in_shape[1], in_spatial=tuple(spatial)))
    return [s for s in out if math.prod(s["in_spatial"]) * s["n"] * s["c"] <= 3e7]


def _rng(seed):
    return np.random.default_rng(seed)


def sample_shapes(op, rng, count):
    """`count` random local shapes for `op` (keywords of `operation_features` plus geometry), from the
    space CNN layers live in: 2-D and 3-D, 1-256 channels, kernels 1-7, strides 1-2, dilations 1-4."""
    out = []
    chans = [1, 2, 3, 4, 8, 16, 18, 24, 32, 48, 64, 96, 128, 256]
    while len(out) < count:
        nd = 3 if rng.random() < 0.3 else 2
        n = int(rng.choice([1, 1, 2, 4, 8]))
        side = int(rng.choice([4, 6, 8, 12, 16, 24, 32] if nd == 3 else [4, 7, 8, 14, 16, 28, 32, 56, 64, 96, 128,
                                                                          192, 256, 384, 512]))
        sides = tuple(max(2, int(side * rng.choice([1.0, 1.0, 0.5, 0.75]))) for _ in range(nd))
        c = int(rng.choice(chans))
        if op.startswith("conv_"):
            k = int(rng.choice(chans))
            r = int(rng.choice([1, 2, 3, 3, 3, 5, 7] if nd == 2 else [1, 2, 3, 3]))
            stride = 2 if (rng.random() < 0.2 and r > 1) else 1
            dil = int(rng.choice([1, 1, 1, 2, 4])) if stride == 1 else 1
            span = dil * (r - 1) + 1
            if any(s < span for s in sides):
                continue
            pad = (dil * (r - 1)) // 2
            out_sp = tuple((s + 2 * pad - span) // stride + 1 for s in sides)
            shape = dict(n=n, c=c, k=k, in_spatial=sides, kernel=(r,) * nd, out_spatial=out_sp,
                         stride=stride, dilation=dil, padding=pad)
            flops = operation_features(op, **{key: shape[key] for key in
                                              ("n", "c", "k", "in_spatial", "kernel", "out_spatial")})["flops"]
            if not 1e5 <= flops <= 4e9:
                continue
        elif op.startswith("pool_"):
            r = int(rng.choice([2, 2, 3]))
            stride = 2
            pad = 1 if r == 3 and rng.random() < 0.5 else 0
            out_sp = tuple((s + 2 * pad - r) // stride + 1 for s in sides)
            if any(o < 1 for o in out_sp):
                continue
            shape = dict(n=n, c=c, in_spatial=sides, kernel=(r,) * nd, out_spatial=out_sp, stride=stride,
                         padding=pad, kind="max" if rng.random() < 0.7 else "avg")
        elif op == "gemm":
            shape = dict(m=int(rng.choice([1, 2, 4, 8, 16, 32, 64])), gemm_k=int(rng.choice([16, 64, 256, 512, 2048,
                                                                                               8192])),
                         gemm_n=int(rng.choice([2, 4, 10, 64, 128, 1000])))
        elif op == "copy":
            shape = dict(nbytes=int(4 * n * c * math.prod(sides)))
        else:
            shape = dict(n=n, c=c, in_spatial=sides)
        if op != "gemm" and op != "copy":
            elems = n * c * math.prod(sides)
            if elems > 3e7 or elems < 16:
                continue
        elif op == "copy" and not 64 <= shape["nbytes"] <= 1.2e8:
            continue
        out.append(shape)
    return out


def _arrays(op, shape, rng):
    """Inputs for one call and the callable that runs it."""
    f32 = np.float32
    if op.startswith("conv_"):
        n, c, k = shape["n"], shape["c"], shape["k"]
        x = rng.standard_normal((n, c) + shape["in_spatial"], dtype=f32)
        w = rng.standard_normal((k, c) + shape["kernel"], dtype=f32)
        dy = rng.standard_normal((n, k) + shape["out_spatial"], dtype=f32)
        geo = dict(stride=shape["stride"], padding=shape["padding"], dilation=shape["dilation"])
        if op == "conv_forward":
            return lambda: kernels.conv_forward(x, w, None, **geo)
        if op == "conv_backward_data":
            return lambda: kernels.conv_backward_data(dy, w, shape["in_spatial"], **geo)
        return lambda: kernels.conv_backward_filter(x, dy, shape["kernel"], **geo)
    if op.startswith("pool_"):
        x = rng.standard_normal((shape["n"], shape["c"]) + shape["in_spatial"], dtype=f32)
        r, s, p = shape["kernel"], shape["stride"], shape["padding"]
        if shape["kind"] == "max":
            y, arg = kernels.maxpool_forward(x, r, s, p)
            if op == "pool_forward":
                return lambda: kernels.maxpool_forward(x, r, s, p)
            dy = np.ones_like(y)
            return lambda: kernels.maxpool_backward(dy, arg, shape["in_spatial"])
        if op == "pool_forward":
            return lambda: kernels.avgpool_forward(x, r, s, p)
        dy = np.ones_like(kernels.avgpool_forward(x, r, s, p))
        return lambda: kernels.avgpool_backward(dy, shape["in_spatial"], r, s, p)
    if op.startswith("batchnorm_"):
        x = rng.standard_normal((shape["n"], shape["c"]) + tuple(shape["in_spatial"]), dtype=f32)
        c = shape["c"]
        mean = np.zeros(c, f32)
        inv = np.ones(c, f32)
        gamma = np.ones(c, f32)
        beta = np.zeros(c, f32)
        count = x.size // c
        if op == "batchnorm_forward":
            def run():
                s = kernels.channel_sum(x)
                kernels.channel_centered_sumsq(x, (s / count).astype(f32))
                return kernels.batchnorm_apply(x, mean, inv, gamma, beta)
            return run
        dy = np.ones_like(x)

        def run():
            a, b = kernels.batchnorm_backward_reduce(dy, x, mean, inv)
            return kernels.batchnorm_backward_apply(dy, x, mean, inv, gamma, a, b, count)
        return run
    if op == "elementwise":
        x = rng.standard_normal((shape["n"], shape["c"]) + tuple(shape["in_spatial"]), dtype=f32)
        return lambda: kernels.relu_forward(x)
    if op == "copy":
        src = np.ones(shape["nbytes"] // 4, f32)
        dst = np.empty_like(src)
        return lambda: np.copyto(dst, src)
    if op == "gemm":
        a = rng.standard_normal((shape["m"], shape["gemm_k"]), dtype=f32)
        b = rng.standard_normal((shape["gemm_n"], shape["gemm_k"]), dtype=f32)
        return lambda: a @ b.T
    raise ValueError(op)


def _time_call(run, min_seconds=0.02, max_reps=20):
    """Median seconds of one call, repeated until `min_seconds` have passed (at least 3 times)."""
    run()                                  # warm: numba compilation, first-touch pages
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < max_reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def fit_linear(rows, names):
    """Non-negative coefficients for t = sum coef_i * feature_i minimizing the relative error.

    rows: [(features dict, seconds)]. Returns ({name: coef}, relative RMS error, median |rel. error|).
    """
    from scipy.optimize import nnls
    a = np.array([[1.0 if n == "fixed" else f.get(n, 0.0) for n in names] for f, _ in rows])
    t = np.array([s for _, s in rows])
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((a / scale) / t[:, None], np.ones(len(t)))
    coef = coef / scale
    rel = a @ coef / t - 1.0
    return dict(zip(names, coef.tolist())), float(np.sqrt(np.mean(rel ** 2))), float(np.median(np.abs(rel)))


# A sample slower than the fit by more than this (in natural-log units) beyond the typical scatter
# is taken as inflated: 2.5x at least, whatever the scatter ...
_OUTLIER_FLOOR = math.log(2.5)
# ... and by at least this many seconds: a descheduled process loses a good part of a scheduler time
# slice (4 ms at 250 Hz), so a fast kernel that is merely badly fitted is not rejected.
_OUTLIER_SECONDS = 1e-3


def fit_robust(rows, names, rounds=10):
    """`fit_linear` that rejects inflated samples.

    Only slow outliers are rejected (a descheduled process makes a call slower, never faster):
    a sample whose log(measured / fitted) exceeds the median of the kept samples by more than
    max(3 robust standard deviations (1.4826 MAD), log 2.5) and whose excess is at least 1 ms
    is dropped and the fit redone, until nothing changes. Returns (coef, relative RMS, median |rel. error| over the kept samples, a
    boolean list: True where the sample was rejected).
    """
    keep = np.ones(len(rows), bool)
    names = tuple(names)
    a = np.array([[1.0 if n == "fixed" else f.get(n, 0.0) for n in names] for f, _ in rows])
    t = np.array([s for _, s in rows])
    for _ in range(rounds):
        coef, rms, med = fit_linear([r for r, k in zip(rows, keep) if k], names)
        fitted = a @ np.array([coef[n] for n in names])
        r = np.log(np.maximum(t, 1e-12) / np.maximum(fitted, 1e-12))
        centre = float(np.median(r[keep]))
        spread = 1.4826 * float(np.median(np.abs(r[keep] - centre)))
        new = (r <= centre + max(3.0 * spread, _OUTLIER_FLOOR)) | (t - fitted < _OUTLIER_SECONDS)
        if (new == keep).all() or new.sum() < len(names) + 2:
            break
        keep = new
    return coef, rms, med, (~keep).tolist()


def refit_profile(doc):
    """Redo every kernel fit of a profile document from its stored tables (in place), with outlier
    rejection; the coefficients then cite the source "refit" (which names the measurement they come
    from). Returns {op: (samples, rejected)}."""
    out = {}
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for op in OPERATIONS:
        spec = doc["compute"][op]
        table = spec.get("table")
        if not table or not table.get("rows") or spec.get("form") != "linear":
            continue
        rows = [(row_features(op, row), float(row["seconds"])) for row in table["rows"]]
        measured = spec.get("source", table.get("source"))
        src = f"refit-{measured}"
        doc["sources"][src] = (f"refitted at {when} by perfmodel.calibrate.refit_profile from the samples stored in "
                               f"this profile (source {measured!r}), rejecting samples inflated by a descheduled "
                               f"process (see fit_robust)")
        coef, rms, med, outlier = fit_robust(rows, _FEATURES[op])
        spec["coef"] = {k: {"value": v, "source": src} for k, v in coef.items()}
        spec["fit"] = {"samples": len(rows), "rejected": int(sum(outlier)), "relative_rms": rms,
                       "median_abs_relative": med}
        for row, bad in zip(table["rows"], outlier):
            row.pop("outlier", None)
            if bad:
                row["outlier"] = True
        out[op] = (len(rows), int(sum(outlier)))
    return out


def _progress(total, enabled, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="s", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")


def _kernel_phase(comm, budget, rng, bar):
    rank, size = comm.Get_rank(), comm.Get_size()
    weights = {"conv_forward": 1.6, "conv_backward_data": 1.6, "conv_backward_filter": 1.6}
    total_w = sum(weights.get(op, 0.6) for op in OPERATIONS)
    tables, ratios = {}, []
    for op in OPERATIONS:
        op_budget = budget * weights.get(op, 0.6) / total_w
        zoo = _zoo_shapes(op)
        rng.shuffle(zoo)
        shapes = sample_shapes(op, rng, 400)
        if zoo:
            mixed = []
            for a, b in zip(zoo, shapes):
                mixed += [a, b]
            shapes = mixed + shapes[len(zoo):]
        rows = []
        t_op = time.perf_counter()
        for i, shape in enumerate(shapes):
            # rank 0 decides when the op's budget is spent, so that every rank runs the same shapes
            go = _comm.allreduce_scalar(comm, int(time.perf_counter() - t_op < op_budget or len(rows) < 4), "min")
            if not go:
                break
            run = _arrays(op, shape, rng)
            _comm.barrier(comm)
            alone = _time_call(run) if rank == 0 else 0.0
            _comm.barrier(comm)
            if size > 1 and i % 3 == 0:
                busy = _comm.allreduce_scalar(comm, _time_call(run), "max")
                if rank == 0 and alone > 0:
                    ratios.append(busy / alone)
            alone = _comm.allreduce_scalar(comm, alone, "max")
            keys = {k: shape[k] for k in ("n", "c", "k", "in_spatial", "kernel", "out_spatial", "m", "gemm_k",
                                          "gemm_n", "nbytes") if k in shape}
            feats = operation_features(op, **keys)
            rows.append((feats, alone))
        if bar is not None:
            bar.update(min(round(time.perf_counter() - t_op, 1), bar.total * 0.95 - bar.n))
        tables[op] = rows
    slowdown = float(np.median(ratios)) if ratios else 1.0
    return tables, slowdown


def _pingpong(comm, sizes, reps=20):
    rank = comm.Get_rank()
    out = []
    for nbytes in sizes:
        buf = np.zeros(max(nbytes, 1), np.uint8)
        _comm.barrier(comm)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            if rank == 0:
                _comm.wait_all([_comm.isend(comm, buf, 1, 7)])
                _comm.wait_all([_comm.irecv(comm, buf, 1, 8)])
            elif rank == 1:
                _comm.wait_all([_comm.irecv(comm, buf, 0, 7)])
                _comm.wait_all([_comm.isend(comm, buf, 0, 8)])
            times.append((time.perf_counter() - t0) / 2)
        out.append((nbytes, float(np.median(times))))
    return out


def _sweep(comm, sizes, collective, reps=10):
    size = comm.Get_size()
    out = []
    for nbytes in sizes:
        if collective == "allreduce":
            buf = np.ones(max(nbytes // 4, 1), np.float32)

            def run():
                _comm.allreduce_(comm, buf)
        else:
            per = max(nbytes // 4 // size, 1)
            send = np.ones(per * size, np.float32)
            recv = np.empty_like(send)
            counts = [per] * size

            def run():
                _comm.alltoallv(comm, send, counts, recv, counts)
        run()
        times = []
        for _ in range(reps):
            _comm.barrier(comm)
            t0 = time.perf_counter()
            run()
            times.append(_comm.allreduce_scalar(comm, time.perf_counter() - t0, "max"))
        out.append((max(nbytes, 4), float(np.median(times))))
    return out


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


def _time_layer(layer, shape, comm, reps):
    """Median (forward, backward) seconds of `layer`'s distributed layer on one rank for input `shape`."""
    from hpcnn import dist, nn
    from hpcnn.dist.layers import _Container
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    grid = (1,) * max(len(shape) - 1, 3)
    dm = dist.distribute(nn.Sequential(layer), dist.Distribution(comm, grid))
    leaf = next(m for m in dm.root.modules() if not isinstance(m, _Container))
    xt = dist.scatter(x, dist.Distribution(comm, grid))
    fwd, bwd = [], []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        y = leaf.forward(xt)
        t1 = time.perf_counter()
        g = y.like(np.ones_like(y.local))       # the gradient's allocation is not the layer's
        t2 = time.perf_counter()
        leaf.backward(g)
        t3 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
    return float(np.median(fwd)), float(np.median(bwd))


def measure_layer_calls(comm, machine, source, reps=15):
    """The "layer_calls" section of a profile: per layer kind and direction, fixed seconds and seconds
    per byte (local input + output + parameters) that a distributed layer call costs beyond the kernel
    models of `machine` (a profile without layer-call terms). Timed on rank 0 of `comm` alone (the
    others wait); every term cites `source`."""
    from hpcnn import nn
    from .costs import _kernel_cost, _local_numel
    from .layers import walk
    rank = comm.Get_rank()
    alone = _comm.split(comm, rank, 0)
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
                kc = _kernel_cost(spec, grid, machine)
                f, b = _time_layer(layer, shape, alone, reps if large is None or shape == tiny else max(reps // 3, 3))
                nbytes = (_local_numel(spec.in_shape, grid) + _local_numel(spec.out_shape, grid)
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
    _comm.barrier(comm)
    return {"source": source, "kinds": kinds}


# glibc's malloc maps requests above its mmap threshold from the kernel and unmaps them on free; the
# threshold adapts to freed sizes but never beyond DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit).
FRESH_MEMORY_THRESHOLD = 32 << 20
GLIBC_MMAP_SOURCE = ("glibc mallopt(3), M_MMAP_THRESHOLD: the dynamic mmap threshold never exceeds "
                     "DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit systems; larger requests are always mapped")


def measure_fresh_memory(source, reps=7):
    """The "fresh_memory" section of a profile: seconds per byte of allocating and first writing an array
    above the mmap threshold, beyond writing one that exists (median over 48 and 96 MiB arrays)."""
    rates = []
    for mib in (48, 96):
        n = (mib << 20) // 4
        kept = np.empty(n, np.float32)
        kept.fill(1.0)
        fresh, reuse = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            a = np.empty(n, np.float32)
            a.fill(1.0)
            fresh.append(time.perf_counter() - t0)
            del a
            t0 = time.perf_counter()
            kept.fill(1.0)
            reuse.append(time.perf_counter() - t0)
        rates.append(max(float(np.median(fresh)) - float(np.median(reuse)), 0.0) / (n * 4))
    return {"per_byte": {"value": float(np.median(rates)), "source": source},
            "threshold_bytes": {"value": FRESH_MEMORY_THRESHOLD, "source": "glibc-mmap-threshold"}}


def calibrate(comm, budget=600.0, quick=False, progress=True, seed=0, name=None):
    """Measure this machine on every rank of `comm`; returns a MachineProfile (only rank 0's is complete)."""
    if quick:
        budget = min(budget, 120.0)
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    host = socket.gethostname()
    hosts = _comm.allgather_object(comm, host)
    rng = _rng(seed + 0)
    bar = _progress(round(budget), progress and rank == 0, "hpcnn calibrate")
    kernel_budget = budget * (0.8 if size > 1 else 0.95)
    tables, slowdown = _kernel_phase(comm, kernel_budget, rng, bar)

    comm_budget_start = time.perf_counter()
    max_bytes = 1 << (22 if quick else 25)
    sizes = [8 << (2 * i) for i in range(12) if (8 << (2 * i)) <= max_bytes]
    pingpong = _pingpong(comm, sizes) if size > 1 else []
    allreduce = _sweep(comm, sizes, "allreduce") if size > 1 else []
    alltoall = _sweep(comm, [s * size for s in sizes], "alltoall") if size > 1 else []
    if bar is not None:
        bar.update(max(bar.total - bar.n, 0))
        bar.close()

    src = "measured"
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sources = {src: f"measured on {host} ({cpu}, {os.cpu_count()} cores) at {when} by `hpcnn calibrate` with "
                    f"{size} rank(s), float32, one thread per rank; budget {budget:.0f} s; 1-minute load average "
                    f"{load:.1f} at the end (a load above the core count means other processes shared the cores "
                    f"and the times are inflated and noisy: rerun on a quiet machine)"}
    compute = {}
    for op in OPERATIONS:
        names = _FEATURES[op]
        coef, rms, med, outlier = fit_robust(tables[op], names)
        compute[op] = {
            "form": "linear", "source": src,
            "coef": {k: {"value": v, "source": src} for k, v in coef.items()},
            "fit": {"samples": len(tables[op]), "rejected": int(sum(outlier)), "relative_rms": rms,
                    "median_abs_relative": med},
            "table": {"source": src, "rows": [
                {"dims": list(f["dims"]), "flops": f["flops"], "bytes": f["bytes"],
                 **({k: f[k] for k in ("lowered", "thin", "weights") if k in f}), "seconds": t,
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
    doc = {
        "format": FORMAT, "version": VERSION,
        "name": name or f"{host}-cpu",
        "description": f"CPU node {host}: {per_node} cores, one rank per core, numpy + numba kernels, MPI over shared "
                       f"memory; measured by hpcnn calibrate",
        "backend": "cpu", "dtype": "float32",
        "sources": sources,
        "ranks_per_node": {"value": per_node, "source": src},
        "memory_per_rank": {"value": float(mem_total // per_node), "source": src},
        "concurrency_slowdown": {"value": slowdown, "source": src},
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
        "overlap": {"gradient_allreduce": {"value": 0.0, "source": "cpu-overlap"},
                    "halo": {"value": 0.0, "source": "cpu-overlap"}},
    }
    sources["mpich-defaults"] = ("MPICH's default algorithm thresholds (MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE = 2048, "
                                 "MPIR_CVAR_ALLTOALL_SHORT_MSG_SIZE = 256 bytes); used only for rank counts "
                                 "without a measured sweep")
    sources["cpu-overlap"] = ("assumption of hpcnn: on CPU ranks without an MPI progress thread, non-blocking "
                              "messages advance only inside MPI calls, so no overlap is counted")
    sources["glibc-mmap-threshold"] = GLIBC_MMAP_SOURCE
    doc["fresh_memory"] = measure_fresh_memory(src)
    doc["layer_calls"] = measure_layer_calls(comm, MachineProfile(doc), src)
    doc["calibration_seconds"] = {"value": time.perf_counter() - t_start, "source": src}
    return MachineProfile(doc)
