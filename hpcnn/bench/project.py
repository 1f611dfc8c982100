"""Predicted strong and weak scaling on a machine profile: sample, spatial, hybrid and planned splits (perfmodel only).

Nothing runs and nothing is measured: every number comes from `perfmodel` and the machine profile
(default `v100-nvlink-edr`, the Distconv paper's machine: 4 V100 16 GB per node, NVLink, EDR
InfiniBand). For meshnet at 18x2048x2048, ResNet-50 at 3x224x224 and CosmoFlow at 4x512^3, and
every rank count P, four ways of splitting one training iteration:

- sample: data parallelism, grid (P, 1, ..., 1); impossible when P > the global batch;
- spatial: the fastest grid with Pn = 1;
- hybrid: the fastest single grid with Pn > 1 and a spatial entry > 1;
- plan: `perfmodel.planner.plan_chain`, a grid per layer that respects the memory per rank
(the rules: `perfmodel.splits`).

A single-grid point whose memory per rank (`perfmodel.planner.uniform_plan(...).memory`, counted as a
plan's) exceeds the profile's does not fit: the fastest grid of the split that fits is taken, and
when none fits the fastest is recorded with fits = False and the reason (such points are gaps in
the plots). Strong scaling keeps the global batch fixed (--strong-batch); weak scaling keeps the
samples per rank fixed (--weak-batch, a fraction allowed: 1/4 is one sample per 4 ranks), global
batch = P x that. Speedup is samples/s over the best split's samples/s at the smallest P where any
split fits (P0); efficiency = speedup / (P / P0), which for weak scaling is t(P0) / t(P). The
communication share is halo exchanges + collectives + the exposed gradient allreduce + shuffles
over the iteration; allreduce_share is the exposed gradient allreduce alone.

Channel and filter splits (predicted): cf_layers counts the layers a split runs on a grid that splits
channels or filters (of `layers`); for the plan, without_cf_s is the iteration of the best plan
without them (`plan_chain(..., channel_splits=False)`; blank where no such plan exists), so the tables
and findings show where they pay off.

The largest sample: for P in --memory-ranks and each split, the largest spatial side S (S x S or
S^3) whose training iteration fits the memory per rank, with one sample per rank for sample
parallelism (batch = P), batch 1 for spatial and plan, and for hybrid a batch of the smallest
Pn > 1 that leaves a spatial split (one sample per sample group; the same memory as spatial on
P / Pn ranks). S is found by doubling (from the answer for fewer ranks), then bisection to within
1%; a side the model refuses (CosmoFlow needs S divisible by 2^blocks, and its blocks grow with S)
is replaced by the largest side below it that the model accepts. The grid reported is one under
which that side fits. Sides above --max-sample-elements are not searched (CosmoFlow's parameters
grow with S: at 4096^3 it has 425M of them, and building the model to count them takes seconds and
GBs); "capped" marks an answer that reached that limit.

Writes project.csv, project_memory.csv, project.json (the profile's cited sources, the batches,
every row and the findings) and project_strong.png, project_weak.png, project_efficiency.png.

    hpcnn bench project --machine v100-nvlink-edr --ranks 1..4096 --out bench-out
"""
import json
import os
import time
from collections import Counter
from fractions import Fraction

from perfmodel.as_built import as_built, measured_gpu_profile, prices
from perfmodel.planner import PlanError, plan_chain
from perfmodel.splits import SPLITS, split_plan

from ..grids import grid_parts

from .output import write_csv
from .project_cases import CASES, GIB, MODES, STRONG_BATCH, WEAK_PER_RANK, Chains
from .project_findings import findings, percent
from .project_memory import MEMORY_COLUMNS, largest_samples
from .project_plots import plot

__all__ = ["add_arguments", "run", "project", "parse_ranks", "CASES", "STRONG_BATCH", "WEAK_PER_RANK", "SPLITS",
           "COLUMNS", "MEMORY_COLUMNS"]

MEMORY_RANKS = "1,8,64,512,4096"
COLUMNS = ("model", "mode", "split", "ranks", "global_batch", "grid", "distinct_grids", "iteration_s",
           "samples_per_s", "speedup", "efficiency", "comm_share", "allreduce_share", "memory_gib", "fits",
           "reason", "cf_layers", "layers", "without_cf_s")


# --- arguments ---------------------------------------------------------------------------------
def parse_ranks(text):
    """'A..B' -> the powers of two from A to B; 'a,b,c' -> those. Sorted, unique, positive."""
    text = str(text).strip()
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            ranks = [1 << k for k in range(0, 63) if lo <= 1 << k <= hi]
        else:
            ranks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"hpcnn bench project: --ranks expects A..B or a comma list, received {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise SystemExit(f"hpcnn bench project: --ranks gives no positive rank count: {text!r}")
    return sorted(set(ranks))


def _per_model(text, option, convert):
    """'meshnet=16,resnet50=256' -> {name: convert(value)}."""
    out = {}
    for item in str(text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = convert(value.strip())
        except ValueError:
            raise SystemExit(f"hpcnn bench project: {option} expects MODEL=VALUE[,...], received {item!r}") from None
    return out


def _shape(text):
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError
    return shape


def add_arguments(p):
    p.add_argument("--machine", default="v100-nvlink-edr",
                   help="machine profile: a shipped name or a JSON file (default v100-nvlink-edr)")
    p.add_argument("--ranks", default="1..4096", help="rank counts: A..B (powers of two) or a comma list "
                   "(default 1..4096)")
    p.add_argument("--models", default=",".join(CASES), help="comma-separated (default meshnet,resnet50,cosmoflow)")
    p.add_argument("--input", action="append", default=[], metavar="MODEL=CxHxW",
                   help="another sample shape for a model, e.g. meshnet=18x256x256 (repeatable)")
    p.add_argument("--strong-batch", default="", metavar="MODEL=N,...",
                   help="global batch of strong scaling (default " + ",".join(f"{k}={v}" for k, v in
                                                                            STRONG_BATCH.items()) + ")")
    p.add_argument("--weak-batch", default="", metavar="MODEL=N,...",
                   help="samples per rank of weak scaling, a fraction allowed (default " +
                        ",".join(f"{k}={v}" for k, v in WEAK_PER_RANK.items()) + "); rank counts where "
                        "P x N is not a whole number are skipped")
    p.add_argument("--memory-ranks", default=MEMORY_RANKS,
                   help=f"rank counts of the largest-sample search (default {MEMORY_RANKS}; '' to skip)")
    p.add_argument("--max-sample-elements", type=float, default=2.0 ** 36,
                   help="largest spatial size searched, in elements of one channel (default 2^36: "
                        "262144^2 or 4096^3)")
    p.add_argument("--as-built", default="auto", metavar="PROFILE",
                   help="also project hpcnn as built: the cluster with the GPU kernel rates of PROFILE, a profile "
                        "measured with hpcnn's kernels (auto: a shipped one if any; off: do not)")
    p.add_argument("--out", default="bench-out", help="folder for project.csv/.json and the plots (default bench-out)")


# --- one point ---------------------------------------------------------------------------------
def _row(model, mode, split, ranks, batch, result, reason, machine):
    """The COLUMNS row of one split at `ranks` ranks: `split_plan`'s result and reason."""
    from perfmodel.layers import Block
    from perfmodel.planner import grid_string
    row = dict.fromkeys(COLUMNS, "")
    row.update(model=model, mode=mode, split=split, ranks=ranks, global_batch=batch, fits=False, reason=reason)
    if result is None:
        return row
    leaves = [grid for node, grid, _, _ in result.layers if node is not None and not isinstance(node, Block)]
    grids = Counter(leaves)
    row.update(cf_layers=sum(_splits_channels(g) for g in leaves), layers=len(leaves))
    t = result.totals()
    row.update(grid=grid_string(grids.most_common(1)[0][0]), distinct_grids=len(grids), iteration_s=t["iteration"],
               samples_per_s=batch / t["iteration"],
               comm_share=(t["communication"] + t["shuffle"]) / t["iteration"],
               allreduce_share=t["gradient_allreduce"] / t["iteration"], memory_gib=t["memory"] / GIB,
               fits=t["memory"] <= machine.memory_per_rank and not reason)
    return row


def _splits_channels(grid):
    p = grid_parts(grid)
    return p.channels * p.filters > 1


def _without_channel_splits(row, chain, ranks, machine):
    """The plan row's without_cf_s: the iteration of the best plan on short grids (its own when it uses none)."""
    if row["split"] != "plan" or row["iteration_s"] == "":
        return
    if row["cf_layers"] == 0:
        row["without_cf_s"] = row["iteration_s"]
        return
    try:
        other = plan_chain(chain, ranks, machine, machine.memory_per_rank, channel_splits=False)
    except PlanError:
        return
    if other.memory <= machine.memory_per_rank:
        row["without_cf_s"] = other.totals()["iteration"]


def _add_speedups(rows):
    """speedup over the best split at the smallest P where any split fits; efficiency = speedup / (P / P0)."""
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        return None
    p0 = min(r["ranks"] for r in fitting)
    base = max(r["samples_per_s"] for r in fitting if r["ranks"] == p0)
    for r in fitting:
        r["speedup"] = r["samples_per_s"] / base
        r["efficiency"] = r["speedup"] / (r["ranks"] / p0)
    return p0


# --- the sweep ---------------------------------------------------------------------------------
def project(machine, cases, ranks_list, strong, weak, memory_ranks=(), max_elements=2.0 ** 36):
    """Every row, the largest-sample rows and the findings: {"rows", "memory_rows", "findings", "p0"}."""
    chains = Chains(set(memory_ranks) | {1, 2})
    rows, per_model, p0 = [], {}, {}
    for name, shape in cases.items():
        mode_rows = {}
        for mode in MODES:
            mrows = []
            for ranks in ranks_list:
                batch = Fraction(strong[name]) if mode == "strong" else weak[name] * ranks
                if batch.denominator != 1:
                    why = f"{ranks} ranks x {weak[name]} samples per rank is not a whole batch"
                    mrows += [_row(name, mode, split, ranks, "", None, why, machine) for split in SPLITS]
                    continue
                batch = int(batch)
                chain = chains.get(name, shape, batch)
                for split in SPLITS:
                    result, reason = split_plan(chain, split, ranks, machine, machine.memory_per_rank)
                    mrows.append(_row(name, mode, split, ranks, batch, result, reason, machine))
                    _without_channel_splits(mrows[-1], chain, ranks, machine)
            p0[(name, mode)] = _add_speedups(mrows)
            mode_rows[mode] = mrows
            rows += mrows
        per_model[name] = (mode_rows, {m: p0[(name, m)] for m in MODES})
    memory_rows = largest_samples(chains, cases, SPLITS, memory_ranks, machine, max_elements) if memory_ranks else []
    batches = {"strong": strong, "weak": weak}
    text = {name: findings(name, mode_rows, p0s, ranks_list, machine, batches, memory_rows)
            for name, (mode_rows, p0s) in per_model.items()}
    return {"rows": rows, "memory_rows": memory_rows, "findings": text,
            "p0": {f"{n}/{m}": v for (n, m), v in p0.items()}}


# --- output ------------------------------------------------------------------------------------
def _cell(r):
    if r["fits"]:
        return f"{r['samples_per_s']:8.4g}/s {percent(r['efficiency']):>4s} {r['grid']}"
    if r["memory_gib"] != "":
        return f"  no fit: {r['memory_gib']:.3g} GiB"
    return "  -"


def _print_tables(result, cases, machine, batches):
    rows = result["rows"]
    for name, shape in cases.items():
        for mode in MODES:
            sub = [r for r in rows if r["model"] == name and r["mode"] == mode]
            batch = (f"global batch {batches['strong'][name]}" if mode == "strong"
                     else f"samples per rank {batches['weak'][name]}")
            print(f"\n{name} {'x'.join(map(str, shape))}, {mode} scaling, {batch} (predicted on {machine.name}; "
                  f"samples/s, efficiency, grid)")
            print(f"  {prices(machine)}")
            print(f"{'ranks':>6s}  " + "".join(f"{s:28s}" for s in SPLITS))
            for p in sorted({r["ranks"] for r in sub}):
                cells = {r["split"]: _cell(r) for r in sub if r["ranks"] == p}
                print(f"{p:6d}  " + "".join(f"{cells[s][:27]:28s}" for s in SPLITS))
            print(f"  {_channel_line(sub)}")
    if result["memory_rows"]:
        print(f"\nlargest sample side that fits {machine.memory_per_rank / GIB:.3g} GiB per rank (predicted on "
              f"{machine.name}; batch: P for sample, 1 for spatial and plan, the smallest Pn for hybrid)")
        mem = result["memory_rows"]
        ranks = sorted({r["ranks"] for r in mem})
        print(f"{'model':10s} {'split':8s}" + "".join(f"{f'P={p}':>12s}" for p in ranks))
        for name in cases:
            for split in SPLITS:
                cells = {r["ranks"]: ((">=" if r["capped"] else "") + str(r["largest_side"])
                                      if r["largest_side"] != "" else "-")
                         for r in mem if r["model"] == name and r["split"] == split}
                print(f"{name:10s} {split:8s}" + "".join(f"{cells[p]:>12s}" for p in ranks))
    for name, sentences in result["findings"].items():
        print(f"\nfindings, {name}:")
        for s in sentences:
            print(f"  - {s}")


def _channel_line(rows):
    """Where the plan puts layers on channel/filter grids and what they gain over the plan without them."""
    used = [r for r in rows if r["split"] == "plan" and r["fits"] and r["cf_layers"]]
    if not used:
        return "channel/filter splits (predicted): the plan uses none at these rank counts"
    cells = []
    for r in used:
        gain = (f"{r['without_cf_s'] / r['iteration_s']:.3g}x faster than without" if r["without_cf_s"] != ""
                else "no plan without them")
        cells.append(f"P={r['ranks']} {r['cf_layers']}/{r['layers']} layers, {gain}")
    return "channel/filter splits in the plan (predicted): " + "; ".join(cells)


def _as_built_profile(machine, choice):
    """The as-built profile for `--as-built` (a MachineProfile), or a line saying why there is none."""
    from perfmodel.machine import load_profile
    if choice == "off":
        return "not asked for (--as-built off)"
    if machine.backend != "gpu":
        return f"not made: {machine.name!r} is not a GPU cluster profile"
    measured = measured_gpu_profile() if choice == "auto" else load_profile(choice)
    if measured is None:
        return ("unmeasured: no GPU profile measured with hpcnn's own kernels is shipped (jobs/gpu-check.sh writes "
                "one on a GPU machine; pass it as --as-built PROFILE)")
    return as_built(machine, measured)


def run(args):
    from hpcnn import models
    from perfmodel.machine import ProfileError, load_profile
    t0 = time.perf_counter()
    try:
        machine = load_profile(args.machine)
    except ProfileError as e:
        raise SystemExit(f"hpcnn bench project: {e}") from None
    inputs = {}
    for item in args.input:
        inputs.update(_per_model(item, "--input", _shape))
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in names:
        if m not in models.names():
            raise SystemExit(f"hpcnn bench project: unknown model {m!r}; expected some of {', '.join(models.names())}")
        if m not in CASES and m not in inputs:
            raise SystemExit(f"hpcnn bench project: model {m!r} needs --input {m}=CxHxW")
    cases = {m: inputs.get(m, CASES.get(m)) for m in names}
    strong = {**STRONG_BATCH, **_per_model(args.strong_batch, "--strong-batch", int)}
    weak = {**WEAK_PER_RANK, **_per_model(args.weak_batch, "--weak-batch", Fraction)}
    for m in names:
        if strong.get(m, 0) < 1 or weak.get(m, 0) <= 0:
            raise SystemExit(f"hpcnn bench project: model {m!r} needs a positive --strong-batch and --weak-batch")
    ranks_list = parse_ranks(args.ranks)
    memory_ranks = parse_ranks(args.memory_ranks) if str(args.memory_ranks).strip() else []
    built = _as_built_profile(machine, args.as_built)
    result = project(machine, cases, ranks_list, strong, weak, memory_ranks, args.max_sample_elements)
    batches = {"strong": {m: strong[m] for m in names}, "weak": {m: str(weak[m]) for m in names}}
    os.makedirs(args.out, exist_ok=True)
    print(prices(machine))
    _print_tables(result, cases, machine, batches)
    as_built_doc = {"measured": False, "note": built} if isinstance(built, str) else None
    if as_built_doc is None:
        print(f"\nhpcnn as built: {built.description if hasattr(built, 'description') else built.name}")
        built_result = project(built, cases, ranks_list, strong, weak, (), args.max_sample_elements)
        _print_tables(built_result, cases, built, batches)
        write_csv(os.path.join(args.out, "project_as_built.csv"), COLUMNS, built_result["rows"])
        as_built_doc = {"measured": True, "profile": built.name, "rows": built_result["rows"]}
    else:
        print(f"\nhpcnn as built: {built}")
    write_csv(os.path.join(args.out, "project.csv"), COLUMNS, result["rows"])
    write_csv(os.path.join(args.out, "project_memory.csv"), MEMORY_COLUMNS, result["memory_rows"])
    plots = plot(result, cases, machine, batches, args.out)
    seconds = time.perf_counter() - t0
    doc = {"profile": machine.name, "profile_path": os.path.relpath(machine.path) if machine.path else None,
           "description": machine.doc.get("description", ""), "memory_per_rank_bytes": int(machine.memory_per_rank), "ranks_per_node": machine.ranks_per_node,
           "sources": machine.cited_sources(), "inputs": {m: list(s) for m, s in cases.items()},
           "batches": {"strong_global": batches["strong"], "weak_per_rank": batches["weak"]},
           "ranks": ranks_list, "memory_ranks": memory_ranks, "max_sample_elements": args.max_sample_elements,
           "p0": result["p0"], "findings": result["findings"], "rows": result["rows"],
           "memory_rows": result["memory_rows"], "prices": prices(machine), "as_built": as_built_doc,
           "seconds": round(seconds, 2)}
    with open(os.path.join(args.out, "project.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    files = ["project.csv", "project_memory.csv", "project.json"] + [os.path.basename(p) for p in plots]
    print(f"\nwrote {', '.join(os.path.join(args.out, f) for f in files)} in {seconds:.1f} s")
    return 0
