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
in the same run with 1 and 2 intra-op threads, for `--torch-epochs` epochs (or `--torch-seconds`); the
ratio is the best CHAOS images/s over the best PyTorch images/s.

The time model (perfmodel.chaos) takes its inputs from the one-worker runs (per-sample time, the
part of it that holds the GIL, the serial part of an epoch) and predicts the speedup at every
thread count; the plot shows it beside the measured points.
"""
import json
import math
import os
import statistics
import sys
import time

import numpy as np

__all__ = ["add_arguments", "run", "NETWORKS", "layers_gil_fraction", "core_sharing_slowdown",
           "weight_sharing_contention"]

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
    parser.add_argument("--chunk", type=int, default=16, help="mini-batches a fused worker takes at a time")
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
        _write_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "networks": details, "settings": describe_thread_settings(),
                       "argv": sys.argv[1:]}, f, indent=1, default=float)
        print(f"wrote {args.json}")
    if args.png:
        _plot(args.png, details)
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
    runs = {s: [] for s in settings}
    for repeat in range(repeats):
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
    step = runs[settings[0]][0]["step"]
    base = [r["images_per_second"] for r in runs[(1, 1)]] if (1, 1) in runs else None
    one_worker = [m for r in runs.get((1, 1), []) for m in r["history"]]
    cores = available_cores()
    costs = None
    if one_worker:
        costs = chaos_model.costs_from_metrics(one_worker, cores=cores, chunk=args.chunk if step == "fused" else 1,
                                               batch=args.batch)
        if step == "fused":
            net_params = chaos.FusedNetwork.from_model(models.build("lenet", seed=0, **options),
                                                       nn.CrossEntropyLoss(), train[0].shape[1:], args.batch).params
            sharing = weight_sharing_contention(net_params, costs.sample_seconds)
            corun = core_sharing_slowdown(options, train, args)
            costs.contention = sharing + corun
            print(f"  {name}: a second worker costs kappa = {costs.contention:.3f} per sample "
                  f"(shared weights {sharing:.3f}, a busy neighbour core {corun:.3f})")
        if step == "layers":
            model = models.build("lenet", seed=0, **options)
            fraction = layers_gil_fraction(model, nn.CrossEntropyLoss(), train, args.batch)
            print(f"  {name}: the layer-by-layer step holds the GIL {100 * fraction:.0f}% of its time")
            costs.gil_seconds = fraction * costs.sample_seconds
    seq_accuracy = statistics.median(r["val_accuracy"] for r in runs[(1, 1)]) if (1, 1) in runs else None
    rows = []
    for (workers, blas), rs in runs.items():
        ips = [r["images_per_second"] for r in rs]
        speedups = [a / b for a, b in zip(ips, base)] if base else []
        acc = statistics.median(r["val_accuracy"] for r in rs)
        predicted = chaos_model.predict(costs, workers)["speedup"] if costs and blas == 1 else None
        rows.append({"network": name, "workers": workers, "blas_threads": blas, "step": step, "epochs": epochs,
                     "images_per_second": statistics.median(ips), "speedup": statistics.median(speedups)
                     if speedups else None, "predicted_speedup": predicted, "val_accuracy": acc,
                     "sequential_sgd_accuracy": seq_accuracy,
                     "accuracy_points_vs_sequential": None if seq_accuracy is None else 100 * (acc - seq_accuracy)})
    torch_rows = []
    if torch_epochs > 0:
        torch_rows = _torch_runs(name, options, train, val, torch_epochs, args)
        if torch_rows:
            best_torch = max(r["images_per_second"] for r in torch_rows)
            for row in rows:
                row["torch_images_per_second"] = best_torch
                row["ratio_vs_torch"] = row["images_per_second"] / best_torch
            rows.extend(torch_rows)
    curve = []
    if costs:
        curve = [chaos_model.predict(costs, t) for t in range(1, 2 * cores + 1)]
    details = {"costs": None if costs is None else costs.as_dict(), "prediction": curve, "samples": n,
               "runs": {f"{w}x{b}": [{"images_per_second": r["images_per_second"], "val_accuracy": r["val_accuracy"],
                                      "history": r["history"]} for r in rs] for (w, b), rs in runs.items()},
               "torch": torch_rows}
    return rows, details


def layers_gil_fraction(model, loss, train, batch, samples=200):
    """The share of a layer-by-layer step's time spent outside numba kernels, i.e. holding the GIL.

    Every numba dispatcher that is a module global of hpcnn.kernels.cpu.* is wrapped with a timer for
    the measurement (the kernel wrappers look them up at call time), then restored. BLAS calls from
    numpy (Linear) also release the GIL but count here as held: an upper bound.
    """
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    from .. import chaos
    from ..kernels import cpu
    inside = [0.0]
    patched = []

    def timed(fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside[0] += time.perf_counter() - t
        return call

    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(f"{cpu.__name__}.{info.name}")
        for key, value in list(vars(module).items()):
            if isinstance(value, CPUDispatcher):
                patched.append((module, key, value))
                setattr(module, key, timed(value))
    x, y = train[0][:samples], train[1][:samples]
    try:
        engine = chaos.ChaosEngine(model, loss, threads=1, batch=batch, step="layers")
        engine.fit((x, y), epochs=1)           # warm-up: compile, caches
        inside[0] = 0.0
        metrics = engine.fit((x, y), epochs=1)[-1]
    finally:
        for module, key, value in patched:
            setattr(module, key, value)
    return min(1.0, max(0.0, 1.0 - inside[0] / metrics["busy_seconds"]))


def weight_sharing_contention(params, sample_seconds, sweeps=400):
    """kappa for perfmodel.chaos: the extra time per sample, relative to `sample_seconds`, that two workers pay
    when they update one shared copy of the weights instead of a copy each.

    Two threads each sweep a weight buffer `sweeps` times (read, then write every element: what one
    worker's forward and update do to the weights); once on one shared buffer, once on private copies.
    kappa = (shared - private) seconds per sweep / sample_seconds.
    """
    import threading

    import numba

    @numba.njit(nogil=True)
    def sweep(w, times):
        for _ in range(times):
            for i in range(w.shape[0]):
                w[i] = w[i] * 0.999999 + 1e-7

    def timed(buffers):
        sweep(buffers[0], 1)    # compile outside the timing
        threads = [threading.Thread(target=sweep, args=(b, sweeps)) for b in buffers]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - t

    shared = np.array(params, copy=True)
    results = []
    for _ in range(3):
        private = timed([shared.copy(), shared.copy()])
        both = timed([shared, shared])
        results.append((both - private) / sweeps / sample_seconds)
    return max(0.0, statistics.median(results))


def core_sharing_slowdown(options, train, args, epochs=2):
    """The part of kappa that comes from the machine, not from the shared weights: how much slower one
    worker's per-sample time gets while an independent worker (its own model, its own weights) runs
    on the other core. Cores that share caches, memory bandwidth or a physical core (SMT siblings)
    show it; the weight-sharing sweep above cannot.
    """
    import threading

    from .. import chaos, models, nn

    def one_engine():
        model = models.build("lenet", seed=0, **options)
        return chaos.ChaosEngine(model, nn.CrossEntropyLoss(), threads=1, blas_threads=1, batch=args.batch,
                                 seed=0, step="fused", chunk=args.chunk)

    def per_sample(history):
        return statistics.median(m["busy_seconds"] / m["samples"] for m in history)

    solo = one_engine()
    solo.fit(train, epochs=1)                      # warm-up: compile, caches
    alone = per_sample(solo.fit(train, epochs=epochs))
    engines = [one_engine() for _ in range(2)]
    for e in engines:
        e.fit(train, epochs=1)
    results = [None, None]

    def work(i):
        results[i] = per_sample(engines[i].fit(train, epochs=epochs))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if None in results:
        raise RuntimeError("core_sharing_slowdown: a co-running engine failed")
    return max(0.0, statistics.median(results) / alone - 1.0)


# --- PyTorch on the same network --------------------------------------------------------------------------------

def _mirrored(model):
    """The PyTorch module computing what `model` computes, with copies of its weights."""
    from ..nn.torch_mirror import copy_into_torch, torch_mirror
    return copy_into_torch(model, torch_mirror(model))


def _torch_runs(name, options, train, val, epochs, args):
    try:
        import torch
    except ImportError:
        print("  PyTorch is not installed: skipping the PyTorch CPU comparison (pip install torch to get it)")
        return []
    from .. import chaos, models
    from ..train.schedule import CosineLR
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    xv, yv = torch.from_numpy(val[0]), torch.from_numpy(val[1])
    n = len(y)
    batches = math.ceil(n / args.batch)
    schedule = CosineLR(args.lr, batches * epochs)
    saved = torch.get_num_threads()
    rows = []
    try:
        for threads in _int_list(args.torch_threads):
            torch.set_num_threads(threads)
            net = _mirrored(models.build("lenet", seed=0, **options))
            opt = torch.optim.SGD(net.parameters(), lr=args.lr)
            step, seconds, done, capped = 0, 0.0, 0, False
            for epoch in range(epochs):
                if capped:
                    break
                order = torch.from_numpy(chaos.epoch_order(n, epoch, 0))
                t0 = time.perf_counter()
                for j in range(batches):
                    if j % 16 == 0 and seconds + time.perf_counter() - t0 > args.torch_seconds:
                        capped = True
                        break
                    idx = order[j * args.batch:(j + 1) * args.batch]
                    for group in opt.param_groups:
                        group["lr"] = schedule.lr_at(step)
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
                    step += 1
                    done += len(idx)
                seconds += time.perf_counter() - t0
            with torch.no_grad():
                accuracy = float((net(xv).argmax(1) == yv).float().mean())
            ips = done / seconds
            what = (f"stopped by --torch-seconds after {step} steps" if capped
                    else f"val accuracy after {epochs} epoch(s) {accuracy:.4f}")
            print(f"  {name} PyTorch {torch.__version__} CPU, {threads} thread(s): {ips:8.0f} images/s, {what}",
                  flush=True)
            rows.append({"network": name, "workers": 1, "blas_threads": threads, "step": "pytorch",
                         "epochs": round(step / batches, 3), "images_per_second": ips,
                         "val_accuracy": None if capped else accuracy})
    finally:
        torch.set_num_threads(saved)
    return rows


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


def _write_csv(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in _COLUMNS})


def _plot(path, details):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
