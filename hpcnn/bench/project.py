"""Predicted strong and weak scaling on a machine profile: sample, spatial, hybrid and planned splits (perfmodel only).

Nothing runs and nothing is measured: every number comes from `perfmodel` and the machine profile
(default `v100-nvlink-edr`, the Distconv paper's machine: 4 V100 16 GB per node, NVLink, EDR
InfiniBand). For meshnet at 18x2048x2048, ResNet-50 at 3x224x224 and CosmoFlow at 4x512^3, and
every rank count P, four ways of splitting one training iteration:

- sample: data parallelism, grid (P, 1, ..., 1); impossible when P > the global batch;
- spatial: the fastest grid with Pn = 1 (`perfmodel.report.best_uniform`);
- hybrid: the fastest single grid with Pn > 1 and a spatial entry > 1;
- planner: `perfmodel.planner.plan_chain`, a grid per layer that respects the memory per rank.

A single-grid point whose memory per rank (`perfmodel.planner.uniform_plan(...).memory`, counted as a
plan's) exceeds the profile's does not fit: the fastest grid of the split that fits is taken, and
when none fits the fastest is recorded with fits = False and the reason (such points are gaps in
the plots). Strong scaling keeps the global batch fixed (--strong-batch); weak scaling keeps the
samples per rank fixed (--weak-batch, a fraction allowed: 1/4 is one sample per 4 ranks), global
batch = P x that. Speedup is samples/s over the best split's samples/s at the smallest P where any
split fits (P0); efficiency = speedup / (P / P0), which for weak scaling is t(P0) / t(P). The
communication share is halo exchanges + collectives + the exposed gradient allreduce + shuffles
over the iteration; allreduce_share is the exposed gradient allreduce alone.

The largest sample: for P in --memory-ranks and each split, the largest spatial side S (S x S or
S^3) whose training iteration fits the memory per rank, with one sample per rank for sample
parallelism (batch = P), batch 1 for spatial and planner, and for hybrid a batch of the smallest
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
import math
import os
import time
from collections import Counter
from fractions import Fraction

from . import write_csv

__all__ = ["add_arguments", "run", "project", "parse_ranks", "CASES", "STRONG_BATCH", "WEAK_PER_RANK", "SPLITS",
           "COLUMNS", "MEMORY_COLUMNS"]

# model -> one sample's shape (C, *S)
CASES = {"meshnet": (18, 2048, 2048), "resnet50": (3, 224, 224), "cosmoflow": (4, 512, 512, 512)}
# Strong scaling: a global batch per model (meshnet and CosmoFlow train on few huge samples; 256 is
# ResNet-50's usual ImageNet batch).
STRONG_BATCH = {"meshnet": 16, "resnet50": 256, "cosmoflow": 64}
# Weak scaling: samples per rank (32 images per GPU is ResNet-50's usual per-GPU batch). One 512^3
# CosmoFlow sample needs about twice a V100's 16 GB on its own, so with one sample per rank no
# split fits at any P: there it is one sample per 4 ranks (one 4-GPU node per sample).
WEAK_PER_RANK = {"meshnet": Fraction(1), "resnet50": Fraction(32), "cosmoflow": Fraction(1, 4)}
SPLITS = ("sample", "spatial", "hybrid", "planner")
MODES = ("strong", "weak")
MEMORY_RANKS = "1,8,64,512,4096"
COLUMNS = ("model", "mode", "split", "ranks", "global_batch", "grid", "distinct_grids", "iteration_s",
           "samples_per_s", "speedup", "efficiency", "comm_share", "allreduce_share", "memory_gib", "fits",
           "reason")
MEMORY_COLUMNS = ("model", "split", "ranks", "batch", "largest_side", "sample_shape", "grid", "memory_gib",
                  "capped", "reason")
_GIB = 2.0 ** 30


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
    p.add_argument("--out", default="bench-out", help="folder for project.csv/.json and the plots (default bench-out)")


# --- chains ------------------------------------------------------------------------------------
class _Chains:
    """perfmodel chains by (model, sample shape, batch). A model whose layers do not depend on the
    input size is built once; one that does (CosmoFlow) is built per size, walked at once for every
    batch in `batches`, and only the last one built is kept, since their parameters take GBs at
    large sizes."""

    def __init__(self, batches=()):
        self.batches = set(batches)
        self._chains = {}
        self._models = {}
        self._invalid = {}

    def get(self, name, shape, batch):
        """The chain, or ValueError (with the model's message) when the model refuses the shape."""
        from perfmodel.layers import walk
        key = (name, tuple(shape), int(batch))
        hit = self._chains.get(key)
        if hit is not None:
            return hit
        if key[:2] in self._invalid:
            raise ValueError(self._invalid[key[:2]])
        try:
            if _size_dependent(name):
                last = self._models.get("last")
                model = last[1] if last and last[0] == key[:2] else self._build(name, shape)
                self._models["last"] = (key[:2], model)
                for b in self.batches | {int(batch)}:
                    self._chains[(name, tuple(shape), b)] = walk(model, (b,) + tuple(shape))
            else:
                model = self._models.get((name, shape[0]))
                if model is None:
                    model = self._models[(name, shape[0])] = self._build(name, shape)
                self._chains[key] = walk(model, (int(batch),) + tuple(shape))
        except ValueError as e:
            self._invalid[key[:2]] = str(e)
            raise
        return self._chains[key]

    @staticmethod
    def _build(name, shape):
        from ..nn.models import build_for_input
        return build_for_input(name, shape)


def _size_dependent(name):
    from hpcnn import models
    return "input_size" in models.options(name)


# --- one point ---------------------------------------------------------------------------------
def _fastest_fitting(chain, grids, machine, limit):
    """(PlanResult of the fastest grid of `grids` that fits `limit`, or of the fastest one if none fits;
    None if every grid is refused)."""
    from perfmodel.planner import uniform_plan, uniform_time
    timed = []
    for g in grids:
        u = uniform_time(chain, g, machine)
        if u is not None:
            timed.append((u[0], g))
    if not timed:
        return None
    timed.sort(key=lambda e: e[0])   # stable: equal times keep candidate_grids' order (outer splits first)
    first = None
    for _, g in timed:
        plan = uniform_plan(chain, g, machine)
        if plan.memory <= limit:
            return plan
        first = first or plan
    return first


def _split_grids(split, ranks, nd, batch):
    from perfmodel.grids import candidate_grids
    if split == "sample":
        return [(ranks,) + (1,) * nd]
    grids = candidate_grids(ranks, nd)
    if split == "spatial":
        return [g for g in grids if g[0] == 1]
    return [g for g in grids if 1 < g[0] <= batch and math.prod(g[1:]) > 1]


def _point(chain, split, ranks, batch, machine):
    """(PlanResult or None, reason) of one split at `ranks` ranks."""
    from perfmodel.planner import PlanError, grid_string, plan_chain
    from perfmodel.report import best_uniform, first_refusal
    limit = machine.memory_per_rank
    nd = len(chain[0].in_shape) - 2
    if split == "planner":
        try:
            return plan_chain(chain, ranks, machine), ""
        except PlanError as e:
            return None, str(e)
    if split == "sample" and ranks > batch:
        return None, f"{ranks} ranks > global batch {batch}: some ranks would hold no sample"
    grids = _split_grids(split, ranks, nd, batch)
    if split == "hybrid" and not grids:
        return None, (f"no grid of {ranks} ranks has Pn > 1 (at most the batch, {batch}) and a spatial split")
    result = _fastest_fitting(chain, grids, machine, limit)
    if result is None:
        if split == "spatial":
            return None, f"every grid with Pn = 1 is refused ({best_uniform(chain, ranks, machine, sample=False)[1]})"
        return None, (f"every one of the {len(grids)} grids is refused (e.g. {grid_string(grids[-1])}: "
                      f"{first_refusal(chain, grids[-1])})")
    if result.memory > limit:
        return result, (f"needs {result.memory / _GIB:.3g} GiB per rank (fastest grid "
                        f"{grid_string(result.grids[0])}), over the {limit / _GIB:.3g} GiB of a rank")
    return result, ""


def _row(model, mode, split, ranks, batch, result, reason, machine):
    from perfmodel.layers import Block
    from perfmodel.planner import grid_string
    row = dict.fromkeys(COLUMNS, "")
    row.update(model=model, mode=mode, split=split, ranks=ranks, global_batch=batch, fits=False, reason=reason)
    if result is None:
        return row
    grids = Counter(grid for node, grid, _, _ in result.layers if node is not None and not isinstance(node, Block))
    t = result.totals()
    row.update(grid=grid_string(grids.most_common(1)[0][0]), distinct_grids=len(grids), iteration_s=t["iteration"],
               samples_per_s=batch / t["iteration"],
               comm_share=(t["communication"] + t["shuffle"]) / t["iteration"],
               allreduce_share=t["gradient_allreduce"] / t["iteration"], memory_gib=t["memory"] / _GIB,
               fits=t["memory"] <= machine.memory_per_rank and not reason)
    return row


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


# --- the largest sample ------------------------------------------------------------------------
def _memory_batch(split, ranks):
    if split == "sample":
        return ranks
    if split == "hybrid":
        return next((d for d in range(2, ranks) if ranks % d == 0 and ranks // d > 1), None)
    return 1


def _least_memory(chain, grids, machine):
    """(PlanResult with the least memory per rank among `grids`, or None if every grid is refused);
    stops at the first grid that fits."""
    from perfmodel.planner import uniform_plan
    best = None
    for g in grids:
        plan = uniform_plan(chain, g, machine)
        if plan is None:
            continue
        if best is None or plan.memory < best.memory:
            best = plan
        if plan.memory <= machine.memory_per_rank:
            break
    return best


class _SideSearch:
    """Largest S such that a sample (C, S, ..., S) trains with `split` on `ranks` ranks in memory."""

    def __init__(self, chains, name, channels, nd, split, ranks, machine, max_side):
        self.chains, self.name, self.channels, self.nd = chains, name, channels, nd
        self.split, self.ranks, self.machine, self.max_side = split, ranks, machine, max_side
        self.batch = _memory_batch(split, ranks)
        self._seen = {}

    def _valid_side(self, side, floor):
        """The largest side in (floor, side] that the model accepts, or None."""
        for s in range(side, floor, -1):
            try:
                self.chains.get(self.name, (self.channels,) + (s,) * self.nd, self.batch)
                return s
            except ValueError:
                continue
        return None

    @property
    def batch_groups(self):
        """Pn of the split's grids: sample blocks are one sample each here."""
        return self.batch if self.split in ("sample", "hybrid") else 1

    def _smallest_output(self, side):
        """Elements per channel of the smallest spatial layer output at `side` (None: no valid side)."""
        if side is None:
            return None
        from perfmodel.layers import iter_layers
        chain = self.chains.get(self.name, (self.channels,) + (side,) * self.nd, self.batch)
        return min(math.prod(layer.out_shape[2:]) for layer in iter_layers(chain) if len(layer.out_shape) > 2)

    def status(self, side):
        """('fits' | 'refused' | 'memory', PlanResult or None, reason) for one valid side."""
        hit = self._seen.get(side)
        if hit:
            return hit
        from perfmodel.planner import PlanError, plan_chain
        chain = self.chains.get(self.name, (self.channels,) + (side,) * self.nd, self.batch)
        limit = self.machine.memory_per_rank
        if self.split == "planner":
            try:
                out = ("fits", plan_chain(chain, self.ranks, self.machine), "")
            except PlanError as e:
                out = ("memory" if str(e).startswith("no plan fits") else "refused", None, str(e))
        else:
            result = _least_memory(chain, _split_grids(self.split, self.ranks, self.nd, self.batch), self.machine)
            if result is None:
                out = ("refused", None, "every grid of the split is refused")
            elif result.memory > limit:
                out = ("memory", result, f"needs {result.memory / _GIB:.3g} GiB per rank")
            else:
                out = ("fits", result, "")
        self._seen[side] = out
        return out

    def run(self, hint=None):
        """(side or None, PlanResult at that side, capped: every side up to max_side fits, reason).

        hint: a side that probably fits (the answer for fewer ranks); the doubling starts there."""
        if self.batch is None:
            return None, None, False, f"{self.ranks} ranks cannot split both the batch and the sample"
        lo, lo_result, side, reason = None, None, 8, "no side up to the search limit fits"
        failed, smallest = False, {}
        if hint and hint <= self.max_side:
            state, result, _ = self.status(hint)
            if state == "fits":
                lo, lo_result, side = hint, result, 2 * hint
        while side <= self.max_side:
            valid = self._valid_side(side, lo or 0)
            if valid is None and lo is not None:   # no side the model accepts in (lo, side]: look further
                side *= 2
                continue
            state, result, why = (self.status(valid) if valid is not None else
                                  ("refused", None, "the model refuses every side up to this one"))
            if state == "fits":
                lo, lo_result = valid, result
            elif lo is None and state == "refused":
                reason = why                      # too small for this split yet: keep doubling
                smallest[side] = self._smallest_output(valid)
                if smallest[side] is not None and smallest[side] == smallest.get(side // 64) and \
                        smallest[side] < self.ranks // self.batch_groups:
                    # the smallest layer output has not grown over a 64x larger input (more than any
                    # zoo model downsamples): it is fixed (CosmoFlow pools down to 4^3), never enough blocks
                    reason = (f"the smallest layer output has {smallest[side]} elements per channel at every "
                              f"input size, fewer than the {self.ranks // self.batch_groups} spatial blocks")
                    break
            else:
                reason, failed = why, True
                break
            side *= 2
        if lo is None:
            return None, None, False, reason
        hi = side if failed else self.max_side + 1     # the first side known (or assumed) not to fit
        top = lo
        while hi - top > max(1, top // 100):      # to within 1%
            mid = (top + hi) // 2
            valid = self._valid_side(mid, lo)
            if valid is None:                      # nothing the model accepts in (lo, mid]: no new answer
                top = mid
                continue
            state, result, _ = self.status(valid)
            if state == "fits":
                top, lo, lo_result = mid, valid, result
            else:
                hi, failed = mid, True
        return lo, lo_result, not failed, ""


def _largest_samples(chains, cases, splits, memory_ranks, machine, max_elements):
    from perfmodel.layers import Block
    from perfmodel.planner import grid_string
    rows = []
    for name, shape in cases.items():
        nd = len(shape) - 1
        max_side = int(round(max_elements ** (1.0 / nd)))
        found = {}
        for split in splits:
            for ranks in memory_ranks:
                search = _SideSearch(chains, name, shape[0], nd, split, ranks, machine, max_side)
                # the answer for fewer ranks, or (planner, batch 1) the spatial split's, most likely fits
                hints = [found.get((split, p)) for p in memory_ranks if p < ranks][-1:]
                if split == "planner":
                    hints.append(found.get(("spatial", ranks)))
                side, result, capped, reason = search.run(max((h for h in hints if h), default=None))
                found[(split, ranks)] = side
                row = dict.fromkeys(MEMORY_COLUMNS, "")
                row.update(model=name, split=split, ranks=ranks, batch=search.batch or "", capped=capped,
                           reason=reason)
                if side is not None:
                    grids = Counter(g for n, g, _, _ in result.layers if n is not None and not isinstance(n, Block))
                    grid = grid_string(grids.most_common(1)[0][0])
                    row.update(largest_side=side, sample_shape="x".join(map(str, (shape[0],) + (side,) * nd)),
                               grid=grid + (f" (+{len(grids) - 1} more)" if len(grids) > 1 else ""),
                               memory_gib=result.memory / _GIB)
                rows.append(row)
    return rows


# --- findings ----------------------------------------------------------------------------------
def _pct(x):
    return f"{x * 100:.1f}%" if abs(x) < 0.095 else f"{x * 100:.0f}%"


def _samples(n):
    return f"{n} sample" + ("" if n == 1 else "s")


def _best_at(rows, ranks):
    fit = [r for r in rows if r["ranks"] == ranks and r["fits"]]
    return max(fit, key=lambda r: r["samples_per_s"]) if fit else None


def _crossover(rows, ranks_list):
    """The smallest P from which, at every larger P too, some split with spatial parallelism is
    faster than pure sample parallelism (or sample parallelism cannot run or fit), or None."""
    cross = None
    for p in reversed(ranks_list):
        best = _best_at(rows, p)
        if best is None:
            continue
        if best["split"] == "sample":
            break
        cross = p
    return cross


def _sample_story(rows, ranks_list, machine):
    """Where pure sample parallelism stops: memory, the batch, or the gradient allreduce."""
    by = {r["ranks"]: r for r in rows if r["split"] == "sample"}
    fit = [p for p in ranks_list if by[p]["fits"]]
    limit = f"{machine.memory_per_rank / _GIB:.3g} GiB"
    if not fit:
        sized = [by[p] for p in ranks_list if by[p]["memory_gib"] != ""]
        if not sized:
            return [f"pure sample parallelism cannot run at any rank count (e.g. {by[ranks_list[-1]]['reason']})."]
        least = min(sized, key=lambda r: r["memory_gib"])
        per_rank = math.ceil(least["global_batch"] / least["ranks"])
        return [f"pure sample parallelism never fits: {_samples(per_rank)} per rank "
                f"need{'' if per_rank > 1 else 's'} {least['memory_gib']:.3g} GiB per rank, over the {limit} of "
                f"one {machine.name} rank."]
    first, last = fit[0], fit[-1]
    parts = []
    before = [by[p] for p in ranks_list if p < first and by[p]["memory_gib"] != ""]
    if before:
        parts.append(f"fits memory only from P = {first} (at P = {before[0]['ranks']} it needs "
                     f"{before[0]['memory_gib']:.3g} GiB per rank, over the {limit})")
    elif first > ranks_list[0]:
        parts.append(f"runs only from P = {first}")
    r = by[last]
    beyond = [p for p in ranks_list if p > last]
    if beyond and by[beyond[0]]["reason"].startswith(f"{beyond[0]} ranks > global batch"):
        parts.append(f"stops at P = {last}, the global batch: beyond it some ranks would hold no sample")
    else:
        parts.append(f"runs up to P = {last}")
    text = "pure sample parallelism " + ", ".join(parts) + "."
    text += (f" At P = {last} its efficiency is {_pct(r['efficiency'])}; the exposed gradient allreduce is "
             f"{_pct(r['allreduce_share'])} of the iteration and communication in all {_pct(r['comm_share'])}")
    if len(fit) > 1 and fit[1] != last:
        r1 = by[fit[1]]
        text += f" (at P = {r1['ranks']}: {_pct(r1['allreduce_share'])} and {_pct(r1['comm_share'])})"
    out = [text + "."]
    low = next((p for p in fit if by[p]["efficiency"] < 0.5), None)
    if low is not None:
        out.append(f"Its efficiency falls below 50% at P = {low} ({_pct(by[low]['efficiency'])}), where the "
                   f"exposed gradient allreduce takes {_pct(by[low]['allreduce_share'])} of the iteration: "
                   f"{_samples(math.ceil(by[low]['global_batch'] / low))} per rank no longer hide it.")
    return out


def _crossover_story(rows, ranks_list):
    """Where a split with spatial parallelism takes over, from the numbers."""
    if not any(r["fits"] for r in rows):
        return ["No split fits the memory per rank at any rank count."]
    cross = _crossover(rows, ranks_list)
    if cross is None:
        last = max(p for p in ranks_list if _best_at(rows, p) is not None)
        return [f"Pure sample parallelism stays the fastest split up to P = {last}: spatial splitting does not "
                f"take over in this range."]
    best = _best_at(rows, cross)
    sample = next(r for r in rows if r["ranks"] == cross and r["split"] == "sample")
    if sample["fits"]:
        why = (f"{best['samples_per_s']:.4g} samples/s against {sample['samples_per_s']:.4g} for pure sample "
               f"parallelism")
    elif sample["iteration_s"] != "":
        why = (f"{best['samples_per_s']:.4g} samples/s, while pure sample parallelism does not fit "
               f"({sample['memory_gib']:.3g} GiB per rank)")
    else:
        why = f"{best['samples_per_s']:.4g} samples/s, while pure sample parallelism cannot run"
    first_fit = min(r["ranks"] for r in rows if r["fits"])
    head = (f"From the first rank count that fits (P = {cross}) on" if cross == first_fit
            else f"From P = {cross} on")
    return [f"{head}, a split with spatial parallelism is the fastest: at P = {cross} the {best['split']} split "
            f"({best['grid']}) gives {why}."]


def _end_story(rows, ranks_list, p0):
    """The best split at the largest P, where throughput peaks, and what the planner adds."""
    fitting = [p for p in ranks_list if _best_at(rows, p) is not None]
    if not fitting:
        return []
    top = fitting[-1]
    best = _best_at(rows, top)
    out = [f"At P = {top} the fastest is the {best['split']} split ({best['grid']}"
           + (f", {best['distinct_grids']} distinct grids" if best["distinct_grids"] != 1 else "")
           + f"): {best['samples_per_s']:.4g} samples/s, {best['speedup']:.4g}x the best at P0 = {p0} "
           f"({_pct(best['efficiency'])} efficiency, communication {_pct(best['comm_share'])} of the iteration)."]
    peak = max(fitting, key=lambda p: _best_at(rows, p)["samples_per_s"])
    if peak < top:
        pb = _best_at(rows, peak)
        out.append(f"Throughput peaks at P = {peak} ({pb['samples_per_s']:.4g} samples/s, {pb['split']} split): "
                   f"more ranks only add communication.")
    gains = []
    for p in ranks_list:
        planner = next((r for r in rows if r["ranks"] == p and r["split"] == "planner" and r["fits"]), None)
        single = [r["samples_per_s"] for r in rows if r["ranks"] == p and r["split"] != "planner" and r["fits"]]
        if planner and single:
            gains.append((planner["samples_per_s"] / max(single) - 1, p))
        elif planner:
            gains.append((math.inf, p))
    if gains:
        gain, p = max(gains)
        if gain == math.inf:
            only = [q for g, q in gains if g == math.inf]
            out.append(f"At P = {', '.join(map(str, only))} only the planner's layer-wise grids fit memory.")
        elif gain > 0.005:
            out.append(f"The planner's layer-wise grids beat the best single grid by up to {_pct(gain)} "
                       f"(at P = {p}).")
        else:
            out.append("The planner's layer-wise grids are no faster than the best single grid here "
                       "(within 0.5%).")
    return out


def _memory_story(model, memory_rows):
    rows = [r for r in memory_rows if r["model"] == model]
    if not rows:
        return []
    parts, missing = [], []
    for split in SPLITS:
        sub = [r for r in rows if r["split"] == split]
        have = [r for r in sub if r["largest_side"] != ""]
        sides = {r["largest_side"] for r in have}
        if len(have) > 1 and len(sides) == 1 and split == "sample":
            parts.append(f"sample {have[0]['sample_shape']} on any P (one sample per rank)")
        elif have:
            parts.append(f"{split} " + ", ".join(f"{'>=' if r['capped'] else ''}{r['sample_shape']} on "
                                                 f"{r['ranks']}" for r in have))
        lost = [r for r in sub if r["largest_side"] == "" and r["ranks"] > 1]
        if lost:
            missing.append(f"{split} on {', '.join(str(r['ranks']) for r in lost)} ranks ({lost[-1]['reason']})")
    out = ["Largest sample that fits the memory per rank (one sample per rank for sample parallelism, a batch of "
           "1 otherwise, 2 for hybrid): " + "; ".join(parts) + "."]
    if missing:
        out.append("No sample size works for " + "; ".join(missing) + ".")
    return out


def _findings(name, mode_rows, p0s, ranks_list, machine, batches, memory_rows):
    out = []
    for mode in MODES:
        rows = mode_rows[mode]
        per_rank = batches["weak"][name]
        batch_text = (f"global batch {batches['strong'][name]}" if mode == "strong"
                      else f"{per_rank} sample{'' if per_rank <= 1 else 's'} per rank")
        story = _sample_story(rows, ranks_list, machine)
        out.append(f"{mode.capitalize()} scaling ({batch_text}): {story[0]}")
        out += story[1:]
        out += _crossover_story(rows, ranks_list)
        if p0s[mode] is not None:
            out += _end_story(rows, ranks_list, p0s[mode])
    return out + _memory_story(name, memory_rows)


# --- the sweep ---------------------------------------------------------------------------------
def project(machine, cases, ranks_list, strong, weak, memory_ranks=(), max_elements=2.0 ** 36):
    """Every row, the largest-sample rows and the findings: {"rows", "memory_rows", "findings", "p0"}."""
    chains = _Chains(set(memory_ranks) | {1, 2})
    rows, findings, p0 = [], {}, {}
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
                    result, reason = _point(chain, split, ranks, batch, machine)
                    mrows.append(_row(name, mode, split, ranks, batch, result, reason, machine))
            p0[(name, mode)] = _add_speedups(mrows)
            mode_rows[mode] = mrows
            rows += mrows
        findings[name] = (mode_rows, {m: p0[(name, m)] for m in MODES})
    memory_rows = _largest_samples(chains, cases, SPLITS, memory_ranks, machine, max_elements) if memory_ranks else []
    batches = {"strong": strong, "weak": weak}
    text = {name: _findings(name, mode_rows, p0s, ranks_list, machine, batches, memory_rows)
            for name, (mode_rows, p0s) in findings.items()}
    return {"rows": rows, "memory_rows": memory_rows, "findings": text,
            "p0": {f"{n}/{m}": v for (n, m), v in p0.items()}}


def _cited_sources(machine):
    """{key: citation} of every source the profile's numbers name."""
    used = set()

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("source"), str):
                used.add(node["source"])
            for key, value in node.items():
                if key != "sources":
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
    visit(machine.doc)
    return {k: v for k, v in machine.doc["sources"].items() if k in used}


# --- output ------------------------------------------------------------------------------------
def _cell(r):
    if r["fits"]:
        return f"{r['samples_per_s']:8.4g}/s {_pct(r['efficiency']):>4s} {r['grid']}"
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
            print(f"{'ranks':>6s}  " + "".join(f"{s:28s}" for s in SPLITS))
            for p in sorted({r["ranks"] for r in sub}):
                cells = {r["split"]: _cell(r) for r in sub if r["ranks"] == p}
                print(f"{p:6d}  " + "".join(f"{cells[s][:27]:28s}" for s in SPLITS))
    if result["memory_rows"]:
        print(f"\nlargest sample side that fits {machine.memory_per_rank / _GIB:.3g} GiB per rank (predicted on "
              f"{machine.name}; batch: P for sample, 1 for spatial and planner, the smallest Pn for hybrid)")
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


def _plot(result, cases, machine, batches, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no plots")
        return []
    rows = result["rows"]
    # the planner often picks the sample or hybrid grid: a thin dotted line on top keeps both visible
    styles = {"sample": dict(marker="o", ms=8, lw=4, alpha=0.45), "spatial": dict(marker="s", ms=4),
              "hybrid": dict(marker="^", ms=5), "planner": dict(marker="D", ms=3, lw=1.2, ls=":", color="k")}
    xlabel = "ranks (GPUs)" if machine.backend == "gpu" else "ranks"
    written = []
    names = list(cases)
    for mode in MODES:
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            sub = [r for r in rows if r["model"] == name and r["mode"] == mode]
            ranks = sorted({r["ranks"] for r in sub})
            for split in SPLITS:
                pts = {r["ranks"]: r for r in sub if r["split"] == split}
                ys = [pts[p]["samples_per_s"] if pts[p]["fits"] else float("nan") for p in ranks]
                ax.plot(ranks, ys, label=split, **styles[split])
            p0 = result["p0"].get(f"{name}/{mode}")
            if p0 is not None:
                base = max(r["samples_per_s"] for r in sub if r["ranks"] == p0 and r["fits"])
                ideal = [base * p / p0 for p in ranks if p >= p0]
                ax.plot([p for p in ranks if p >= p0], ideal, "--", color="grey", lw=1, label="ideal")
            ax.set_xscale("log", base=2)
            if any(r["fits"] for r in sub):
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no point fits", transform=ax.transAxes, ha="center")
            batch = (f"batch {batches['strong'][name]}" if mode == "strong"
                     else f"{batches['weak'][name]}/rank")
            ax.set_title(f"{name} {'x'.join(map(str, cases[name]))}, {batch}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("predicted samples/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"predicted {mode} scaling on {machine.name} (perfmodel; gaps: does not fit "
                     f"{machine.memory_per_rank / _GIB:.3g} GiB per rank or cannot run)")
        fig.tight_layout()
        path = os.path.join(out, f"project_{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(len(MODES), len(names), figsize=(5.2 * len(names), 7.6), squeeze=False)
    for i, mode in enumerate(MODES):
        for ax, name in zip(axes[i], names):
            sub = [r for r in rows if r["model"] == name and r["mode"] == mode]
            ranks = sorted({r["ranks"] for r in sub})
            for split in SPLITS:
                pts = {r["ranks"]: r for r in sub if r["split"] == split}
                ys = [pts[p]["efficiency"] * 100 if pts[p]["fits"] else float("nan") for p in ranks]
                ax.plot(ranks, ys, label=split, **styles[split])
            ax.set_xscale("log", base=2)
            ax.set_ylim(0, 110)
            ax.axhline(100, color="k", ls="--", lw=1)
            ax.set_title(f"{name}, {mode} scaling", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("predicted efficiency %")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"predicted parallel efficiency on {machine.name} (over the best split at the smallest "
                 f"rank count that fits)")
    fig.tight_layout()
    path = os.path.join(out, "project_efficiency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


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
    result = project(machine, cases, ranks_list, strong, weak, memory_ranks, args.max_sample_elements)
    batches = {"strong": {m: strong[m] for m in names}, "weak": {m: str(weak[m]) for m in names}}
    os.makedirs(args.out, exist_ok=True)
    _print_tables(result, cases, machine, batches)
    write_csv(os.path.join(args.out, "project.csv"), COLUMNS, result["rows"])
    write_csv(os.path.join(args.out, "project_memory.csv"), MEMORY_COLUMNS, result["memory_rows"])
    plots = _plot(result, cases, machine, batches, args.out)
    seconds = time.perf_counter() - t0
    doc = {"profile": machine.name, "profile_path": os.path.relpath(machine.path) if machine.path else None,
           "description": machine.doc.get("description", ""), "memory_per_rank_bytes": int(machine.memory_per_rank), "ranks_per_node": machine.ranks_per_node,
           "sources": _cited_sources(machine), "inputs": {m: list(s) for m, s in cases.items()},
           "batches": {"strong_global": batches["strong"], "weak_per_rank": batches["weak"]},
           "ranks": ranks_list, "memory_ranks": memory_ranks, "max_sample_elements": args.max_sample_elements,
           "p0": result["p0"], "findings": result["findings"], "rows": result["rows"],
           "memory_rows": result["memory_rows"], "seconds": round(seconds, 2)}
    with open(os.path.join(args.out, "project.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    files = ["project.csv", "project_memory.csv", "project.json"] + [os.path.basename(p) for p in plots]
    print(f"\nwrote {', '.join(os.path.join(args.out, f) for f in files)} in {seconds:.1f} s")
    return 0
