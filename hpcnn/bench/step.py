"""Whole training steps against PyTorch CPU: the same network, weights, data and threads, interleaved in one run.

A step is forward, the loss (cross-entropy per sample or per pixel, or MSE), backward and SGD
with momentum 0.9, on one process. hpcnn runs the zoo model; PyTorch runs its mirror
(hpcnn.nn.torch_mirror) with the same weights. For each thread count (BLAS, numba and PyTorch
alike), every round times one hpcnn step and one PyTorch step, after a warm-up of each, with a
short pause before each timed step so that neither library's idle threads spin on the other's
cores; the medians of the rounds are reported, with the ratio hpcnn/PyTorch, its geometric mean
over the models, and each model's speedup from the first thread count to the others. The
per-layer breakdown times every leaf layer's forward + backward alone on the input it sees in
the step, in both libraries, and lists where hpcnn loses most.

    hpcnn bench step --threads 1,2 --out step-out
"""
import json
import math
import os
import statistics
import time

import numpy as np

from .output import write_csv

__all__ = ["add_arguments", "run", "CASES", "QUICK_CASES"]

# name -> (build options, input (C, *S), batch): the shapes of the measurements in README
CASES = {
    "meshnet": ({}, (18, 512, 512), 2),
    "unet2d": ({}, (1, 512, 512), 1),
    "resnet18": ({"small_input": True}, (3, 64, 64), 8),
    "cosmoflow": ({}, (4, 64, 64, 64), 2),
}
QUICK_CASES = {
    "meshnet": ({"widths": (8, 8), "dilations": (1, 2)}, (3, 32, 32), 2),
    "resnet18": ({"small_input": True, "width": 8}, (3, 16, 16), 2),
    "cosmoflow": ({"width": 4}, (2, 16, 16, 16), 2),
}
COLUMNS = ["model", "input", "batch", "threads", "hpcnn_s", "torch_s", "ratio", "hpcnn_speedup", "torch_speedup"]
LAYER_COLUMNS = ["model", "threads", "layer", "kind", "hpcnn_s", "torch_s", "ratio", "share_of_step"]
_PAUSE_S = 0.02
_LR, _MOMENTUM = 1e-4, 0.9


def add_arguments(p):
    p.add_argument("--models", default=None, help="comma-separated, from: " + ", ".join(CASES) + " (default all)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="timed rounds per model and thread count, median reported (default 7, 2 with --quick)")
    p.add_argument("--layers", type=int, default=8, metavar="K",
                   help="the K layers where hpcnn loses most, per model and thread count (default 8; 0: none)")
    p.add_argument("--quick", action="store_true", help="small models and few rounds: a smoke test")
    p.add_argument("--out", default="bench-out", help="folder for step.csv, step_layers.csv and step.json")


def _ints(text, what):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"hpcnn bench step: {what} takes comma-separated integers, received {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"hpcnn bench step: {what} takes positive integers, received {text!r}")
    return values


def _set_threads(threads, torch):
    from ..threads import apply_threads
    used = apply_threads(threads)
    torch.set_num_threads(threads)
    used["torch"] = torch.get_num_threads()
    return used


class _Pair:
    """One model as hpcnn and PyTorch run it, with the same weights, data and optimizer settings."""

    def __init__(self, name, options, shape, batch, torch):
        from .. import models, nn
        from ..nn.torch_mirror import copy_into_torch, torch_mirror
        from ..train.optim import SGD
        self.torch = torch
        self.model = models.build_for_input(name, shape, seed=0, **options)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((batch,) + tuple(shape), dtype=np.float32)
        y = self.model.forward(self.x)
        if name == "cosmoflow":
            self.loss, tloss = nn.MSELoss(), torch.nn.MSELoss()
            self.y = rng.standard_normal(y.shape).astype(np.float32)
        else:
            self.loss, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
            self.y = rng.integers(0, y.shape[1], (y.shape[0],) + y.shape[2:]).astype(np.int64)
        self.tmodel = copy_into_torch(self.model, torch_mirror(self.model)).train()
        self.tloss = tloss
        self.optimizer = SGD(self.model, lr=_LR, momentum=_MOMENTUM)
        self.toptimizer = torch.optim.SGD(self.tmodel.parameters(), lr=_LR, momentum=_MOMENTUM)
        self.tx, self.ty = torch.from_numpy(self.x), torch.from_numpy(self.y)

    def hpcnn_step(self):
        out = self.model.forward(self.x)
        self.loss.forward(out, self.y)
        self.model.backward(self.loss.backward())
        self.optimizer.step()

    def torch_step(self):
        self.toptimizer.zero_grad(set_to_none=False)
        self.tloss(self.tmodel(self.tx), self.ty).backward()
        self.toptimizer.step()


def _timed(call):
    time.sleep(_PAUSE_S)
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def _interleaved(a, b, repeat):
    """Medians of a() and b() over `repeat` rounds of one call each, after one warm-up call each."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(_timed(a))
        tb.append(_timed(b))
    return statistics.median(ta), statistics.median(tb)


def _layer_times(pair, repeat):
    """[(name, kind, hpcnn seconds, torch seconds)]: each leaf's forward + backward alone on the input it sees."""
    from ..nn import registry
    torch = pair.torch
    inputs = {}
    leaves = list(pair.model.named_leaves())
    hooks = []
    for name, layer in leaves:
        hooks.append((layer, layer.forward))

        def record(x, _name=name, _forward=layer.forward):
            inputs[_name] = x
            return _forward(x)
        layer.forward = record
    pair.model.forward(pair.x)
    for layer, forward in hooks:
        layer.forward = forward
    tmods = dict(pair.tmodel.named_modules())
    out = []
    for name, layer in leaves:
        x = inputs[name]
        dy = np.ones_like(layer.forward(x))
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        tmod, tdy = tmods[name], torch.from_numpy(dy)

        def hp(layer=layer, x=x, dy=dy):
            layer.forward(x)
            layer.backward(dy)

        def tp(tmod=tmod, tx=tx, tdy=tdy):
            tmod(tx).backward(tdy)
        h, t = _interleaved(hp, tp, repeat)
        out.append((name, registry.kind_of(layer).name, h, t))
    return out


def _geomean(values):
    return math.exp(statistics.fmean(math.log(v) for v in values))


def run(args):
    try:
        import torch
    except ImportError:
        raise SystemExit("hpcnn bench step: PyTorch is needed for the comparison (pip install torch==2.13.0)") from None
    cases = QUICK_CASES if args.quick else CASES
    names = list(cases) if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in cases]
    if unknown:
        raise SystemExit(f"hpcnn bench step: unknown model(s) {unknown}: expected some of {', '.join(cases)}")
    threads = _ints(args.threads, "--threads")
    repeat = args.repeat or (2 if args.quick else 7)
    if repeat < 1 or args.layers < 0:
        raise SystemExit("hpcnn bench step: --repeat must be positive and --layers non-negative")
    from ..kernels.cpu._memory import policy
    from ..threads import blas_kernels
    os.makedirs(args.out, exist_ok=True)
    # one process: PyTorch's CPU tensors come from the same malloc as hpcnn's arrays
    print(f"allocator, for both libraries: {policy()}")
    rows, layer_rows, settings = [], [], {}
    for t in threads:
        settings[t] = _set_threads(t, torch)
        print(f"threads {t}: {settings[t]}; hpcnn BLAS: {blas_kernels()}")
        for name in names:
            options, shape, batch = cases[name]
            pair = _Pair(name, options, shape, batch, torch)
            h, p = _interleaved(pair.hpcnn_step, pair.torch_step, repeat)
            rows.append({"model": name, "input": "x".join(map(str, shape)), "batch": batch, "threads": t,
                         "hpcnn_s": h, "torch_s": p, "ratio": h / p})
            print(f"  {name:<10} hpcnn {h * 1e3:9.1f} ms   torch {p * 1e3:9.1f} ms   ratio {h / p:5.2f}")
            if args.layers:
                times = _layer_times(pair, max(repeat // 2, 1))
                worst = sorted(times, key=lambda r: r[2] - r[3], reverse=True)[:args.layers]
                for lname, kind, lh, lp in worst:
                    layer_rows.append({"model": name, "threads": t, "layer": lname, "kind": kind, "hpcnn_s": lh,
                                       "torch_s": lp, "ratio": lh / lp, "share_of_step": (lh - lp) / h})
    first = threads[0]
    base = {(r["model"]): r for r in rows if r["threads"] == first}
    for r in rows:
        b = base[r["model"]]
        r["hpcnn_speedup"] = b["hpcnn_s"] / r["hpcnn_s"]
        r["torch_speedup"] = b["torch_s"] / r["torch_s"]
    summary = {}
    for t in threads:
        ratios = [r["ratio"] for r in rows if r["threads"] == t]
        summary[str(t)] = {"geomean_ratio": _geomean(ratios), "worst_ratio": max(ratios),
                           "worst_model": max((r for r in rows if r["threads"] == t), key=lambda r: r["ratio"])["model"]}
    write_csv(os.path.join(args.out, "step.csv"), COLUMNS, rows)
    write_csv(os.path.join(args.out, "step_layers.csv"), LAYER_COLUMNS, layer_rows)
    with open(os.path.join(args.out, "step.json"), "w") as f:
        json.dump({"rows": rows, "layers": layer_rows, "summary": summary, "repeat": repeat,
                   "threads": {str(k): v for k, v in settings.items()}, "cores": os.cpu_count(),
                   "blas": blas_kernels(), "allocator": policy()}, f, indent=1)
    print(f"\n{'model':<10} {'threads':>7} {'hpcnn ms':>9} {'torch ms':>9} {'ratio':>6} {'hpcnn x':>8} {'torch x':>8}")
    for r in rows:
        print(f"{r['model']:<10} {r['threads']:>7} {r['hpcnn_s'] * 1e3:9.1f} {r['torch_s'] * 1e3:9.1f} "
              f"{r['ratio']:6.2f} {r['hpcnn_speedup']:8.2f} {r['torch_speedup']:8.2f}")
    for t, s in summary.items():
        print(f"threads {t}: geometric mean hpcnn/PyTorch {s['geomean_ratio']:.2f}, worst {s['worst_ratio']:.2f} "
              f"({s['worst_model']})")
    if layer_rows:
        print("\nwhere hpcnn loses most (each leaf's forward + backward alone):")
        for r in layer_rows:
            print(f"  {r['model']:<10} t{r['threads']} {r['layer']:<34} {r['kind']:<14} {r['hpcnn_s'] * 1e3:8.2f} ms "
                  f"vs {r['torch_s'] * 1e3:8.2f} ms ({100 * r['share_of_step']:+.1f}% of the step)")
    print(f"wrote {args.out}/step.csv, step_layers.csv, step.json")
    return 0
