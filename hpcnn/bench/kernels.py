"""Kernel timings: hpcnn's convolution, pooling and batch-norm against PyTorch, same machine, same threads.

Every operation is timed for hpcnn and for PyTorch in the same run, the two interleaved (one call
of each per round, after a warm-up call of each, a 20 ms pause before each timed call), and the
median of the rounds is reported. `--clock cpu` times each call by this process's CPU time
instead of the wall clock (one thread only): on a machine whose cores other programs share, it
leaves out the time that the process waited for a core. The
table gives milliseconds, the ratio hpcnn/PyTorch, GFLOP/s and the share of the float32 matmul
peak measured here at the same thread count (the faster of numpy's matmul and the BLAS hpcnn's kernels
call, which differ where the environment pins numpy's OpenBLAS to older kernels), then the geometric mean of the convolution ratios
(forward, backward-data and backward-filter each count once) and the worst of them.

    hpcnn bench kernels --threads 1 --json kernels.json
"""
import csv
import json
import math
import statistics
import sys
import time
from collections import namedtuple

import numpy as np

__all__ = ["add_arguments", "run", "ConvCase", "CONV_SUITE", "QUICK_CONV_SUITE", "conv_flops"]

ConvCase = namedtuple("ConvCase", "n c spatial k kernel stride padding")

CONV_SUITE = [
    ConvCase(8, 64, (128, 128), 64, 3, 1, 1),
    ConvCase(32, 128, (32, 32), 128, 3, 1, 1),
    ConvCase(1, 16, (1024, 1024), 16, 3, 1, 1),
    ConvCase(2, 3, (512, 512), 32, 7, 2, 3),
    ConvCase(8, 256, (14, 14), 256, 3, 1, 1),
    ConvCase(4, 1024, (14, 14), 256, 1, 1, 0),
    ConvCase(2, 16, (64, 64, 64), 16, 3, 1, 1),
]
QUICK_CONV_SUITE = [
    ConvCase(2, 8, (32, 32), 8, 3, 1, 1),
    ConvCase(1, 3, (64, 64), 8, 7, 2, 3),
    ConvCase(2, 64, (7, 7), 32, 1, 1, 0),
    ConvCase(1, 4, (8, 8, 8), 4, 3, 1, 1),
]
# Pooling and batch-norm input (N, C, H, W).
POOL_SHAPE = (8, 64, 128, 128)
QUICK_POOL_SHAPE = (2, 8, 32, 32)
BN_EPS = 1e-5
_PAUSE_S = 0.02

CONV_OPS = ("conv forward", "conv backward-data", "conv backward-filter")


def add_arguments(parser):
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="threads for BLAS (threadpoolctl), numba and PyTorch alike (default 1)")
    parser.add_argument("--repeat", type=int, default=None, metavar="R",
                        help="timed rounds per operation, median reported (default 5, 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds: a smoke test")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="cpu (default), or gpu: hpcnn's CuPy kernels against PyTorch on CUDA")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall (default), or cpu: this process's CPU time per call, for a machine whose cores "
                             "others share (--threads 1 only)")
    parser.add_argument("--json", metavar="FILE", help="write the rows and the summary as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write the rows as CSV")


def conv_flops(case):
    """2 * N * K * C * prod(kernel) * prod(output): the multiply-adds of any one of the three passes."""
    from ..geometry import WindowGeometry
    nd = len(case.spatial)
    geometry = WindowGeometry(nd, case.kernel, case.stride, case.padding)
    out = geometry.output_shape(case.spatial)
    return 2.0 * case.n * case.k * case.c * math.prod(geometry.kernel) * math.prod(out)


def _describe(case):
    shape = "x".join(map(str, (case.n, case.c) + tuple(case.spatial)))
    return f"{shape} -> {case.k} k{case.kernel} s{case.stride} p{case.padding}"


def _set_threads(threads):
    """One thread count for every pool in the process; returns what each now uses."""
    from ..threads import apply_threads
    used = apply_threads(threads)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(threads)
        used["torch"] = torch.get_num_threads()
    return used, torch


def _timed(call, clock=time.perf_counter):
    # Idle threads of the library timed before (PyTorch's OpenMP team, OpenBLAS's servers) spin for
    # a few ms after a call: a pause first lets them sleep, so that neither library is timed on
    # cores that the other still holds.
    time.sleep(_PAUSE_S)
    start = clock()
    call()
    return clock() - start


def _timed_pair(hp, ref, repeat, clock=time.perf_counter):
    """Median seconds of hp() and ref() (None when ref is None), one call of each per round after a warm-up."""
    hp()
    if ref is not None:
        ref()
    hp_times, ref_times = [], []
    for _ in range(repeat):
        hp_times.append(_timed(hp, clock))
        if ref is not None:
            ref_times.append(_timed(ref, clock))
    return statistics.median(hp_times), (statistics.median(ref_times) if ref_times else None)


def matmul_peak(threads, size=2048, rounds=5, clock=time.perf_counter, library="numpy"):
    """Best float32 GFLOP/s of a size^3 matmul on `threads` BLAS threads, timed by clock: numpy's (library
    "numpy") or that of the BLAS hpcnn's CPU kernels call ("hpcnn")."""
    from threadpoolctl import threadpool_limits

    from ..kernels.cpu._blas import gemm
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)

    def product():
        if library == "numpy":
            np.matmul(a, b, out=c)
        else:
            gemm(a, b, c)
    best = math.inf
    with threadpool_limits(threads, user_api="blas"):   # hpcnn's threads leave BLAS on one (apply_threads)
        product()
        for _ in range(rounds):
            start = clock()
            product()
            best = min(best, clock() - start)
    return 2.0 * size ** 3 / best / 1e9


def _conv_operations(case, torch):
    """{op: (hpcnn call, PyTorch call or None)} for the three passes of one case, on the same data."""
    from .. import kernels as K
    nd = len(case.spatial)
    rng = np.random.default_rng(0)
    kernel = (case.kernel,) * nd
    x = rng.standard_normal((case.n, case.c) + tuple(case.spatial), dtype=np.float32)
    w = rng.standard_normal((case.k, case.c) + kernel, dtype=np.float32) / math.sqrt(case.c * case.kernel ** nd)
    y = K.conv_forward(x, w, None, case.stride, case.padding)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    ops = {
        "conv forward": lambda: K.conv_forward(x, w, None, case.stride, case.padding),
        "conv backward-data": lambda: K.conv_backward_data(dy, w, case.spatial, case.stride, case.padding),
        "conv backward-filter": lambda: K.conv_backward_filter(x, dy, kernel, case.stride, case.padding),
    }
    if torch is None:
        return {op: (call, None) for op, call in ops.items()}
    tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
    conv = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv3d
    stride, padding = (case.stride,) * nd, (case.padding,) * nd

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(tdy, tx, tw, None, stride, padding, (1,) * nd,
                                                           False, (0,) * nd, 1, mask)

    refs = {"conv forward": lambda: conv(tx, tw, None, stride, padding),
            "conv backward-data": backward([True, False, False]),
            "conv backward-filter": backward([False, True, False])}
    return {op: (call, refs[op]) for op, call in ops.items()}


def _pool_and_norm_operations(shape, torch):
    """{(op, shape text): (hpcnn call, PyTorch call or None)} for max/avg pooling and training batch-norm."""
    from .. import kernels as K
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    spatial = shape[2:]
    count = x.size // shape[1]
    gamma = rng.standard_normal(shape[1], dtype=np.float32)
    beta = rng.standard_normal(shape[1], dtype=np.float32)
    y_max, argmax = K.maxpool_forward(x, 2, 2)
    dy_max = rng.standard_normal(y_max.shape, dtype=np.float32)
    dy_avg = rng.standard_normal(K.avgpool_forward(x, 3, 1, 1).shape, dtype=np.float32)
    dy_bn = rng.standard_normal(shape, dtype=np.float32)

    def bn_statistics():
        mean = K.channel_sum(x) / count
        invstd = 1.0 / np.sqrt(K.channel_centered_sumsq(x, mean) / count + BN_EPS)
        return mean, invstd

    def bn_forward():
        mean, invstd = bn_statistics()
        return K.batchnorm_apply(x, mean, invstd, gamma, beta)

    mean, invstd = bn_statistics()

    def bn_backward():
        sum_dy, sum_dy_xhat = K.batchnorm_backward_reduce(dy_bn, x, mean, invstd)
        return K.batchnorm_backward_apply(dy_bn, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count)

    text = "x".join(map(str, shape))
    ops = {("maxpool forward", f"{text} k2 s2"): lambda: K.maxpool_forward(x, 2, 2),
           ("maxpool backward", f"{text} k2 s2"): lambda: K.maxpool_backward(dy_max, argmax, spatial),
           ("avgpool forward", f"{text} k3 s1 p1"): lambda: K.avgpool_forward(x, 3, 1, 1),
           ("avgpool backward", f"{text} k3 s1 p1"): lambda: K.avgpool_backward(dy_avg, spatial, 3, 1, 1),
           ("batchnorm forward", f"{text} training"): bn_forward,
           ("batchnorm backward", f"{text} training"): bn_backward}
    if torch is None:
        return {key: (call, None) for key, call in ops.items()}
    F = torch.nn.functional
    aten = torch.ops.aten
    tx, tg, tb = torch.from_numpy(x), torch.from_numpy(gamma), torch.from_numpy(beta)
    t_dy_max, t_dy_avg, t_dy_bn = (torch.from_numpy(a) for a in (dy_max, dy_avg, dy_bn))
    _, t_index = F.max_pool2d(tx, 2, 2, return_indices=True)
    _, t_mean, t_invstd = aten.native_batch_norm(tx, tg, tb, None, None, True, 0.1, BN_EPS)
    refs = [lambda: F.max_pool2d(tx, 2, 2, return_indices=True),
            lambda: aten.max_pool2d_with_indices_backward(t_dy_max, tx, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                          t_index),
            lambda: F.avg_pool2d(tx, 3, 1, 1),
            lambda: aten.avg_pool2d_backward(t_dy_avg, tx, [3, 3], [1, 1], [1, 1], False, True, None),
            lambda: aten.native_batch_norm(tx, tg, tb, None, None, True, 0.1, BN_EPS),
            lambda: aten.native_batch_norm_backward(t_dy_bn, tx, tg, None, None, t_mean, t_invstd, True, BN_EPS,
                                                    [True, True, True])]
    return {key: (call, ref) for (key, call), ref in zip(ops.items(), refs)}


def _row(op, shape, hp_s, ref_s, flops, peak):
    gflops = flops / hp_s / 1e9 if flops else None
    return {"op": op, "shape": shape, "hpcnn_ms": hp_s * 1e3,
            "torch_ms": ref_s * 1e3 if ref_s is not None else None,
            "ratio": hp_s / ref_s if ref_s is not None else None,
            "gflops": gflops, "peak_percent": 100.0 * gflops / peak if gflops is not None else None}


def _fmt(value, spec):
    return format(value, spec) if value is not None else "-".rjust(len(format(0.0, spec)))


_HEADER = f"{'op':<21} {'shape':<31} {'hpcnn ms':>9} {'torch ms':>9} {'ratio':>6} {'GFLOP/s':>8} {'% peak':>7}"


def _format_row(r):
    return (f"{r['op']:<21} {r['shape']:<31} {r['hpcnn_ms']:9.2f} {_fmt(r['torch_ms'], '9.2f')} "
            f"{_fmt(r['ratio'], '6.2f')} {_fmt(r['gflops'], '8.1f')} {_fmt(r['peak_percent'], '7.1f')}")


def summarize(rows):
    """Geometric mean and worst of the hpcnn/PyTorch ratios of the convolution rows (None without PyTorch)."""
    conv = [r for r in rows if r["op"] in CONV_OPS and r["ratio"] is not None]
    if not conv:
        return {"conv_geomean_ratio": None, "conv_worst": None}
    worst = max(conv, key=lambda r: r["ratio"])
    return {"conv_geomean_ratio": math.exp(statistics.fmean(math.log(r["ratio"]) for r in conv)),
            "conv_worst": {"op": worst["op"], "shape": worst["shape"], "ratio": worst["ratio"]}}


def _run_gpu(args):
    from ..backend import open_device
    try:
        open_device("gpu")
        from . import kernels_gpu
    except (RuntimeError, ImportError) as exc:
        print(f"hpcnn bench kernels --device gpu: {exc}", file=sys.stderr)
        return 2
    suite = [dict(name=_describe(c), n=c.n, c=c.c, k=c.k, spatial=c.spatial, kernel=c.kernel, stride=c.stride,
                  padding=c.padding) for c in QUICK_CONV_SUITE] if args.quick else None
    rows = kernels_gpu.run_gpu_suite(suite, args.repeat or (2 if args.quick else 5),
                                     log=lambda line: print(line, flush=True))
    print(kernels_gpu.format_table(rows))
    _write(args, {"device": "gpu", "rows": rows, "conv_geomean_ratio": kernels_gpu.geometric_mean_ratio(rows)}, rows)
    return 0


def _write(args, result, rows):
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def run(args):
    if args.device == "gpu":
        return _run_gpu(args)
    if args.threads < 1:
        print("hpcnn bench kernels: --threads must be at least 1", file=sys.stderr)
        return 2
    if args.clock == "cpu" and args.threads != 1:
        print("hpcnn bench kernels: --clock cpu times one thread; use it with --threads 1", file=sys.stderr)
        return 2
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    repeat = args.repeat or (2 if args.quick else 5)
    threads, torch = _set_threads(args.threads)
    from ..kernels.cpu._blas import BLAS_SOURCE
    print("threads: " + ", ".join(f"{name} {n}" for name, n in threads.items()) + f"; hpcnn BLAS: {BLAS_SOURCE}")
    if torch is None:
        print("PyTorch is not installed: timing hpcnn alone (pip install torch for the comparison)")
    size = (512, 3) if args.quick else (2048, 5)
    peaks = {lib: matmul_peak(args.threads, *size, clock=clock, library=lib) for lib in ("numpy", "hpcnn")}
    peak = max(peaks.values())
    print(f"float32 matmul peak ({args.threads} thread{'s' * (args.threads > 1)}): numpy {peaks['numpy']:.1f} GFLOP/s, "
          f"hpcnn's BLAS {peaks['hpcnn']:.1f}; % peak of {peak:.1f}; {args.clock} clock")
    print(_HEADER, flush=True)
    rows = []
    for case in (QUICK_CONV_SUITE if args.quick else CONV_SUITE):
        flops = conv_flops(case)
        for op, (hp, ref) in _conv_operations(case, torch).items():
            rows.append(_row(op, _describe(case), *_timed_pair(hp, ref, repeat, clock), flops, peak))
            print(_format_row(rows[-1]), flush=True)
    for (op, shape), (hp, ref) in _pool_and_norm_operations(QUICK_POOL_SHAPE if args.quick else POOL_SHAPE,
                                                             torch).items():
        rows.append(_row(op, shape, *_timed_pair(hp, ref, repeat, clock), None, peak))
        print(_format_row(rows[-1]), flush=True)
    summary = summarize(rows)
    if summary["conv_geomean_ratio"] is not None:
        worst = summary["conv_worst"]
        print(f"convolution hpcnn/torch: geometric mean {summary['conv_geomean_ratio']:.3f}, "
              f"worst {worst['ratio']:.2f} ({worst['op']}, {worst['shape']})")
    result = {"device": "cpu", "threads": threads, "blas": BLAS_SOURCE, "repeat": repeat, "quick": args.quick,
              "clock": args.clock,
              "matmul_peak_gflops": peak, "matmul_peaks_gflops": peaks, "rows": rows, **summary}
    _write(args, result, rows)
    return 0
