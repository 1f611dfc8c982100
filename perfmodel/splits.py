"""The ways of splitting one training iteration over P ranks (sample, spatial, hybrid, plan), each rule once.

- sample: data parallelism, the grid (P, 1, ..., 1); impossible when P > the batch;
- spatial: the fastest grid with Pn = 1;
- hybrid: the fastest grid with 1 < Pn <= the batch and a spatial entry > 1;
- plan: `perfmodel.planner.plan_chain`, a grid per layer within the memory per rank.

Every function is pure: a chain (from `perfmodel.layers.walk`, its first input's batch is the batch),
a rank count, a machine profile and a memory limit in, a PlanResult (or a grid) and a reason out.
"""
import math

from .grids import candidate_grids, grid_refusal
from .layers import Block
from .planner import PlanError, grid_string, iter_blocks_and_layers, plan_chain, uniform_plan, uniform_time

__all__ = ["SPLITS", "split_grids", "fastest_grid", "split_plan", "best_uniform", "first_refusal"]

SPLITS = ("sample", "spatial", "hybrid", "plan")
_GIB = 2.0 ** 30


def split_grids(split, ranks, nd, batch):
    """The grids the single-grid split `split` (sample, spatial or hybrid) chooses among at `ranks` ranks,
    for an input with `nd` spatial dimensions and a batch of `batch`, in `candidate_grids` order."""
    if split == "sample":
        return [(ranks,) + (1,) * nd]
    grids = candidate_grids(ranks, nd)
    if split == "spatial":
        return [g for g in grids if g[0] == 1]
    if split == "hybrid":
        return [g for g in grids if 1 < g[0] <= batch and math.prod(g[1:]) > 1]
    raise ValueError(f"{split!r} is not a single-grid split; expected sample, spatial or hybrid")


def _by_time(chain, grids, machine):
    """[(iteration seconds, grid)] of the grids of `grids` no layer refuses, fastest first; equal times keep
    the order of `grids` (candidate_grids: outer splits first)."""
    timed = []
    for g in grids:
        u = uniform_time(chain, g, machine)
        if u is not None:
            timed.append((u[0], g))
    timed.sort(key=lambda e: e[0])
    return timed


def first_refusal(chain, grid):
    """Why `grid` cannot run `chain`: the first leaf layer that refuses it, with the reason."""
    for node in iter_blocks_and_layers(chain):
        if not isinstance(node, Block):
            why = grid_refusal(node, grid)
            if why:
                return f"layer {node.name!r}: {why}"
    return "refused"


def _refused(chain, grids):
    """Why every grid of `grids` is refused, naming the last one's first refusing layer."""
    if not grids:
        return "no grid to choose from"
    g = grids[-1]
    if len(grids) == 1:
        return f"grid {grid_string(g)} is refused ({first_refusal(chain, g)})"
    return f"every one of the {len(grids)} grids is refused (e.g. {grid_string(g)}: {first_refusal(chain, g)})"


def fastest_grid(chain, grids, machine, memory_limit=None):
    """(PlanResult with one grid everywhere, reason) for the fastest of `grids`.

    memory_limit None: by time alone, reason "". Bytes per rank: the fastest grid whose memory fits it;
    when none does, the fastest, with the reason it does not fit. (None, reason) when every grid is refused.
    """
    timed = _by_time(chain, grids, machine)
    if not timed:
        return None, _refused(chain, grids)
    if memory_limit is None:
        return uniform_plan(chain, timed[0][1], machine), ""
    first = None
    for _, g in timed:
        plan = uniform_plan(chain, g, machine)
        if plan.memory <= memory_limit:
            return plan, ""
        first = first or plan
    return first, (f"needs {first.memory / _GIB:.3g} GiB per rank (fastest grid {grid_string(first.grids[0])}), "
                   f"over the {memory_limit / _GIB:.3g} GiB of a rank")


def split_plan(chain, split, ranks, machine, memory_limit=None):
    """(PlanResult or None, reason) of the split `split` (one of SPLITS) at `ranks` ranks.

    memory_limit: bytes per rank. A single-grid split takes `fastest_grid(..., memory_limit)` of its
    `split_grids`; the plan is held to memory_limit, or with None to the profile's memory per rank
    (`plan_chain`). The reason is "" when the result runs and fits, else why not.
    """
    if split == "plan":
        try:
            return plan_chain(chain, ranks, machine, memory_limit), ""
        except PlanError as e:
            return None, str(e)
    batch = chain[0].in_shape[0]
    if split == "sample" and ranks > batch:
        return None, f"{ranks} ranks > global batch {batch}: some ranks would hold no sample"
    grids = split_grids(split, ranks, len(chain[0].in_shape) - 2, batch)
    if not grids:
        return None, f"no grid of {ranks} ranks has Pn > 1 (at most the batch, {batch}) and a spatial split"
    return fastest_grid(chain, grids, machine, memory_limit)


def best_uniform(chain, ranks, machine, sample=None):
    """(grid, seconds) of the fastest grid of the sample split (sample=True) or the spatial split
    (sample=False, Pn = 1) by time alone, or (None, the first refusal) when the split cannot run."""
    grids = split_grids("sample" if sample else "spatial", ranks, len(chain[0].in_shape) - 2, chain[0].in_shape[0])
    timed = _by_time(chain, grids, machine)
    if timed:
        return timed[0][1], timed[0][0]
    return None, first_refusal(chain, grids[0])
