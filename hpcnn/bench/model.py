"""Performance model against measurement, on a held-out set: per layer and per iteration, every grid, 1..cores ranks.

The models and sizes evaluated (`HELD_OUT`) are not what calibration fits: `hpcnn calibrate` times
kernel calls of random layers, splits and blocks (hpcnn.calibrate.shapes) and trains seeded random
networks (hpcnn.calibrate.context), and never builds these networks; they also differ from the README's
scaling runs. For each model and rank count (default:
1 up to this machine's cores, so no run is oversubscribed), every candidate grid (every
factorization of P over N and the spatial dims that the planner accepts) runs training iterations
under `mpiexec -n P` (one thread per rank); forward and backward of every leaf layer are timed on
each rank (the slowest rank counts) and compared with perfmodel's prediction for the same layer and
grid. An iteration is `probe.training_step`: forward, backward of a gradient of ones (no loss, as
in the model) with the bucketed gradient allreduce, and an SGD-with-momentum step. The plan the
planner chooses is measured too, unless it is one of the grids (then it counts once), and compared
with the fastest measured candidate. The in-sample error is the profile's own: each kernel model's
median relative error on the calibration samples it was fitted to. Reported: median and largest
|error| and the mean signed error (bias), per iteration and per layer over all layers, each
distinct configuration once, against the wall time and against the ranks' CPU time (`time.process_time`,
the slowest rank's): calibration times kernels in CPU time, what dedicated cores take, so on a machine whose
cores other processes share the CPU-time errors are the model's and the wall-time ones include the others'
share; the share the ranks got (CPU / wall) is reported with them. Writes model_layers.csv,
model_iterations.csv, model.json and model.png.

Two sets. `HELD_OUT` (the default) is the one the form of the model's layer correction was chosen on:
for those choices it served as a validation set, and `--record` writes its errors into the profile.
`FRESH` (`--set fresh`) was added after those choices and has taken part in none: other networks and sizes
(resnet18 at 40², a 3-level U-Net, a two-layer meshnet of 3 input channels, a 2-block cosmoflow 16 wide),
the honest test set.
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

__all__ = ["add_arguments", "run", "HELD_OUT", "FRESH", "SETS", "errors"]

# The held-out set: name -> (zoo model, input shape (C, *S), batch, build options)
HELD_OUT = {
    "unet2d": ("unet2d", (2, 160, 160), 2, {"width": 12, "depth": 2}),
    "meshnet": ("meshnet", (12, 384, 384), 1, {"widths": (24, 24, 24), "dilations": (1, 2, 1)}),
    "resnet34": ("resnet34", (3, 48, 48), 4, {"small_input": True, "width": 16}),
    "cosmoflow": ("cosmoflow", (2, 48, 48, 48), 2, {"width": 8, "kernel_size": 3, "num_blocks": 3}),
}
# A second held-out set (`--set fresh`), added after every choice of the model's form was made on the first: no
# fit, correction or design choice has seen its networks or sizes, so its errors are the honest test set's.
FRESH = {
    "resnet18": ("resnet18", (3, 40, 40), 4, {"small_input": True, "width": 24}),
    "unet2d-deep": ("unet2d", (1, 128, 128), 1, {"width": 8, "depth": 3}),
    "meshnet-thin": ("meshnet", (3, 256, 256), 2, {"widths": (16, 16), "dilations": (1, 4)}),
    "cosmoflow-wide": ("cosmoflow", (4, 32, 32, 32), 2, {"width": 16, "kernel_size": 3, "num_blocks": 2}),
}
SETS = {"held-out": HELD_OUT, "fresh": FRESH}


def add_arguments(p):
    p.add_argument("--set", default="held-out", choices=sorted(SETS), dest="network_set",
                   help="held-out: the set the model's form was chosen on (a validation set; --record writes its "
                   "errors); fresh: a second set no choice has seen (the test set)")
    p.add_argument("--models", default=None, help="comma-separated, from the set's: " + "; ".join(
        f"{k}: {', '.join(v)}" for k, v in SETS.items()) + " (default: all of the set)")
    p.add_argument("--ranks", default=None, help="comma-separated rank counts (default 1 up to this machine's cores)")
    p.add_argument("--machine", default=None, help="machine profile (default: of the shipped profiles (this host's first), "
                   "the one measured on the machine most like this one)")
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per configuration, median (default 5)")
    p.add_argument("--out", default="bench-out", help="folder for the CSV files and the PNG plot")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per mpiexec run")
    p.add_argument("--record", action="store_true", help="write the held-out errors into the profile file (its "
                   "\"held_out_error\" section, which `hpcnn plan` quotes); only for a profile measured on this machine")


# --- the worker (runs under mpiexec) --------------------------------------------------------------
def _worker(spec_path, out_path):
    from .. import models, parallel
    from ..parallel.abort import install_abort_on_error
    from ..parallel.mpi import Communicator
    from ..plan import Plan
    from ..calibrate.probe import LayerProbe, training_step
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
        iters, cpus = [], []
        for i in range(job["iterations"] + 1):
            if i == 1:
                probe.clear()
            comm.barrier()
            c0 = time.process_time()
            t0 = time.perf_counter()
            training_step(dm, xt, momentum)
            t = comm.allreduce_scalar(time.perf_counter() - t0, "max")
            cpu = comm.allreduce_scalar(time.process_time() - c0, "max")
            if i > 0:
                iters.append(t)
                cpus.append(cpu)
        layers = {name: [v["forward_s"], v["backward_s"], v["cpu_s"]] for name, v in probe.summary(comm).items()}
        results.append({**{k: job[k] for k in ("model", "case", "grid", "label")}, "iteration": float(np.median(iters)),
                        "iteration_cpu": float(np.median(cpus)), "layers": layers})
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


def errors(pairs):
    """{median, largest, bias} of the relative errors (predicted - measured) / measured over (measured, predicted)."""
    rel = np.array([(p - m) / m for m, p in pairs if m > 0 and p is not None and np.isfinite(p)])
    if not rel.size:
        return {"median": float("nan"), "largest": float("nan"), "bias": float("nan"), "count": 0}
    return {"median": float(np.median(np.abs(rel))), "largest": float(np.abs(rel).max()), "bias": float(rel.mean()),
            "count": int(rel.size)}


def _jobs(networks, names, ranks, machine, iterations):
    """(mpiexec jobs, {(model, label): prediction}) of one rank count: every accepted grid and the plan, for the
    networks `names` of the set `networks` (name -> (zoo model, input, batch, options))."""
    from perfmodel.grids import candidate_grids, grid_refusal
    from perfmodel.layers import iter_layers, model_chain
    from perfmodel.planner import grid_string, plan_chain
    from perfmodel.report import to_plan

    from ..nn.models import input_options
    jobs, predictions = [], {}
    for name in names:
        model, shape, batch, options = networks[name]
        _, chain = model_chain(model, shape, batch, **options)
        common = {"model": model, "case": name, "options": {**options, **input_options(model, shape)},
                  "input": (batch,) + tuple(shape), "iterations": iterations}
        grids = [g for g in candidate_grids(ranks, len(shape) - 1)
                 if not any(grid_refusal(layer, g) for layer in iter_layers(chain))]
        for grid in grids:
            label = grid_string(grid)
            jobs.append({**common, "grid": list(grid), "label": label})
            predictions[(name, label)] = _predict(tuple(grid), machine, chain)
        result = plan_chain(chain, ranks, machine)
        plan = to_plan(result).to_dict()
        used = {tuple(g) for g in [plan["default_grid"]] + [e["grid"] for e in plan["layers"]]}
        if len(used) == 1 and tuple(plan["default_grid"]) in map(tuple, grids):
            predictions[(name, "plan")] = ("same", grid_string(plan["default_grid"]))   # one grid: measured already
        else:
            jobs.append({**common, "grid": plan["default_grid"], "label": "plan", "plan": plan})
            predictions[(name, "plan")] = _predict(result, machine, chain)
    return jobs, predictions


def _in_sample(machine):
    """{op: median |relative error| of its fit on the calibration's own samples} (a profile without fits: {})."""
    return {op: m.spec["fit"]["median_abs_relative"] for op, m in machine.kernels.items() if "fit" in m.spec}


def run(args):
    from perfmodel import provenance

    from ..threads import available_cores
    machine = host_profile(args.machine)
    print(provenance.check(machine)[1])
    note = provenance.threads_note(machine, 1)          # every rank of these runs has one thread
    if note:
        print(note)
    set_name = args.network_set
    networks = SETS[set_name]
    if args.record and set_name != "held-out":
        raise SystemExit("hpcnn bench model: --record writes the held-out set's errors (the ones `hpcnn plan` "
                         "quotes); run --set fresh without it")
    names = [m.strip() for m in (args.models or ",".join(networks)).split(",") if m.strip()]
    for m in names:
        if m not in networks:
            raise SystemExit(f"hpcnn bench model: unknown model {m!r} in the {set_name} set; expected some of "
                             f"{', '.join(networks)}")
    cores = available_cores()
    ranks_list = ([int(r) for r in args.ranks.split(",")] if args.ranks else list(range(1, cores + 1)))
    os.makedirs(args.out, exist_ok=True)
    print(f"machine profile: {machine.path or machine.name}; {set_name} set: {', '.join(names)}")
    rows_layers, rows_iter, plan_rows = [], [], []
    for ranks in ranks_list:
        jobs, predictions = _jobs(networks, names, ranks, machine, args.iterations)
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
        by_case = {}
        for res in measured:
            pred_iter, pred_layers = predictions[(res["case"], res["label"])]
            over = ranks > cores
            rows_iter.append((ranks, res["case"], res["label"], res["iteration"], pred_iter, over, res["iteration_cpu"]))
            by_case.setdefault(res["case"], {})[res["label"]] = res["iteration"]
            for lname, (f, b, cpu) in res["layers"].items():
                rows_layers.append((ranks, res["case"], res["label"], lname, f + b,
                                    pred_layers.get(lname, float("nan")), over, cpu))
        for case, times in by_case.items():
            fastest = min((label for label in times if label != "plan"), key=times.get)
            same = predictions[(case, "plan")]
            planned_label = same[1] if same[0] == "same" else "plan"
            plan_rows.append((ranks, case, planned_label, times[planned_label], fastest, times[fastest]))
    summary = _report(rows_layers, rows_iter, plan_rows, _in_sample(machine), args.out, machine,
                      {k: networks[k] for k in names}, set_name)
    if args.record:
        _record(machine, summary, names, ranks_list)
    return 0


def _record(machine, summary, names, ranks_list):
    """Write the held-out errors into the profile's file (see `perfmodel.provenance.held_out_section`)."""
    from perfmodel import provenance
    if machine.path is None or not provenance.check(machine)[0] or "measured_on" not in machine.doc:
        raise SystemExit(f"hpcnn bench model --record: profile {machine.name!r} was not measured on this machine "
                         f"(or has no file): its held-out error here would not be its own")
    held = summary["held_out"]
    command = f"hpcnn bench model --machine {machine.path} --models {','.join(names)} --record"
    text = (f"measured by `{command}` on {' and '.join(map(str, ranks_list))} rank(s): relative errors (predicted - "
            f"measured) / measured of whole iterations and of every layer of the held-out networks {', '.join(names)} "
            f"(`HELD_OUT` in hpcnn/bench/model.py, which calibration does not sample), wall time, each configuration "
            f"once; the ranks got {held['cpu_share'] * 100:.0f}% of a core")
    section, source = provenance.held_out_section(held["per_iteration"], held["per_layer"], names, command, text)
    machine.doc["held_out_error"] = section
    machine.doc["sources"]["held-out"] = source
    machine.save(machine.path)
    print(f"recorded the held-out errors in {machine.path}")


def cpu_share(rows_iter):
    """The share of a core the ranks' processes got over the runs (CPU seconds / wall seconds, iterations of
    every configuration): near 1 on a quiet machine, lower where other processes share its cores."""
    wall = sum(r[3] for r in rows_iter)
    return sum(r[6] for r in rows_iter) / wall if wall > 0 else float("nan")


def _report(rows_layers, rows_iter, plan_rows, in_sample, out, machine, networks, set_name):
    with open(os.path.join(out, "model_layers.csv"), "w") as f:
        f.write("ranks,model,grid,layer,measured_s,predicted_s,oversubscribed,measured_cpu_s\n")
        for r in rows_layers:
            f.write(",".join(map(str, r)) + "\n")
    with open(os.path.join(out, "model_iterations.csv"), "w") as f:
        f.write("ranks,model,grid,measured_s,predicted_s,oversubscribed,measured_cpu_s\n")
        for r in rows_iter:
            f.write(",".join(map(str, r)) + "\n")
    print(f"\n{'ranks':>5s} {'model':10s} {'grid':>10s} {'measured ms':>12s} {'CPU ms':>9s} {'predicted ms':>13s} "
          f"{'error':>7s} {'vs CPU':>7s}")
    for ranks, m, label, meas, pred, over, cpu in rows_iter:
        print(f"{ranks:5d} {m:10s} {label:>10s} {meas * 1e3:12.2f} {cpu * 1e3:9.2f} {pred * 1e3:13.2f} "
              f"{(pred - meas) / meas * 100:6.1f}% {(pred - cpu) / cpu * 100:6.1f}%"
              + ("  (oversubscribed: left out)" if over else ""))
    held_iter = errors([(m, p) for *_, m, p, over, _ in rows_iter if not over])
    held_layer = errors([(m, p) for *_, m, p, over, _ in rows_layers if not over])
    cpu_iter = errors([(c, p) for *_, p, over, c in rows_iter if not over])
    cpu_layer = errors([(c, p) for *_, p, over, c in rows_layers if not over])
    share = cpu_share([r for r in rows_iter if not r[5]])
    summary = {"set": set_name,
               "held_out": {"models": {k: {"model": v[0], "input": list(v[1]), "batch": v[2], "options": v[3]}
                                       for k, v in networks.items()},
                            "per_iteration": held_iter, "per_layer": held_layer,
                            "cpu_share": share, "per_iteration_cpu": cpu_iter, "per_layer_cpu": cpu_layer},
               "in_sample": {"kernel_fit_median_abs": in_sample}, "machine": machine.path or machine.name,
               "plans": [{"ranks": r, "model": m, "plan": lbl, "plan_s": t, "fastest": fl, "fastest_s": ft}
                         for r, m, lbl, t, fl, ft in plan_rows]}
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if in_sample:
        print("\nin sample (each kernel model on the calibration samples it was fitted to): median |error| "
              + ", ".join(f"{op} {v * 100:.0f}%" for op, v in in_sample.items()))
    print(f"the ranks got {share * 100:.0f}% of a core on average (CPU time / wall time); the profile's kernel "
          f"times are CPU times (what dedicated cores take), so on a shared machine the errors against CPU time "
          f"are the model's, those against wall time include the other processes' share")
    for what, e in (("per iteration, wall", held_iter), ("per layer (all layers), wall", held_layer),
                    ("per iteration, CPU time", cpu_iter), ("per layer (all layers), CPU time", cpu_layer)):
        print(f"{set_name} set, {what}: median |error| {e['median'] * 100:.1f}%, largest {e['largest'] * 100:.1f}%, "
              f"mean signed error {e['bias'] * 100:+.1f}% ({e['count']} configurations)")
    for ranks, m, label, planned, fastest, t_fastest in plan_rows:
        print(f"{ranks} rank(s) {m}: the plan ({label}) measures {planned * 1e3:.2f} ms, the fastest candidate "
              f"({fastest}) {t_fastest * 1e3:.2f} ms: {(planned / t_fastest - 1) * 100:+.1f}%")
    _plot(rows_layers, rows_iter, out)
    return summary


def _plot(rows_layers, rows_iter, out):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, data, title in ((axes[0], [(r[4], r[5]) for r in rows_layers], "per layer (fwd + bwd)"),
                            (axes[1], [(r[3], r[4]) for r in rows_iter], "per iteration")):
        d = np.array([(m, p) for m, p in data if m > 0 and np.isfinite(p) and p > 0])
        if d.size == 0:
            continue
        ax.loglog(d[:, 0] * 1e3, d[:, 1] * 1e3, ".", alpha=0.6)
        lo, hi = d.min() * 1e3, d.max() * 1e3
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.set_title(title + " (held out)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "model.png"), dpi=120)
    print(f"wrote {out}/model_layers.csv, {out}/model_iterations.csv, {out}/model.json, {out}/model.png")


if __name__ == "__main__":
    from ..kernels.cpu._memory import keep_freed_arrays
    keep_freed_arrays()             # as every hpcnn entry point (hpcnn.cli.main)
    _worker(sys.argv[1], sys.argv[2])
