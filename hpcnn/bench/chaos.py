"""CHAOS thread-parallel training on digits: images/s, speedup, accuracy vs sequential SGD and PyTorch CPU, model prediction.

For each network (LeNet on 8x8 digits; the medium CNN is the same LeNet on digits upscaled to
32x32, 16x the work per sample) and each setting (1 and 2 workers with one BLAS/numba thread
each, and 1 worker with 2 BLAS threads for comparison), train E epochs with SGD (batch 1, a
cosine learning rate) and report images per second over the training phase (the median epoch of a
run; the median over repeats in the table), the speedup over
one worker, and the validation accuracy after E epochs. One worker is sequential SGD (the tests
show that the fused step equals the layer-by-layer step, and that one deterministic worker equals
the plain SGD loop bit for bit). Every setting runs `--repeats` times with matched seeds (the same
initial weights and sample orders for every setting of a repeat), interleaved so that load from
other processes hits all settings alike; the table shows medians.

PyTorch CPU trains the same network (same initial weights, same sample order, same batch and LR)
in the same run with 1 and 2 intra-op threads, for `--torch-epochs` epochs (or `--torch-seconds`); like is
paired with like: a setting of W workers with B BLAS threads each (W*B cores) is compared with PyTorch on
W*B threads (no ratio where PyTorch did not run on that many).

The time model (perfmodel.chaos) predicts the speedup at every thread count from inputs measured
apart from the timed runs, in calibration runs of their own with their own weights and sample
orders (`chaos_costs`: a short one-worker run first for the per-sample time, the part of it that
holds the GIL and the serial part of an epoch; before each repeat, short runs of two independent
engines and of one two-worker engine for what a second worker costs); the output says where each
input came from, and the plot shows the prediction beside the measured points.
"""
import json
import math
import os
import statistics
import sys

from .chaos_costs import calibrate, second_worker_slowdown, set_contention
from .chaos_torch import torch_runs
from .output import pyplot, write_csv

__all__ = ["add_arguments", "run", "NETWORKS"]

# name -> (model options, digits upscale factor)
NETWORKS = {"lenet": ({"input_size": 8}, 1), "lenet32": ({"input_size": 32}, 4)}


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"hpcnn bench chaos: expected comma-separated integers, received {text!r}")
    if not values or min(values) < 1:
        raise SystemExit(f"hpcnn bench chaos: thread counts must be positive, received {text!r}")
    return values


def add_arguments(parser):
    parser.add_argument("--models", default="lenet,lenet32",
                        help=f"comma-separated networks among {', '.join(NETWORKS)} (default: both)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--threads", default="1,2", help="worker counts, one BLAS thread each (default 1,2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, medians reported (default 3)")
    parser.add_argument("--lr", type=float, default=0.03, help="initial learning rate, cosine to 0 (default 0.03)")
    parser.add_argument("--batch", type=int, default=1, help="mini-batch per worker step (default 1, as CHAOS)")
    parser.add_argument("--chunk", type=int, default=64,
                        help="the most mini-batches a fused worker takes at a time (fewer near an epoch's end)")
    parser.add_argument("--step", default="auto", choices=("auto", "fused", "layers"),
                        help="how a worker runs a step (default auto: fused when the network allows)")
    parser.add_argument("--torch-epochs", type=int, default=3,
                        help="epochs of the PyTorch comparison (0: skip it; default 3)")
    parser.add_argument("--torch-threads", default="1,2", help="PyTorch intra-op thread counts (default 1,2)")
    parser.add_argument("--torch-seconds", type=float, default=60.0,
                        help="time cap per PyTorch setting; images/s then counts the steps done (default 60)")
    parser.add_argument("--csv", help="write the table as CSV")
    parser.add_argument("--png", help="write the speedup plot (measured and predicted)")
    parser.add_argument("--json", help="write every run's metrics, the model inputs and predictions")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: lenet, 1 epoch on 300 samples, one repeat")


def run(args):
    from ..chaos import describe_thread_settings
    from ..chaos.threads import use_threadsafe_numba_layer
    threads = _int_list(args.threads)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown:
        raise SystemExit(f"hpcnn bench chaos: unknown network(s) {', '.join(unknown)}; "
                         f"expected {', '.join(NETWORKS)}")
    epochs, repeats, torch_epochs, subset = args.epochs, args.repeats, args.torch_epochs, None
    if args.quick:
        names, epochs, repeats, subset = ["lenet"], 1, 1, 300
        torch_epochs = min(torch_epochs, 1)
        args.torch_threads, args.torch_seconds = "1", min(args.torch_seconds, 5.0)
    settings = [(t, 1) for t in threads]
    if (1, 2) not in settings:
        settings.append((1, 2))          # one worker whose BLAS may use two threads, for comparison
    use_threadsafe_numba_layer()
    print("CHAOS benchmark: thread settings " + ", ".join(f"{k}={v}" for k, v in describe_thread_settings().items()))
    print(f"  settings (workers, BLAS threads): {settings}; epochs {epochs}; repeats {repeats}; batch {args.batch}; "
          f"lr {args.lr} cosine; step {args.step}; chunk {args.chunk}")
    rows, details = [], {}
    for name in names:
        r, d = _bench_network(name, settings, epochs, repeats, torch_epochs, subset, args)
        rows.extend(r)
        details[name] = d
    _print_table(rows)
    if args.csv:
        write_csv(args.csv, _COLUMNS, rows, digits=None)
        print(f"wrote {args.csv}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "networks": details, "settings": describe_thread_settings(),
                       "argv": sys.argv[1:]}, f, indent=1, default=float)
        print(f"wrote {args.json}")
    if args.png and _plot(args.png, details):
        print(f"wrote {args.png}")
    return 0


# --- one network -----------------------------------------------------------------------------------------------

def _bench_network(name, settings, epochs, repeats, torch_epochs, subset, args):
    from .. import chaos, models, nn
    from ..chaos.threads import available_cores
    from ..data.digits import Digits
    from ..train.schedule import CosineLR
    from perfmodel import chaos as chaos_model

    options, upscale = NETWORKS[name]
    train = Digits("train", upscale=upscale).arrays()
    val = Digits("val", upscale=upscale).arrays()
    if subset:
        train = (train[0][:subset], train[1][:subset])
    n = len(train[1])
    steps = math.ceil(n / args.batch) * epochs
    cores = available_cores()
    # the model's inputs, measured apart from the runs whose speedup it predicts: c, g, s first; what a second
    # worker costs in a short calibration before each repeat, so that it sees the windows of load the repeats see
    costs, step = calibrate(options, train, val, args, cores=cores)
    runs = {s: [] for s in settings}
    parts = []
    for repeat in range(repeats):
        if step == "fused":
            parts.append(second_worker_slowdown(options, train, args, epochs=1))
        for workers, blas in settings:
            model = models.build("lenet", seed=repeat, **options)
            engine = chaos.ChaosEngine(model, nn.CrossEntropyLoss(), threads=workers, blas_threads=blas,
                                       batch=args.batch, schedule=CosineLR(args.lr, steps), seed=repeat,
                                       step=args.step, chunk=args.chunk)
            history = engine.fit(train, val, epochs=epochs)
            # the median epoch: robust to bursts of load from other processes on shared machines
            ips = statistics.median(m["images_per_second"] for m in history)
            runs[(workers, blas)].append({"images_per_second": ips, "history": history,
                                          "val_accuracy": history[-1]["val_accuracy"], "step": engine.step})
            print(f"  {name} repeat {repeat}: {workers} worker(s), {blas} BLAS thread(s), {engine.step} step: "
                  f"{ips:8.0f} images/s, val accuracy {history[-1]['val_accuracy']:.4f}", flush=True)
    if parts:
        set_contention(costs, parts)
    print(f"  {name}: model inputs c = {1e6 * costs.sample_seconds:.1f} us/sample, g = {1e6 * costs.gil_seconds:.2f} "
          f"us/sample, kappa = {costs.contention:.3f}, t_thread = {1e6 * costs.thread_seconds:.0f} us", flush=True)
    for key, where in costs.sources.items():
        print(f"    {key}: {where}")
    base = [r["images_per_second"] for r in runs[(1, 1)]] if (1, 1) in runs else None
    seq_accuracy = statistics.median(r["val_accuracy"] for r in runs[(1, 1)]) if (1, 1) in runs else None
    rows = []
    for (workers, blas), rs in runs.items():
        ips = [r["images_per_second"] for r in rs]
        speedups = [a / b for a, b in zip(ips, base)] if base else []
        acc = statistics.median(r["val_accuracy"] for r in rs)
        predicted = chaos_model.predict(costs, workers)["speedup"] if blas == 1 else None
        rows.append({"network": name, "workers": workers, "blas_threads": blas, "step": step, "epochs": epochs,
                     "images_per_second": statistics.median(ips), "speedup": statistics.median(speedups)
                     if speedups else None, "predicted_speedup": predicted, "val_accuracy": acc,
                     "sequential_sgd_accuracy": seq_accuracy,
                     "accuracy_points_vs_sequential": None if seq_accuracy is None else 100 * (acc - seq_accuracy)})
    torch_rows = []
    if torch_epochs > 0:
        torch_rows = torch_runs(name, options, train, val, torch_epochs, _int_list(args.torch_threads), args.batch,
                                args.lr, args.torch_seconds)
        if torch_rows:
            # like with like: a setting using W workers x B BLAS threads (W*B cores) against PyTorch on W*B threads
            by_threads = {r["blas_threads"]: r["images_per_second"] for r in torch_rows}
            for row in rows:
                same = by_threads.get(row["workers"] * row["blas_threads"])
                row["torch_images_per_second"] = same
                row["ratio_vs_torch"] = None if same is None else row["images_per_second"] / same
            rows.extend(torch_rows)
    curve = [chaos_model.predict(costs, t) for t in range(1, 2 * cores + 1)]
    details = {"costs": costs.as_dict(), "prediction": curve, "samples": n,
               "runs": {f"{w}x{b}": [{"images_per_second": r["images_per_second"], "val_accuracy": r["val_accuracy"],
                                      "history": r["history"]} for r in rs] for (w, b), rs in runs.items()},
               "torch": torch_rows}
    return rows, details


# --- output ----------------------------------------------------------------------------------------------------

_COLUMNS = ["network", "step", "workers", "blas_threads", "epochs", "images_per_second", "speedup",
            "predicted_speedup", "val_accuracy", "sequential_sgd_accuracy", "accuracy_points_vs_sequential",
            "torch_images_per_second", "ratio_vs_torch"]


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _print_table(rows):
    head = ["network", "step", "workers", "BLAS", "epochs", "images/s", "speedup", "predicted", "val acc",
            "seq SGD acc", "d points", "x PyTorch"]
    keys = ["network", "step", "workers", "blas_threads", "epochs", "images_per_second", "speedup",
            "predicted_speedup", "val_accuracy", "sequential_sgd_accuracy", "accuracy_points_vs_sequential",
            "ratio_vs_torch"]
    table = [head] + [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def _plot(path, details):
    """The speedup plot (measured points, their median, the model's curve) at `path`; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    top = 1
    for i, (name, d) in enumerate(details.items()):
        color = f"C{i}"
        runs = d["runs"]
        base = runs.get("1x1")
        if not base:
            continue
        for key, rs in runs.items():
            workers, blas = (int(v) for v in key.split("x"))
            if blas != 1:
                continue
            speedups = [r["images_per_second"] / b["images_per_second"] for r, b in zip(rs, base)]
            ax.plot([workers] * len(speedups), speedups, "o", color=color, alpha=0.4)
            ax.plot([workers], [statistics.median(speedups)], "o", color=color, markersize=8,
                    label=f"{name} measured" if workers == 1 else None)
            top = max(top, workers)
        if d["prediction"]:
            ts = [p["threads"] for p in d["prediction"]]
            ax.plot(ts, [p["speedup"] for p in d["prediction"]], "--", color=color, label=f"{name} model")
            top = max(top, max(ts))
    ax.plot([1, top], [1, top], ":", color="gray", label="ideal")
    ax.set_xlabel("worker threads (one BLAS/numba thread each)")
    ax.set_ylabel("speedup over one worker (images/s)")
    ax.set_title(f"CHAOS on digits, {os.cpu_count()} cores")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
