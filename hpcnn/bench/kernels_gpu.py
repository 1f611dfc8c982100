"""GPU convolution timings: hpcnn's CuPy kernels against PyTorch on CUDA, same shapes, same device.

`run_gpu_suite(suite, repeat)` times forward, backward-data and backward-filter of every case
with both libraries (warm-up first, then the median of `repeat` runs, each bracketed by a device
synchronize) and returns one row per case and operation: milliseconds, the ratio hpcnn/PyTorch
and TFLOP/s (2*N*K*C*prod(R)*prod(O) per operation). PyTorch runs with torch.backends.cudnn as
it is; by default hpcnn uses the same float32 math mode (TF32 tensor cores when cuDNN may use
them), so that the two compute to the same precision. `python -m hpcnn.bench.kernels_gpu` runs
the default suite and prints the table (and JSON with --json).
"""
import argparse
import json
import math
import statistics
import sys
import time

__all__ = ["ConvCase", "DEFAULT_SUITE", "run_gpu_suite", "geometric_mean_ratio", "format_table", "main"]

OPERATIONS = ("forward", "backward_data", "backward_filter")


class ConvCase:
    """One convolution layer: x (N, C, *spatial), w (K, C, *kernel), symmetric padding."""

    __slots__ = ("name", "n", "c", "k", "spatial", "kernel", "stride", "padding", "dilation")

    def __init__(self, name, n, c, k, spatial, kernel, stride=1, padding=0, dilation=1):
        self.name, self.n, self.c, self.k = name, n, c, k
        self.spatial = tuple(spatial)
        nd = len(self.spatial)
        self.kernel = (kernel,) * nd if isinstance(kernel, int) else tuple(kernel)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    @classmethod
    def of(cls, obj):
        """A ConvCase from a ConvCase, a dict or any object with the same attribute names."""
        if isinstance(obj, cls):
            return obj
        get = obj.get if isinstance(obj, dict) else lambda key, default=None: getattr(obj, key, default)
        return cls(get("name"), get("n"), get("c"), get("k"), get("spatial"), get("kernel"),
                   get("stride", 1), get("padding", 0), get("dilation", 1))

    def output_spatial(self):
        from ..geometry import WindowGeometry
        return WindowGeometry(len(self.spatial), self.kernel, self.stride, self.padding,
                              self.dilation).output_shape(self.spatial)

    def flops(self):
        return 2.0 * self.n * self.k * self.c * math.prod(self.kernel) * math.prod(self.output_spatial())


DEFAULT_SUITE = [
    ConvCase("resnet50-conv1", 32, 3, 64, (224, 224), 7, 2, 3),
    ConvCase("resnet50-res2-3x3", 32, 64, 64, (56, 56), 3, 1, 1),
    ConvCase("resnet50-res2-1x1", 32, 64, 256, (56, 56), 1),
    ConvCase("resnet50-res3-down-1x1s2", 32, 256, 512, (56, 56), 1, 2, 0),
    ConvCase("resnet50-res3-3x3", 32, 128, 128, (28, 28), 3, 1, 1),
    ConvCase("resnet50-res4-3x3", 32, 256, 256, (14, 14), 3, 1, 1),
    ConvCase("resnet50-res5-3x3", 32, 512, 512, (7, 7), 3, 1, 1),
    ConvCase("texture-2048-3x3", 1, 16, 16, (2048, 2048), 3, 1, 1),
    ConvCase("texture-1024-3x3-s2", 2, 32, 64, (1024, 1024), 3, 2, 1),
    ConvCase("field3d-64-3x3x3", 2, 32, 32, (64, 64, 64), 3, 1, 1),
    ConvCase("field3d-128-3x3x3", 1, 16, 16, (128, 128, 128), 3, 1, 1),
]


def _timed(fn, repeat, sync):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _torch_ops(torch, case, x, w, dy):
    F = torch.nn.functional
    nd = len(case.spatial)
    conv = F.conv2d if nd == 2 else F.conv3d
    stride = (case.stride,) * nd if isinstance(case.stride, int) else tuple(case.stride)
    padding = (case.padding,) * nd if isinstance(case.padding, int) else tuple(case.padding)
    dilation = (case.dilation,) * nd if isinstance(case.dilation, int) else tuple(case.dilation)

    def backward(mask):
        return torch.ops.aten.convolution_backward(dy, x, w, None, stride, padding, dilation, False,
                                                   (0,) * nd, 1, mask)

    return {"forward": lambda: conv(x, w, None, stride, padding, dilation),
            "backward_data": lambda: backward([True, False, False]),
            "backward_filter": lambda: backward([False, True, False])}


def _hpcnn_ops(gpu, case, x, w, dy):
    return {"forward": lambda: gpu.conv_forward(x, w, None, case.stride, case.padding, case.dilation),
            "backward_data": lambda: gpu.conv_backward_data(dy, w, case.spatial, case.stride, case.padding,
                                                            case.dilation),
            "backward_filter": lambda: gpu.conv_backward_filter(x, dy, case.kernel, case.stride, case.padding,
                                                                case.dilation)}


def run_gpu_suite(suite=None, repeat=5, match_torch_math=True, log=None):
    """Time every case of `suite` (default DEFAULT_SUITE) with hpcnn and PyTorch on the current GPU.

    Returns a list of dicts: case, op, shape, hpcnn_ms, torch_ms, ratio (hpcnn/torch),
    hpcnn_tflops, torch_tflops, math (the float32 math mode of each side).
    """
    import cupy
    import numpy as np
    from ..kernels import gpu
    try:
        import torch
    except ImportError:
        raise RuntimeError("hpcnn bench kernels --device gpu compares against PyTorch, which is not installed "
                           "(install torch with CUDA)") from None
    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device: the GPU benchmark needs torch built with CUDA")
    torch_tf32 = bool(torch.backends.cudnn.allow_tf32)
    if match_torch_math:
        gpu.set_tf32(torch_tf32)
    hp_math = "tf32" if gpu.tf32_enabled() else "fp32"
    math_note = f"hpcnn {hp_math}, torch cudnn {'tf32' if torch_tf32 else 'fp32'}"

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()

    rows = []
    rng = np.random.default_rng(0)
    for case in (DEFAULT_SUITE if suite is None else suite):
        case = ConvCase.of(case)
        out = case.output_spatial()
        x_h = rng.standard_normal((case.n, case.c) + case.spatial, dtype=np.float32)
        w_h = (rng.standard_normal((case.k, case.c) + case.kernel, dtype=np.float32)
               / math.sqrt(case.c * math.prod(case.kernel)))
        dy_h = rng.standard_normal((case.n, case.k) + out, dtype=np.float32)
        x, w, dy = cupy.asarray(x_h), cupy.asarray(w_h), cupy.asarray(dy_h)
        tx, tw, tdy = (torch.as_tensor(a, device="cuda") for a in (x_h, w_h, dy_h))
        hp, to = _hpcnn_ops(gpu, case, x, w, dy), _torch_ops(torch, case, tx, tw, tdy)
        flops = case.flops()
        for op in OPERATIONS:
            hp_ms = _timed(hp[op], repeat, sync)
            to_ms = _timed(to[op], repeat, sync)
            row = {"case": case.name, "op": op,
                   "shape": f"N{case.n} C{case.c} K{case.k} S{'x'.join(map(str, case.spatial))} "
                            f"R{'x'.join(map(str, case.kernel))} s{case.stride} p{case.padding}",
                   "hpcnn_ms": hp_ms, "torch_ms": to_ms, "ratio": hp_ms / to_ms,
                   "hpcnn_tflops": flops / hp_ms / 1e9, "torch_tflops": flops / to_ms / 1e9, "math": math_note}
            rows.append(row)
            if log is not None:
                log(_format_row(row))
        del x, w, dy, tx, tw, tdy, hp, to
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    return rows


def geometric_mean_ratio(rows):
    """The geometric mean of hpcnn/PyTorch time ratios over `rows`."""
    ratios = [r["ratio"] for r in rows]
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float("nan")


_HEADER = f"{'case':<26} {'op':<16} {'hpcnn ms':>9} {'torch ms':>9} {'ratio':>6} {'hpcnn TF/s':>10} {'torch TF/s':>10}"


def _format_row(r):
    return (f"{r['case']:<26} {r['op']:<16} {r['hpcnn_ms']:9.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f} "
            f"{r['hpcnn_tflops']:10.2f} {r['torch_tflops']:10.2f}")


def format_table(rows):
    """The rows as a text table, with the geometric-mean ratio per operation and overall."""
    lines = [_HEADER] + [_format_row(r) for r in rows]
    if rows:
        lines.append(f"math: {rows[0]['math']}")
        for op in OPERATIONS:
            sub = [r for r in rows if r["op"] == op]
            if sub:
                lines.append(f"geometric-mean ratio hpcnn/torch, {op}: {geometric_mean_ratio(sub):.3f}")
        lines.append(f"geometric-mean ratio hpcnn/torch, all: {geometric_mean_ratio(rows):.3f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hpcnn.bench.kernels_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per operation (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and the summary as JSON")
    parser.add_argument("--case", action="append", help="run only the named cases of the default suite")
    parser.add_argument("--exact-fp32", action="store_true",
                        help="keep hpcnn's GEMMs in exact float32 even where cuDNN may use TF32")
    args = parser.parse_args(argv)
    suite = [c for c in DEFAULT_SUITE if not args.case or c.name in args.case]
    rows = run_gpu_suite(suite, args.repeat, match_torch_math=not args.exact_fp32,
                         log=lambda line: print(line, flush=True))
    print(format_table(rows))
    if args.json:
        summary = {op: geometric_mean_ratio([r for r in rows if r["op"] == op]) for op in OPERATIONS}
        summary["all"] = geometric_mean_ratio(rows)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "geometric_mean_ratio": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
