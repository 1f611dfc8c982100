"""Kernel timings for the calibration: sampled local shapes of every operation, timed alone and on every rank at once."""
import math
import time

import numpy as np

from .. import kernels
from perfmodel.machine import OPERATIONS, operation_features

__all__ = ["sample_shapes", "time_call", "kernel_phase"]


def _zoo_shapes(op):
    """Local shapes of the zoo's layers (meshnet, resnet18 small input, cosmoflow, unet2d) at a few batch and
    block sizes: half of the sampled shapes come from here, so the tables cover the layers CNNs have."""
    from perfmodel.layers import iter_layers, model_chain
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


def time_call(run, min_seconds=0.02, max_reps=20):
    """Median seconds of one call, repeated until `min_seconds` have passed (at least 3 times)."""
    run()                                  # warm: numba compilation, first-touch pages
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < max_reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def kernel_phase(comm, budget, rng, bar):
    rank, size = comm.rank, comm.size
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
            go = comm.allreduce_scalar(int(time.perf_counter() - t_op < op_budget or len(rows) < 4), "min")
            if not go:
                break
            run = _arrays(op, shape, rng)
            comm.barrier()
            alone = time_call(run) if rank == 0 else 0.0
            comm.barrier()
            if size > 1 and i % 3 == 0:
                busy = comm.allreduce_scalar(time_call(run), "max")
                if rank == 0 and alone > 0:
                    ratios.append(busy / alone)
            alone = comm.allreduce_scalar(alone, "max")
            keys = {k: shape[k] for k in ("n", "c", "k", "in_spatial", "kernel", "out_spatial", "m", "gemm_k",
                                          "gemm_n", "nbytes") if k in shape}
            feats = operation_features(op, **keys)
            rows.append((feats, alone))
        if bar is not None:
            bar.update(min(round(time.perf_counter() - t_op, 1), bar.total * 0.95 - bar.n))
        tables[op] = rows
    slowdown = float(np.median(ratios)) if ratios else 1.0
    return tables, slowdown
