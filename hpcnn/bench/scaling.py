"""Strong and weak scaling of a model over ranks: measured time, throughput, communication and memory next to
the performance model's prediction for the same point, as CSV and plots.

    hpcnn bench scaling --model meshnet --input 18x512x512 --batch 4 --ranks 1,2 --mode strong
    hpcnn bench scaling --model resnet18 --input 3x64x64 --batch 8 --ranks 1,2 --mode weak --grids sample,spatial

A point is (ranks, threads per rank, split). The splits of `--grids`: `sample` (the batch over the
ranks, grid Px1x1), `spatial` (the best grid with Pn = 1 by the model), `hybrid` (the best grid with
both Pn > 1 and a spatial split), `plan` (the planner's layer-by-layer plan), or explicit grids such as
1x2x1 (used at the rank counts whose product they match); `auto` is sample,spatial,plan. Splits that
come to the same configuration at a rank count are measured once. Strong: the global batch is
--batch at every rank count; weak: it grows with the ranks (--batch at the smallest count).

Every configuration runs in its own `mpiexec -n R` (so peak memory is its own), with BLAS, OpenMP and
numba set to --threads-per-rank threads (default one: ranks are cores); `--threads 2` adds 1 rank with
2 threads beside the sweep (strong mode), to set splitting the sample against threading the kernels. An iteration is `probe.training_step` (forward, backward of a gradient of ones,
bucketed gradient allreduce, SGD with momentum), as in the performance model; after a warm-up and
one traced iteration, --iterations are timed (the slowest rank's time; median and best). Recorded:
time per iteration, samples per second, communication seconds by kind (halo exchange, collectives
inside layers, shuffles between grids, the gradient-allreduce wait) and their share of the
iteration, peak memory per rank (resident set; arrays allocated by the run, via tracemalloc), the
per-layer breakdown, and the model's prediction of each (profile: --machine).

Under SLURM (slurm/scaling.sbatch) every configuration is started with `srun -n R hpcnn bench
scaling ... --here` (it writes OUT/points/*.json), and `hpcnn bench scaling --merge --out OUT`
writes the tables and plots from every point there: scaling.csv, scaling_layers.csv,
scaling.json, scaling_<mode>.png (speedup with the ideal line, efficiency, time per iteration by
part) and breakdown_<mode>.png (per-layer stacked compute, halo, allreduce, shuffle; measured and
predicted).
"""
import argparse
import gc
import glob
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc

from . import mpiexec, write_csv

__all__ = ["add_arguments", "run", "THREAD_VARIABLES", "CSV_COLUMNS", "LAYER_COLUMNS", "resolve_splits"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
SPLITS = ("sample", "spatial", "hybrid", "plan")
AUTO = ("sample", "spatial", "plan")

CSV_COLUMNS = [
    "mode", "model", "input", "batch", "ranks", "threads", "role", "cores", "split", "grid", "measured_as",
    "iterations", "iteration_s", "best_s", "samples_per_s", "speedup", "efficiency",
    "comm_s", "comm_share", "halo_s", "collective_s", "shuffle_s", "gradient_allreduce_s",
    "peak_rss_mib", "peak_arrays_mib",
    "predicted_iteration_s", "predicted_samples_per_s", "predicted_speedup", "predicted_efficiency",
    "predicted_comm_share", "predicted_memory_mib", "error", "oversubscribed",
]
LAYER_COLUMNS = ["mode", "ranks", "threads", "role", "split", "layer", "compute_s", "halo_s", "collective_s", "shuffle_s",
                 "predicted_compute_s", "predicted_halo_s", "predicted_collective_s", "predicted_shuffle_s"]
_PARTS = ("compute", "halo", "collective", "shuffle")


def add_arguments(p):
    p.add_argument("--model", default="meshnet", help="a zoo model (default meshnet)")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="one sample's shape, CxHxW or CxDxHxW (default: 18x512x512 for meshnet, else the model's "
                        "usual input)")
    p.add_argument("--batch", type=int, default=2, help="global batch (weak: at the smallest rank count; default 2)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. --set widths=[16,16] (repeatable)")
    p.add_argument("--ranks", default="1,2", help="rank counts, one thread per rank (default 1,2)")
    p.add_argument("--mode", choices=("strong", "weak"), default="strong",
                   help="strong: the same global batch at every rank count; weak: the batch grows with the ranks")
    p.add_argument("--grids", default="auto", help="splits: auto (= sample,spatial,plan) or a comma list of "
                   "sample, spatial, hybrid, plan and grids like 1x2x1")
    p.add_argument("--threads", default="2", help="thread counts to run on 1 rank beside them (strong mode; "
                   "default 2; '' for none)")
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS/OpenMP/numba threads of every rank of the "
                   "sweep (default 1; the predictions assume the machine profile's threads per rank)")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration (default 3)")
    p.add_argument("--overlap", choices=("on", "off"), default="on",
                   help="compute convolution interiors while halos travel (default on)")
    p.add_argument("--machine", default=None, help="machine profile for the predictions (default: this host's "
                   "shipped profile, else the newest CPU profile)")
    p.add_argument("--out", default="bench-out", help="folder for the results (default bench-out)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    p.add_argument("--here", action="store_true", help="measure on the ranks this process was started with "
                   "(under mpiexec or srun) and write OUT/points/*.json; the SLURM sweep uses this")
    p.add_argument("--only", default=None, help="with --here: measure only this split (default: every split; the "
                   "peak resident set then covers the splits measured before in the same process)")
    p.add_argument("--role", choices=("sweep", "threads"), default="sweep", help=argparse.SUPPRESS)
    p.add_argument("--merge", action="store_true", help="only write the tables and plots from OUT/points/*.json")
    p.add_argument("--list-splits", type=int, default=None, metavar="RANKS",
                   help="print the distinct splits to measure at RANKS ranks, one per line, and exit")


# --- what to run ----------------------------------------------------------------------------------
def _ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def _shape(args):
    from ..nn.models import DEFAULT_INPUTS
    if args.input:
        try:
            return tuple(int(v) for v in args.input.lower().split("x"))
        except ValueError:
            raise SystemExit(f"hpcnn bench scaling: --input takes sizes like 18x512x512, received {args.input!r}")
    if args.model == "meshnet":
        return (18, 512, 512)
    if args.model not in DEFAULT_INPUTS:
        raise SystemExit(f"hpcnn bench scaling: --input is needed for model {args.model!r}")
    return DEFAULT_INPUTS[args.model]


def _options(args):
    from ..train.config import JobError, parse_options
    try:
        return parse_options(args.options)
    except JobError as e:
        raise SystemExit(f"hpcnn bench scaling: {e}") from None


def _batch(args, ranks):
    if args.mode == "strong":
        return args.batch
    first = min(_ints(args.ranks))
    if (args.batch * ranks) % first:
        raise SystemExit(f"hpcnn bench scaling: weak scaling needs batch x ranks divisible by the smallest rank "
                         f"count ({args.batch} x {ranks} / {first})")
    return args.batch * ranks // first


def _machine(args):
    from perfmodel.machine import load_profile

    from .model import _default_machine
    return load_profile(args.machine or _default_machine())


def _chain(args, ranks):
    from perfmodel.layers import walk

    from ..nn.models import build_for_input
    shape = _shape(args)
    model = build_for_input(args.model, shape, seed=0, **_options(args))
    return model, walk(model, (_batch(args, ranks),) + shape)


def _tokens(args):
    tokens = [t.strip().lower() for t in args.grids.split(",") if t.strip()]
    out = []
    for t in tokens:
        out.extend(AUTO if t == "auto" else [t])
    for t in out:
        if t not in SPLITS and not all(v.isdigit() for v in t.split("x")):
            raise SystemExit(f"hpcnn bench scaling: --grids takes auto, {', '.join(SPLITS)} or grids like 1x2x1; "
                             f"received {t!r}")
    return list(dict.fromkeys(out))


def resolve_splits(chain, ranks, machine, tokens):
    """[(label, PlanResult or None, note)] for the split tokens at `ranks` ranks.

    A uniform split's PlanResult has one grid everywhere (perfmodel.planner.uniform_plan); None with a
    note when the split is impossible here (more sample blocks than samples, blocks smaller than
    halos, no plan within the memory per rank) or an explicit grid has another rank count.
    """
    from perfmodel.grids import candidate_grids
    from perfmodel.planner import PlanError, parse_grid, plan_chain, uniform_plan, uniform_time
    from perfmodel.report import best_uniform
    nd = len(chain[0].in_shape) - 2
    batch = chain[0].in_shape[0]
    out = []
    for t in tokens:
        result, note = None, ""
        if t == "sample":
            if ranks > batch:
                note = f"{ranks} sample blocks for a batch of {batch}"
            else:
                result = uniform_plan(chain, (ranks,) + (1,) * nd, machine)
                note = "" if result else "a layer refuses the grid"
        elif t == "spatial":
            grid, why = best_uniform(chain, ranks, machine, sample=False)
            result = uniform_plan(chain, grid, machine) if grid else None
            note = "" if grid else str(why)
        elif t == "hybrid":
            best = None
            for g in candidate_grids(ranks, nd):
                if 1 < g[0] <= batch and math.prod(g[1:]) > 1:
                    u = uniform_time(chain, g, machine)
                    if u is not None and (best is None or u[0] < best[0]):
                        best = (u[0], g)
            result = uniform_plan(chain, best[1], machine) if best else None
            note = "" if best else f"no grid of {ranks} ranks splits both the batch and the sample"
        elif t == "plan":
            try:
                result = plan_chain(chain, ranks, machine)
            except PlanError as e:
                note = str(e)
        else:
            grid = parse_grid(t)
            if len(grid) != nd + 1:
                raise SystemExit(f"hpcnn bench scaling: grid {t} needs {nd + 1} entries for a {nd}-D input")
            if math.prod(grid) != ranks:
                note = "another rank count"
            else:
                result = uniform_plan(chain, grid, machine)
                note = "" if result else "a layer refuses the grid"
        out.append((t, result, note))
    return out


def _signature(result):
    """What identifies a configuration: the grid of every leaf, in order."""
    return tuple(tuple(g) for node, g, _, _ in result.layers if node is not None)


def _distinct(resolved):
    """{label measured: [labels it stands for]} in order, one per distinct configuration."""
    groups, seen = {}, {}
    for label, result, _ in resolved:
        if result is None:
            continue
        key = _signature(result)
        if key in seen:
            groups[seen[key]].append(label)
        else:
            seen[key] = label
            groups[label] = [label]
    return groups


def _grid_text(result):
    from perfmodel.planner import grid_string
    grids = [tuple(g) for node, g, _, _ in result.layers if node is not None]
    distinct = list(dict.fromkeys(grids))
    if len(distinct) == 1:
        return grid_string(distinct[0])
    common = max(distinct, key=grids.count)
    return f"{grid_string(common)} +{len(distinct) - 1} more"


# --- the worker: one configuration on the ranks it was started with ------------------------------
def _measure(args, label, result, splits, machine):
    import numpy as np

    from perfmodel.report import breakdown, to_plan

    from .. import parallel
    from ..nn.models import build_for_input
    from ..parallel.mpi import Clock, Communicator
    from .probe import LayerProbe, training_step

    world = Communicator.world()
    ranks = world.size
    shape = _shape(args)
    batch = _batch(args, ranks)
    global_shape = (batch,) + shape
    plan = to_plan(result)

    def build():
        model = build_for_input(args.model, shape, seed=0, **_options(args))
        dm = parallel.distribute(model, plan=plan, overlap=args.overlap == "on")
        first = parallel.Distribution(world, plan.grid_for(next(model.named_leaves())[0]))
        rng = np.random.default_rng(world.rank)
        xt = parallel.DistTensor(rng.standard_normal(first.local_shape(global_shape), dtype=np.float32), first,
                             global_shape)
        momentum = {name: np.zeros_like(p) for name, p, _ in model.parameters()}
        return model, dm, xt, momentum

    # warm up (numba loads or compiles its kernels, buffers are allocated), then trace one iteration on
    # fresh objects: the traced peak is what the model, its data and one iteration allocate
    model, dm, xt, momentum = build()
    training_step(dm, xt, momentum)
    del model, dm, xt, momentum
    gc.collect()
    tracemalloc.start()
    model, dm, xt, momentum = build()
    training_step(dm, xt, momentum)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    probe = LayerProbe(dm)
    times, comm = [], []
    for _ in range(args.iterations):
        world.barrier()
        before = world.clock.snapshot()
        t0 = time.perf_counter()
        training_step(dm, xt, momentum)
        elapsed = time.perf_counter() - t0
        comm.append(Clock.difference(before, world.clock.snapshot()))
        times.append(world.allreduce_scalar(elapsed, "max"))
    local = {k: statistics.median(c[k] for c in comm) for k in comm[0]}
    every = world.allgather_object({"comm": local, "comm_total": statistics.median(sum(c.values()) for c in comm),
                                          "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                          "traced": traced_peak})
    layers = probe.summary(world)
    if world.rank != 0:
        return None
    predicted = breakdown(result)
    p_comm = (sum(v["halo_s"] + v["collective_s"] + v["shuffle_s"] for v in predicted["layers"].values())
              + predicted["gradient_allreduce_s"] + predicted["block_shuffle_s"])
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    return {
        "mode": args.mode, "model": args.model, "input": "x".join(map(str, shape)), "batch": batch,
        "ranks": ranks, "threads": threads, "role": args.role, "label": label, "splits": splits, "grid": _grid_text(result),
        "overlap": args.overlap, "iterations_s": times, "iteration_s": statistics.median(times),
        "best_s": min(times),
        "comm_s": {k: max(r["comm"][k] for r in every) for k in every[0]["comm"]},
        "comm_total_s": max(r["comm_total"] for r in every),
        "peak_rss_bytes": max(r["rss"] for r in every), "peak_arrays_bytes": max(r["traced"] for r in every),
        "layers": layers, "predicted": {**predicted, "comm_s": p_comm}, "machine": machine.path or machine.name,
        "host": socket.gethostname(), "cpu_count": os.cpu_count(),
        "command": "hpcnn bench scaling " + " ".join(sys.argv[sys.argv.index("scaling") + 1:])
        if "scaling" in sys.argv else "",
    }


def _here(args):
    from ..parallel.mpi import Communicator, install_abort_on_error
    install_abort_on_error()
    world = Communicator.world()
    ranks = world.size
    machine = _machine(args)
    _, chain = _chain(args, ranks)
    resolved = resolve_splits(chain, ranks, machine, _tokens(args))
    groups = _distinct(resolved)
    by_label = {label: result for label, result, _ in resolved}
    todo = [args.only] if args.only else list(groups)
    folder = os.path.join(args.out, "points")
    if world.rank == 0:
        os.makedirs(folder, exist_ok=True)
        for label, result, note in resolved:
            if result is None:
                print(f"hpcnn bench scaling: {ranks} rank(s): no {label} split ({note})", flush=True)
    for label in todo:
        if label not in groups:
            raise SystemExit(f"hpcnn bench scaling: split {label!r} is not measured at {ranks} ranks "
                             f"(distinct splits: {', '.join(groups) or 'none'})")
        point = _measure(args, label, by_label[label], groups[label], machine)
        if point is not None:
            threads = point["threads"]
            path = os.path.join(folder, f"{args.mode}-{args.role}-r{ranks}-t{threads}-{label}.json")
            with open(path, "w") as f:
                json.dump(point, f, indent=1)
            predicted = (f"predicted {point['predicted']['iteration_s']:.3f} s" if args.role == "sweep" else
                         "(the model predicts the profile's threads per rank)")
            print(f"  {ranks} rank(s) x {threads} thread(s), {label} ({point['grid']}): "
                  f"{point['iteration_s']:.3f} s per iteration, {predicted}", flush=True)
    return 0


# --- the driver -----------------------------------------------------------------------------------
def _worker_argv(args):
    argv = ["--model", args.model, "--batch", str(args.batch), "--ranks", args.ranks, "--mode", args.mode,
            "--grids", args.grids, "--iterations", str(args.iterations), "--overlap", args.overlap,
            "--threads-per-rank", str(args.threads_per_rank), "--out", args.out]
    if args.input:
        argv += ["--input", args.input]
    if args.machine:
        argv += ["--machine", args.machine]
    for item in args.options:
        argv += ["--set", item]
    return argv


def _launch(args, ranks, threads, label, role):
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "hpcnn.cli", "bench", "scaling",
           *_worker_argv(args), "--here", "--only", label, "--role", role]
    print(f"running {ranks} rank(s) x {threads} thread(s), split {label}", flush=True)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"hpcnn bench scaling: {ranks} rank(s) x {threads} thread(s), {label}, took longer than "
                         f"--timeout {args.timeout:g} s") from None
    sys.stdout.write(p.stdout)
    if p.returncode != 0:
        raise SystemExit(f"hpcnn bench scaling: {ranks} rank(s) x {threads} thread(s), {label}, failed "
                         f"(exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")


def _drive(args):
    machine = _machine(args)
    tokens = _tokens(args)
    ranks_list = _ints(args.ranks)
    if not ranks_list or min(ranks_list) < 1:
        raise SystemExit(f"hpcnn bench scaling: --ranks takes positive rank counts, received {args.ranks!r}")
    folder = os.path.join(args.out, "points")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, f"{args.mode}-*.json")):
        os.remove(old)
    cores = os.cpu_count() or 1
    print(f"hpcnn bench scaling: {args.model} input {'x'.join(map(str, _shape(args)))}, {args.mode} scaling, "
          f"ranks {ranks_list}, splits {', '.join(tokens)}; predictions from {machine.path or machine.name}")
    if args.threads_per_rank < 1:
        raise SystemExit(f"hpcnn bench scaling: --threads-per-rank must be at least 1, received {args.threads_per_rank}")
    if max(ranks_list) * args.threads_per_rank > cores:
        print(f"note: {max(ranks_list)} ranks x {args.threads_per_rank} thread(s) on {cores} cores: those timings are "
              f"oversubscribed (correct runs, meaningless times)")
    runs = []
    for ranks in ranks_list:
        _, chain = _chain(args, ranks)
        resolved = resolve_splits(chain, ranks, machine, tokens)
        for label, result, note in resolved:
            if result is None and note != "another rank count":
                print(f"  {ranks} rank(s): no {label} split ({note})")
        runs += [(ranks, args.threads_per_rank, label, "sweep") for label in _distinct(resolved)]
    if args.mode == "strong":
        for threads in _ints(args.threads):
            if threads != args.threads_per_rank:
                _, chain = _chain(args, 1)
                runs += [(1, threads, label, "threads")
                         for label in _distinct(resolve_splits(chain, 1, machine, tokens))]
    for ranks, threads, label, role in runs:
        _launch(args, ranks, threads, label, role)
    return _merge(args.out)


# --- tables and plots -----------------------------------------------------------------------------
def _load_points(out):
    points = []
    for path in sorted(glob.glob(os.path.join(out, "points", "*.json"))):
        with open(path) as f:
            point = json.load(f)
        point.setdefault("role", "sweep" if point["threads"] == 1 else "threads")
        points.append(point)
    if not points:
        raise SystemExit(f"hpcnn bench scaling: no measured points in {out}/points")
    return points


def _sig(value, digits=6):
    """value to `digits` significant figures (the CSV stays readable at any time scale)."""
    return float(f"{value:.{digits}g}")


def _rows(points):
    """One row per (mode, ranks, threads, split), every split a measured point stands for."""
    rows, layer_rows = [], []
    for mode in dict.fromkeys(p["mode"] for p in points):
        part = [p for p in points if p["mode"] == mode]
        r0 = min(p["ranks"] for p in part if p["role"] == "sweep")
        base = [p for p in part if p["ranks"] == r0 and p["role"] == "sweep"]
        # the reference: the fastest configuration at the smallest rank count, one thread per rank
        ref = min(base, key=lambda p: p["iteration_s"]) if base else min(part, key=lambda p: p["iteration_s"])
        ref_rate = ref["batch"] / ref["iteration_s"]
        ref_pred = ref["batch"] / ref["predicted"]["iteration_s"]
        for p in sorted(part, key=lambda p: (p["role"] != "sweep", p["ranks"], p["threads"], p["label"])):
            cores = p["ranks"] * p["threads"]
            sweep = p["role"] == "sweep"
            rate = p["batch"] / p["iteration_s"]
            pred_t = p["predicted"]["iteration_s"] if sweep else float("nan")
            pred_rate = p["batch"] / pred_t
            # speedup over the reference configuration counted as r0 (ideal: the ranks); efficiency per core
            # of the sweep's threads per rank
            speedup = rate / ref_rate * r0
            pred_speedup = pred_rate / ref_pred * r0
            per_core = ref["threads"] / cores
            for split in p["splits"]:
                rows.append({
                    "mode": mode, "model": p["model"], "input": p["input"], "batch": p["batch"], "ranks": p["ranks"],
                    "threads": p["threads"], "role": p["role"], "cores": cores, "split": split, "grid": p["grid"],
                    "measured_as": p["label"], "iterations": len(p["iterations_s"]),
                    "iteration_s": _sig(p["iteration_s"]), "best_s": _sig(p["best_s"]),
                    "samples_per_s": _sig(rate), "speedup": _sig(speedup),
                    "efficiency": _sig(speedup * per_core),
                    "comm_s": _sig(p["comm_total_s"]), "comm_share": _sig(p["comm_total_s"] / p["iteration_s"]),
                    **{f"{k}_s": _sig(v) for k, v in p["comm_s"].items()},
                    "peak_rss_mib": _sig(p["peak_rss_bytes"] / 2**20),
                    "peak_arrays_mib": _sig(p["peak_arrays_bytes"] / 2**20),
                    "predicted_iteration_s": _sig(pred_t), "predicted_samples_per_s": _sig(pred_rate),
                    "predicted_speedup": _sig(pred_speedup),
                    "predicted_efficiency": _sig(pred_speedup * per_core),
                    "predicted_comm_share": _sig(p["predicted"]["comm_s"] / p["predicted"]["iteration_s"])
                    if sweep else float("nan"),
                    "predicted_memory_mib": _sig(p["predicted"]["memory_bytes"] / 2**20),
                    "error": _sig(pred_t / p["iteration_s"] - 1),
                    "oversubscribed": cores > (p.get("cpu_count") or cores),
                })
            for name, v in p["layers"].items():
                q = p["predicted"]["layers"].get(name, {})
                layer_rows.append({
                    "mode": mode, "ranks": p["ranks"], "threads": p["threads"], "role": p["role"], "split": p["label"],
                    "layer": name,
                    **{f"{k}_s": _sig(v[f"{k}_s"]) for k in _PARTS},
                    **{f"predicted_{k}_s": _sig(q.get(f"{k}_s", float("nan"))) for k in _PARTS}})
    return rows, layer_rows


def _merge(out):
    points = _load_points(out)
    rows, layer_rows = _rows(points)
    write_csv(os.path.join(out, "scaling.csv"), CSV_COLUMNS, rows)
    write_csv(os.path.join(out, "scaling_layers.csv"), LAYER_COLUMNS, layer_rows)
    errors = [abs(r["error"]) for r in rows if r["role"] == "sweep" and not r["oversubscribed"]]
    summary = {"median_abs_error": statistics.median(errors) if errors else None,
               "max_abs_error": max(errors) if errors else None}
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump({"summary": summary, "rows": rows, "points": points}, f, indent=1)
    written = ["scaling.csv", "scaling_layers.csv", "scaling.json"]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        written += _plot(rows, [p for p in points if p["mode"] == mode], mode, out)
    _print_table(rows, summary, points)
    print(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    return 0


def _print_table(rows, summary, points):
    p0 = points[0]
    print(f"\nhpcnn bench scaling: {p0['model']} input {p0['input']}; predictions from {p0['machine']}")
    print(f"{'mode':6} {'ranks':>5} {'thr':>3} {'split':>8} {'grid':>12} {'batch':>5} {'s/iter':>8} {'pred':>8} "
          f"{'error':>7} {'samples/s':>10} {'speedup':>7} {'pred':>6} {'eff':>5} {'comm %':>7} {'pred %':>7} "
          f"{'RSS MiB':>8} {'arrays':>8} {'pred':>8}")
    for r in rows:
        print(f"{r['mode']:6} {r['ranks']:5d} {r['threads']:3d} {r['split']:>8} {r['grid']:>12} {r['batch']:5d} "
              f"{r['iteration_s']:8.3f} {r['predicted_iteration_s']:8.3f} {100 * r['error']:6.1f}% "
              f"{r['samples_per_s']:10.3f} {r['speedup']:7.2f} {r['predicted_speedup']:6.2f} {r['efficiency']:5.2f} "
              f"{100 * r['comm_share']:6.1f}% {100 * r['predicted_comm_share']:6.1f}% {r['peak_rss_mib']:8.0f} "
              f"{r['peak_arrays_mib']:8.0f} {r['predicted_memory_mib']:8.0f}"
              + ("  (oversubscribed)" if r["oversubscribed"] else ""))
    if summary["median_abs_error"] is not None:
        print(f"prediction error per iteration (the sweep's points, not oversubscribed): median "
              f"{100 * summary['median_abs_error']:.1f}%, largest {100 * summary['max_abs_error']:.1f}%")


def _plot(rows, points, mode, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plots")
        return []
    part = [r for r in rows if r["mode"] == mode and r["role"] == "sweep"]
    splits = list(dict.fromkeys(r["split"] for r in part))
    ranks = sorted({r["ranks"] for r in part})
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, split in enumerate(splits):
        rs = sorted((r for r in part if r["split"] == split), key=lambda r: r["ranks"])
        c = colors[i % len(colors)]
        x = [r["ranks"] for r in rs]
        size = 11 - 2.5 * min(i, 3)   # splits measured as one configuration lie on top of each other
        ax1.plot(x, [r["speedup"] for r in rs], "o-", color=c, ms=size, label=f"{split} measured")
        ax1.plot(x, [r["predicted_speedup"] for r in rs], "s--", color=c, mfc="none", ms=size,
                 label=f"{split} predicted")
        ax2.plot(x, [r["efficiency"] for r in rs], "o-", color=c, ms=size, label=f"{split} measured")
        ax2.plot(x, [r["predicted_efficiency"] for r in rs], "s--", color=c, mfc="none", ms=size,
                 label=f"{split} predicted")
    threaded = [r for r in rows if r["mode"] == mode and r["role"] == "threads" and r["split"] == r["measured_as"]]
    for r in threaded:
        ax1.plot([r["cores"] / max(part[0]["threads"], 1) if part else r["cores"]], [r["speedup"]], "k^", label=f"1 rank x {r['threads']} threads ({r['grid']})")
    if ranks:
        ax1.plot([min(ranks), max(ranks)], [min(ranks), max(ranks)], "k:", lw=1, label="ideal")
    ax2.axhline(1.0, color="k", ls=":", lw=1)
    ax2.set_ylim(0, max([1.1] + [r["efficiency"] + 0.05 for r in part]))
    threads = {r["threads"] for r in part}
    per_rank = f"{threads.pop()} thread(s) each" if len(threads) == 1 else "threads vary"
    ax1.set_xlabel(f"ranks ({per_rank})")
    ax1.set_ylabel("speedup" if mode == "strong" else "throughput speedup (samples/s)")
    ax1.set_title(f"{mode} scaling: speedup")
    ax2.set_xlabel(f"ranks ({per_rank})")
    ax2.set_ylabel("parallel efficiency")
    ax2.set_title("efficiency (speedup per core)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.legend(fontsize=7)
    # time per iteration by part, measured (solid) and predicted (hatched), per measured configuration
    pts = sorted((p for p in points if p["role"] == "sweep"), key=lambda p: (p["ranks"], p["label"]))
    names = ["compute", "halo", "collective", "shuffle", "gradient allreduce", "other"]
    labels = []
    for j, p in enumerate(pts):
        measured = _parts_measured(p)
        predicted = _parts_predicted(p)
        for k, (vals, hatch) in enumerate(((measured, None), (predicted, "//"))):
            bottom = 0.0
            for n, name in enumerate(names):
                ax3.bar(j + (k - 0.5) * 0.38, vals[name], 0.36, bottom=bottom, color=colors[n % len(colors)],
                        hatch=hatch, edgecolor="white" if hatch else None,
                        label=name if (j == 0 and k == 0) else None)
                bottom += vals[name]
        labels.append(f"{p['ranks']}r {p['label']}\n{p['grid']}")
    ax3.set_xticks(range(len(pts)), labels, fontsize=7)
    ax3.set_ylabel("seconds per iteration")
    ax3.set_title("measured (left) and predicted (right, hatched)")
    ax3.legend(fontsize=7)
    p0 = points[0]
    fig.suptitle(f"hpcnn bench scaling: {p0['model']} {p0['input']}, {mode} (batch {', '.join(str(b) for b in sorted({p['batch'] for p in points}))}); "
                 f"predictions: {os.path.basename(str(p0['machine']))}", fontsize=10)
    fig.tight_layout()
    name = f"scaling_{mode}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return [name, _plot_breakdown(points, mode, out, plt, colors)]


def _parts_measured(p):
    layers = p["layers"].values()
    parts = {k: sum(v[f"{k}_s"] for v in layers) for k in _PARTS}
    parts["gradient allreduce"] = p["comm_s"]["gradient_allreduce"]
    # shuffles run by containers fall outside the leaves
    parts["shuffle"] += max(p["comm_s"]["shuffle"] - sum(v["shuffle_s"] for v in layers), 0.0)
    parts["other"] = max(p["iteration_s"] - sum(parts.values()), 0.0)
    return parts


def _parts_predicted(p):
    q = p["predicted"]
    layers = q["layers"].values()
    parts = {k: sum(v[f"{k}_s"] for v in layers) for k in _PARTS}
    parts["shuffle"] += q["block_shuffle_s"]
    parts["gradient allreduce"] = q["gradient_allreduce_s"]
    parts["other"] = q["other_s"]
    return parts


def _groups(names, limit=32):
    """Leaf names, or their first dotted component when there are more than `limit` leaves."""
    if len(names) <= limit:
        return {n: n for n in names}
    return {n: n.split(".")[0] for n in names}


def _plot_breakdown(points, mode, out, plt, colors):
    top = max(p["ranks"] for p in points if p["role"] == "sweep")
    pts = sorted((p for p in points if p["ranks"] == top and p["role"] == "sweep"), key=lambda p: p["label"])
    fig, axes = plt.subplots(len(pts), 1, figsize=(14, 3.6 * len(pts)), squeeze=False)
    for ax, p in zip(axes[:, 0], pts):
        group = _groups(list(p["layers"]))
        order = list(dict.fromkeys(group.values()))
        measured = {g: {k: 0.0 for k in _PARTS} for g in order}
        predicted = {g: {k: 0.0 for k in _PARTS} for g in order}
        for name, v in p["layers"].items():
            q = p["predicted"]["layers"].get(name, {})
            for k in _PARTS:
                measured[group[name]][k] += v[f"{k}_s"]
                predicted[group[name]][k] += q.get(f"{k}_s", 0.0)
        for j, g in enumerate(order):
            for k, (vals, hatch) in enumerate(((measured, None), (predicted, "//"))):
                bottom = 0.0
                for n, part in enumerate(_PARTS):
                    value = vals[g][part] * 1e3
                    ax.bar(j + (k - 0.5) * 0.4, value, 0.38, bottom=bottom, color=colors[n], hatch=hatch,
                           edgecolor="white" if hatch else None,
                           label=(part if part != "collective" else "allreduce (collectives)")
                           if (j == 0 and k == 0) else None)
                    bottom += value
        ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("ms per iteration")
        ax.set_title(f"{p['ranks']} ranks, {p['label']} ({p['grid']}): per layer, measured (left) and predicted "
                     f"(right, hatched); gradient allreduce wait after backward: measured "
                     f"{p['comm_s']['gradient_allreduce'] * 1e3:.1f} ms, predicted "
                     f"{p['predicted']['gradient_allreduce_s'] * 1e3:.1f} ms", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"breakdown_{mode}.png"
    fig.savefig(os.path.join(out, name), dpi=100)
    plt.close(fig)
    return name


def run(args):
    if args.merge:
        return _merge(args.out)
    if args.list_splits is not None:
        machine = _machine(args)
        _, chain = _chain(args, args.list_splits)
        for label in _distinct(resolve_splits(chain, args.list_splits, machine, _tokens(args))):
            print(label)
        return 0
    if args.here:
        return _here(args)
    if any(name in os.environ for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        raise SystemExit("hpcnn bench scaling starts its own mpiexec runs: start it without mpiexec, or add --here "
                         "to measure on the ranks it was started with")
    return _drive(args)
