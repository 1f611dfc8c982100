"""Performance model against measurement: per layer and per iteration, every candidate grid, 1 and 2 ranks.

For each model (meshnet, resnet18 with small input, a small cosmoflow) and rank count, every
candidate grid (every factorization of P over N and the spatial dims that the planner accepts)
runs a few training iterations under `mpiexec -n P` (one thread per rank); forward and backward
of every leaf layer are timed on each rank (the slowest rank counts) and compared with the
prediction of `perfmodel` for the same layer and grid. An iteration is `probe.training_step`:
forward, backward of a gradient of ones (no loss, as in the model) with the bucketed gradient
allreduce, and an SGD-with-momentum step. The plan the planner chooses is measured too and compared with
the fastest measured candidate. Writes model_layers.csv, model_iterations.csv and model.png.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

from .host_profile import host_profile
from .launch import run_ranks
from .output import pyplot

__all__ = ["add_arguments", "run", "CASES"]

# name -> (input shape (C, *S), batch, build options)
CASES = {
    "meshnet": ((18, 256, 256), 2, {}),
    "resnet18": ((3, 32, 32), 8, {"small_input": True}),
    "cosmoflow": ((4, 32, 32, 32), 2, {}),
}


def add_arguments(p):
    p.add_argument("--models", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--machine", default=None, help="machine profile (default: the shipped profile of this host, "
                   "else the newest CPU profile in perfmodel/profiles)")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration (default 3)")
    p.add_argument("--out", default="bench-out", help="folder for the CSV files and the PNG plot")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per mpiexec run")


# --- the worker (runs under mpiexec) --------------------------------------------------------------
def _worker(spec_path, out_path):
    from .. import models, parallel
    from ..parallel.mpi import Communicator, install_abort_on_error
    from ..plan import Plan
    from .probe import LayerProbe, training_step
    install_abort_on_error()
    comm = Communicator.world()
    with open(spec_path) as f:
        spec = json.load(f)
    results = []
    for job in spec["jobs"]:
        model = models.build(job["model"], seed=0, **job["options"])
        shape = tuple(job["input"])
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        if job.get("plan"):
            plan = Plan.from_dict(job["plan"])
            dm = parallel.distribute(model, plan=plan)
            first = parallel.Distribution(comm, plan.grid_for(next(model.named_leaves())[0]))
        else:
            first = parallel.Distribution(comm, tuple(job["grid"]))
            dm = parallel.distribute(model, first)
        probe = LayerProbe(dm)
        xt = parallel.scatter(x, first)
        momentum = {name: np.zeros_like(p) for name, p, _ in model.parameters()}
        iters = []
        for i in range(job["iterations"] + 1):
            if i == 1:
                probe.clear()
            comm.barrier()
            t0 = time.perf_counter()
            training_step(dm, xt, momentum)
            t = comm.allreduce_scalar(time.perf_counter() - t0, "max")
            if i > 0:
                iters.append(t)
        layers = {name: [v["forward_s"], v["backward_s"]] for name, v in probe.summary(comm).items()}
        results.append({**{k: job[k] for k in ("model", "grid", "label")}, "iteration": float(np.median(iters)),
                        "layers": layers})
    if comm.rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)


# --- the driver --------------------------------------------------------------------------------
def _predict(grid_or_plan, machine, chain):
    """(iteration seconds, {leaf name: forward + backward seconds}) predicted for a uniform grid or a
    PlanResult; (None, {}) when a layer refuses the grid."""
    from perfmodel.planner import uniform_plan
    from perfmodel.report import breakdown
    result = uniform_plan(chain, grid_or_plan, machine) if isinstance(grid_or_plan, tuple) else grid_or_plan
    if result is None:
        return None, {}
    b = breakdown(result)
    return b["iteration_s"], {name: sum(parts.values()) for name, parts in b["layers"].items()}


def run(args):
    from perfmodel.grids import candidate_grids, grid_refusal
    from perfmodel.layers import iter_layers, model_chain
    from perfmodel.planner import grid_string, plan_chain
    from perfmodel.report import to_plan

    from perfmodel import provenance
    machine = host_profile(args.machine)
    print(provenance.check(machine)[1])
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in names:
        if m not in CASES:
            raise SystemExit(f"hpcnn bench model: unknown model {m!r}; expected some of {', '.join(CASES)}")
    ranks_list = [int(r) for r in args.ranks.split(",")]
    os.makedirs(args.out, exist_ok=True)
    print(f"machine profile: {machine.path or machine.name}")
    rows_layers, rows_iter, plan_rows = [], [], []
    for ranks in ranks_list:
        jobs, predictions = [], {}
        for m in names:
            shape, batch, options = CASES[m]
            _, chain = model_chain(m, shape, batch, **options)
            build = {**options, "in_channels": shape[0]}
            if m == "cosmoflow":
                build["input_size"] = shape[1]
            nd = len(shape) - 1
            for grid in candidate_grids(ranks, nd):
                if any(grid_refusal(layer, grid) for layer in iter_layers(chain)):
                    continue
                label = grid_string(grid)
                jobs.append({"model": m, "options": build, "input": (batch,) + tuple(shape), "grid": list(grid),
                             "label": label, "iterations": args.iterations})
                predictions[(m, label)] = _predict(tuple(grid), machine, chain)
            result = plan_chain(chain, ranks, machine)
            plan = to_plan(result).to_dict()
            jobs.append({"model": m, "options": build, "input": (batch,) + tuple(shape),
                         "grid": plan["default_grid"], "label": "plan", "plan": plan, "iterations": args.iterations})
            predictions[(m, "plan")] = _predict(result, machine, chain)
        with tempfile.TemporaryDirectory() as tmp:
            spec_path = os.path.join(tmp, "spec.json")
            out_path = os.path.join(tmp, "out.json")
            with open(spec_path, "w") as f:
                json.dump({"jobs": jobs}, f)
            print(f"{ranks} rank(s): {len(jobs)} configurations ...", flush=True)
            run_ranks(ranks, 1, ["-m", "hpcnn.bench.model", spec_path, out_path], args.timeout, "hpcnn bench model",
                      f"{ranks} rank(s), {len(jobs)} configurations")
            with open(out_path) as f:
                measured = json.load(f)
        by_model = {}
        for res in measured:
            key = (res["model"], res["label"])
            pred_iter, pred_layers = predictions[key]
            rows_iter.append((ranks, res["model"], res["label"], res["iteration"], pred_iter))
            by_model.setdefault(res["model"], []).append((res["label"], res["iteration"], pred_iter))
            for lname, (f, b) in res["layers"].items():
                rows_layers.append((ranks, res["model"], res["label"], lname, f + b,
                                    pred_layers.get(lname, float("nan"))))
        for m, entries in by_model.items():
            cands = [e for e in entries if e[0] != "plan"]
            fastest = min(cands, key=lambda e: e[1])
            planned = next(e for e in entries if e[0] == "plan")
            plan_rows.append((ranks, m, planned[1], fastest[0], fastest[1]))
    _report(rows_layers, rows_iter, plan_rows, args.out)
    return 0


def _errors(pairs):
    rel = np.array([abs(p - m) / m for m, p in pairs if m > 0 and np.isfinite(p)])
    return (float(np.median(rel)), float(rel.max())) if rel.size else (float("nan"), float("nan"))


def _report(rows_layers, rows_iter, plan_rows, out):
    with open(os.path.join(out, "model_layers.csv"), "w") as f:
        f.write("ranks,model,grid,layer,measured_s,predicted_s\n")
        for r in rows_layers:
            f.write(",".join(map(str, r)) + "\n")
    with open(os.path.join(out, "model_iterations.csv"), "w") as f:
        f.write("ranks,model,grid,measured_s,predicted_s\n")
        for r in rows_iter:
            f.write(",".join(map(str, r)) + "\n")
    print(f"\n{'ranks':>5s} {'model':10s} {'grid':>10s} {'measured ms':>12s} {'predicted ms':>13s} {'error':>7s}")
    for ranks, m, label, meas, pred in rows_iter:
        print(f"{ranks:5d} {m:10s} {label:>10s} {meas * 1e3:12.2f} {pred * 1e3:13.2f} {(pred - meas) / meas * 100:6.1f}%")
    it_med, it_max = _errors([(m, p) for *_, m, p in rows_iter])
    # per-layer errors over layers that take at least 1% of their iteration (tiny layers are noise)
    iter_time = {(r, m, g): meas for r, m, g, meas, _ in rows_iter}
    big = [(meas, pred) for r, m, g, _, meas, pred in rows_layers if meas >= 0.01 * iter_time[(r, m, g)]]
    ly_med, ly_max = _errors(big)
    al_med, al_max = _errors([(meas, pred) for *_, meas, pred in rows_layers])
    print(f"\nper iteration: median |error| {it_med * 100:.1f}%, largest {it_max * 100:.1f}% ({len(rows_iter)} runs)")
    print(f"per layer (>= 1% of the iteration): median |error| {ly_med * 100:.1f}%, largest {ly_max * 100:.1f}% "
          f"({len(big)} layers); all layers: median {al_med * 100:.1f}%, largest {al_max * 100:.1f}%")
    for ranks, m, planned, label, fastest in plan_rows:
        print(f"{ranks} rank(s) {m}: the planner's plan measures {planned * 1e3:.2f} ms, the fastest candidate "
              f"({label}) {fastest * 1e3:.2f} ms: {(planned / fastest - 1) * 100:+.1f}%")
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, data, title in ((axes[0], [(m, p) for *_, m, p in rows_layers], "per layer (fwd + bwd)"),
                            (axes[1], [(m, p) for *_, m, p in rows_iter], "per iteration")):
        d = np.array([(m, p) for m, p in data if m > 0 and np.isfinite(p) and p > 0])
        if d.size == 0:
            continue
        ax.loglog(d[:, 0] * 1e3, d[:, 1] * 1e3, ".", alpha=0.6)
        lo, hi = d.min() * 1e3, d.max() * 1e3
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "model.png"), dpi=120)
    print(f"wrote {out}/model_layers.csv, {out}/model_iterations.csv, {out}/model.png")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
