"""The partition planner: a layered graph of (layer, grid) vertices and its shortest path -> a plan.

The graph and its DP are in `perfmodel.solver` (every leaf layer of the chain a layer of vertices,
one per candidate grid; residual blocks and U-Net skips edges weighted by the best path through
them); a plan's costs and totals in `perfmodel.result`. This module finds the plan.

Memory. The solver drops the vertices whose own memory (the model's parameters, gradients and
optimizer state, plus the layer's kept activations and workspace) exceeds the limit. The plan's memory is
the sum of kept activations along the path plus the largest workspace plus the parameters'
state; when the fastest path exceeds the limit, the planner minimizes time + lambda * memory,
with lambda found by bisection (a Lagrangian relaxation of the constrained shortest path): the
result honours the limit; it may be slightly slower than the best plan that fits, never faster.
A limit that even the smallest-memory path exceeds is an error naming the smallest memory.

Candidates. The short grids (batch x spatial) and the long ones with channel and filter splits
(`perfmodel.grids.planner_grids`). With more than MAX_GRIDS of them, the DP (cubic in their number
inside residual blocks) runs on the grids that at least one layer ranks among its LEADING fastest
(fewer when that is still too many).
"""
import time

from .costs import OPTIMIZER_STATES
from .grids import planner_grids
from .result import PlanResult, iter_blocks_and_layers, uniform_plan, uniform_time
from .solver import PlanError, Solver, constant_memory, gib_text, grid_string, parse_grid

__all__ = ["PlanError", "PlanResult", "plan_chain", "uniform_plan", "uniform_time", "grid_string", "parse_grid",
           "iter_blocks_and_layers"]


# Candidates the DP takes at once, and how many of each layer's fastest grids survive when there are more.
MAX_GRIDS = 64
LEADING = 8


def plan_chain(chain, ranks, machine, memory_limit=None, optimizer="sgd", channel_splits=True):
    """Plan `chain` (from `perfmodel.layers.walk`) over `ranks` ranks on `machine`.

    memory_limit: bytes per rank (default: the profile's memory per rank). optimizer: whose state the
    memory holds (a key of perfmodel.costs.OPTIMIZER_STATES). channel_splits=False: short grids only (what
    channel and filter splits add is the difference). Returns a PlanResult.
    """
    t0 = time.perf_counter()
    if ranks < 1:
        raise PlanError(f"ranks must be at least 1, received {ranks}")
    first = chain[0]
    nd = len(first.in_shape) - 2
    if nd < 1:
        raise PlanError(f"the model's input {first.in_shape} has no spatial dimensions")
    grids = planner_grids(chain, ranks, channel_splits)
    if not grids:
        raise PlanError(f"no grid of {ranks} ranks exists for a batch of {first.in_shape[0]}")
    limit = machine.memory_per_rank if memory_limit is None else float(memory_limit)
    if optimizer not in OPTIMIZER_STATES:
        raise PlanError(f"unknown optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZER_STATES)}")
    state = OPTIMIZER_STATES[optimizer]
    constant = constant_memory(chain, machine, state)
    if constant > limit:
        raise PlanError(f"no plan fits {gib_text(limit)} per rank: the parameters, gradients and optimizer state "
                        f"alone need {gib_text(constant)}")
    solver = Solver(chain, grids, machine, limit, state)
    if len(grids) > MAX_GRIDS:
        # the DP is cubic in the grids: keep those some layer ranks among its fastest (costs are cached)
        for k in range(LEADING, 0, -1):
            kept = solver.leading_grids(k)
            if len(kept) <= MAX_GRIDS:
                break
        grids = kept
        solver = Solver(chain, grids, machine, limit, state)
    assignment = solver.solve(0.0)
    result = PlanResult(chain, ranks, machine, assignment, grids, solver, 0.0)
    if result.memory > limit:
        # The smallest-memory path: a weight that makes any memory saving worth any time.
        lam_hi = 1e-3
        best = None
        for _ in range(40):
            a = solver.solve(lam_hi)
            r = PlanResult(chain, ranks, machine, a, grids, solver, 0.0)
            if r.memory <= limit:
                best = r
                break
            lam_hi *= 10
            if lam_hi > 1e6:
                node, grid, cost, _ = max((e for e in r.layers if e[0] is not None),
                                          key=lambda e: e[2].activation_bytes)
                raise PlanError(f"no plan fits {gib_text(limit)} per rank: the smallest plan found needs "
                                f"{gib_text(r.memory)} (parameters and optimizer state: {gib_text(solver.constant)}; "
                                f"the most, layer {node.name!r} on grid {grid_string(grid)}, keeps "
                                f"{gib_text(cost.activation_bytes)}); use more ranks or a smaller batch")
        lam_lo = 0.0
        for _ in range(30):
            mid = 0.5 * (lam_lo + lam_hi)
            r = PlanResult(chain, ranks, machine, solver.solve(mid), grids, solver, 0.0)
            if r.memory <= limit:
                lam_hi, best = mid, r
            else:
                lam_lo = mid
        result = best
    result.planning_seconds = time.perf_counter() - t0
    return result
