"""A plan's costs: PlanResult (a grid per layer, its per-layer costs and totals) and the one-grid plans and times."""
import math

from .costs import LayerCost, block_extra_cost, layer_cost
from .grids import grid_refusal
from .iteration import iteration_time
from .layers import Block, iter_layers
from .shuffle import shuffle_time
from .solver import Solver

__all__ = ["PlanResult", "uniform_time", "uniform_plan", "iter_blocks_and_layers"]


class PlanResult:
    """The planner's answer: a grid per layer, predicted costs, totals and the alternatives.

    layers: [(node, grid, LayerCost, shuffle seconds before it)] in forward order; node is a LayerSpec,
    a Block (its own add or concatenation; grid = the grid it is entered in) or None (a shuffle inside
    a block: a residual's shortcut output moving to the body's grid, a skip's inner output moving back).
    """

    def __init__(self, chain, ranks, machine, assignment, grids, solver, seconds):
        self.chain = chain
        self.ranks = ranks
        self.machine = machine
        self.grids = grids
        self.solver = solver
        self.planning_seconds = seconds
        self.grid_of = {name: grids[i] for name, i in assignment.items()}
        self.layers = []
        self._collect(chain, None)
        self.memory = self._memory()

    def _collect(self, chain, prev):
        """Append the chain's entries starting from a tensor in grid `prev`; returns the output grid."""
        for node in chain:
            if isinstance(node, Block):
                g = self.grid_of[node.name] if prev is None else prev
                entry = len(self.layers)
                self.layers.append(None)
                h = self._collect(node.body, g)
                if node.kind == "residual":
                    self._collect(node.shortcut or [], g)
                    if h != g:
                        self.layers.append((None, h, LayerCost(), shuffle_time(node.out_shape, g, h,
                                                                                      self.machine) * 2))
                    out = h
                else:
                    if h != g:
                        self.layers.append((None, g, LayerCost(), shuffle_time(node.body[-1].out_shape, h, g,
                                                                                      self.machine) * 2))
                    out = g
                self.layers[entry] = (node, out, block_extra_cost(node, out, self.machine), 0.0)
                prev = out
            else:
                g = self.grid_of[node.name]
                shuffle = 0.0 if prev is None or prev == g else 2 * shuffle_time(node.in_shape, prev, g,
                                                                                          self.machine)
                self.layers.append((node, g, layer_cost(node, g, self.machine), shuffle))
                prev = g
        return prev

    def _memory(self):
        act = sum(c.activation_bytes for _, _, c, _ in self.layers)
        work = max((c.workspace_bytes for _, _, c, _ in self.layers), default=0.0)
        return self.solver.constant + act + work

    @property
    def path_time(self):
        """What the shortest path minimized: every layer's time with its halo and collectives, plus shuffles."""
        return sum(c.time for _, _, c, _ in self.layers) + sum(s for _, _, _, s in self.layers)

    def totals(self):
        """{'forward', 'backward', 'communication', 'shuffle', 'iteration', 'memory', parts...} in seconds / bytes."""
        leaf_costs = [c for node, _, c, _ in self.layers if node is not None]
        shuffles = sum(s for _, _, _, s in self.layers)
        t, parts = iteration_time(leaf_costs, shuffles, self.machine, self.ranks)
        return {"iteration": t, "forward": sum(c.forward for c in leaf_costs),
                "backward": sum(c.backward for c in leaf_costs),
                "communication": sum(c.communication for c in leaf_costs) + parts["gradient_allreduce"],
                "shuffle": shuffles, "memory": self.memory, **parts}

    def uniform_time(self, grid):
        """Predicted iteration seconds with one grid for every layer (None if some layer refuses it)."""
        return uniform_time(self.chain, grid, self.machine)


def uniform_time(chain, grid, machine):
    """Predicted (iteration seconds, per-layer [(LayerSpec, LayerCost)]) with one grid everywhere, or None."""
    grid = tuple(grid)
    out = []
    for node in iter_blocks_and_layers(chain):
        if isinstance(node, Block):
            out.append((node, block_extra_cost(node, grid, machine)))
        elif grid_refusal(node, grid):
            return None
        else:
            out.append((node, layer_cost(node, grid, machine)))
    t, _ = iteration_time([c for _, c in out], 0.0, machine, math.prod(grid))
    return t, out


def uniform_plan(chain, grid, machine):
    """A PlanResult with one grid for every layer (costs, totals and memory as for a plan), or None if a
    layer refuses the grid. Memory is not checked against the profile's limit: `.memory` says what it needs."""
    grid = tuple(grid)
    if any(grid_refusal(node, grid) for node in iter_layers(chain)):
        return None
    solver = Solver(chain, [grid], machine, None)
    assignment = {node.name: 0 for node in iter_blocks_and_layers(chain)}
    return PlanResult(chain, math.prod(grid), machine, assignment, [grid], solver, 0.0)


def iter_blocks_and_layers(chain):
    """Blocks and leaf layers depth first in forward order (a block before its body)."""
    for node in chain:
        yield node
        if isinstance(node, Block):
            yield from iter_blocks_and_layers(node.body)
            yield from iter_blocks_and_layers(node.shortcut or [])

