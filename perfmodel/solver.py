"""The planner's shortest path: the DP over a chain's layered graph of (layer, grid) vertices, for any memory weight.

Graph. Every leaf layer of the chain (see `perfmodel.layers`) is a layer of vertices, one per
candidate grid: the factorizations of P over (N, H, W) or (N, D, H, W) that the layer can run
under (`grids.grid_refusal`: no more sample blocks than samples, no block smaller than its halo,
no empty output block). A vertex costs the layer's forward + backward time with its halo and
collectives under that grid, plus the part of its gradient reduction that the profile says backward
does not hide (`overlap.gradient_allreduce`; the grids differ in it where a channel or filter split
sums a weight slice over fewer ranks, or where a Linear's rows are replicated); an edge between consecutive layers costs the shuffle of the tensor
between them from one grid to the other, forward and its adjoint backward. The input is read
straight into any grid (the readers read a rank's block), so the first layer has no entry edge.

Residual blocks and U-Net skips, as `hpcnn.parallel` runs them. A block takes its input in the grid
g it arrives in (no shuffle at the block's entry) and is an edge of the graph from g to the grid h
its output leaves in, weighted by the best path through it:
- residual: the body is a sub-chain from g (its first layer shuffles if it wants another grid) to
  any h; the shortcut's layers run in g; when h != g the shortcut's output is shuffled to h, where
  the add happens (`DistResidual` joins the shortcut to the body's distribution);
- skip: the inner chain runs from g to any grid, its output is shuffled back to g and concatenated
  there, so h = g (`DistSkipConcat` concatenates in the input's distribution).
Both operands of every add and concatenation are in one grid, so every plan is one that
`parallel.distribute(model, plan=...)` runs exactly as costed. A block's G x G matrix is one
min-plus DP over its body for all entry grids at once (O(L G^3)); nested blocks (U-Net levels)
are solved recursively.

Memory. Vertices whose own memory (the model's parameters, gradients and optimizer state, plus
the layer's kept activations and workspace) exceeds the limit are dropped. Every vertex and edge
also carries its memory, so that `Solver.solve(lam)` minimizes time + lam * memory
(`perfmodel.planner.plan_chain` finds lam).
"""
import math

import numpy as np

from .costs import OPTIMIZER_STATE, block_extra_cost, layer_cost
from .grids import grid_refusal
from .layers import Block, iter_layers
from .shuffle import shuffle_matrix

__all__ = ["PlanError", "Solver", "constant_memory", "grid_string", "parse_grid", "gib_text"]

_INF = math.inf


class PlanError(ValueError):
    """No plan exists (no grid serves a layer, or no plan fits the memory limit); the message says why."""


def grid_string(grid):
    """A grid as text: (4, 2, 1) -> '4x2x1'."""
    return "x".join(str(g) for g in grid)


def parse_grid(text):
    """The grid of a text '4x2x1' -> (4, 2, 1)."""
    return tuple(int(v) for v in str(text).lower().split("x"))


def constant_memory(chain, machine, optimizer_state=OPTIMIZER_STATE):
    """Parameters + gradients + optimizer state (`optimizer_state` parameter-sized arrays per parameter)
    + the reducer's bucket copy, on every rank."""
    params = sum(layer.params for layer in iter_layers(chain))
    return params * machine.itemsize * (2 + optimizer_state + 1)


def gib_text(nbytes):
    """`nbytes` as text in GiB, three significant digits."""
    return f"{nbytes / 2**30:.3g} GiB"


class Solver:
    """The DP over a chain; costs are computed once, then solved for any memory weight lambda."""

    def __init__(self, chain, grids, machine, memory_limit, optimizer_state=OPTIMIZER_STATE):
        self.chain = chain
        self.grids = grids
        self.machine = machine
        self.memory_limit = memory_limit
        self.constant = constant_memory(chain, machine, optimizer_state)
        self.G = len(grids)
        self._shuffle = {}
        self._leaf = {}
        self._by_signature = {}
        self._blocks = {}
        self.refusals = {}
        self._prepare(chain)

    # --- costs -------------------------------------------------------------------------------
    def _prepare(self, chain):
        for node in chain:
            if isinstance(node, Block):
                self._prepare(node.body)
                if node.shortcut:
                    self._prepare(node.shortcut)
                extra = [block_extra_cost(node, g, self.machine) for g in self.grids]
                self._blocks[id(node)] = extra
            else:
                self._leaf_costs(node)

    def _leaf_costs(self, spec):
        key = id(spec)
        if key in self._leaf:
            return self._leaf[key]
        # the repeated layers of a deep network (a ResNet's blocks) share one pricing over every grid
        signature = spec.signature()
        same = self._by_signature.get(signature)
        if same is not None:
            self._leaf[key], self.refusals[spec.name] = same
            return same[0]
        t = np.full(self.G, _INF)
        m = np.zeros(self.G)
        w = np.zeros(self.G)
        costs = [None] * self.G
        reasons = {}
        exposed = 1.0 - self.machine.overlap["gradient_allreduce"]
        for i, g in enumerate(self.grids):
            why = grid_refusal(spec, g)
            if why:
                reasons[g] = why
                continue
            c = layer_cost(spec, g, self.machine)
            if self.memory_limit is not None and \
                    self.constant + c.activation_bytes + c.workspace_bytes > self.memory_limit:
                reasons[g] = (f"needs {gib_text(self.constant + c.activation_bytes + c.workspace_bytes)} per rank "
                              f"with the parameters' state, over the limit of {gib_text(self.memory_limit)}")
                continue
            costs[i] = c
            t[i] = c.time + exposed * c.gradient_allreduce
            m[i] = c.activation_bytes
            w[i] = c.workspace_bytes
        if not np.isfinite(t).any():
            if any("over the limit" in r for r in reasons.values()):
                least = min(self.constant + c.activation_bytes + c.workspace_bytes for c in
                            (layer_cost(spec, g, self.machine) for g in reasons if "over the limit" in reasons[g]))
                raise PlanError(f"no plan fits {gib_text(self.memory_limit)} per rank: layer {spec.name!r} "
                                f"({spec.kind}, input {spec.in_shape}) needs at least {gib_text(least)} under any "
                                f"grid, with the parameters' state; use more ranks or a smaller batch")
            detail = "; ".join(f"{grid_string(g)}: {r}" for g, r in list(reasons.items())[:6])
            raise PlanError(f"no grid of {self._ranks()} ranks can serve layer {spec.name!r} "
                            f"({spec.kind}, input {spec.in_shape}): {detail}")
        self._leaf[key] = (t, m, w, costs)
        self.refusals[spec.name] = reasons
        self._by_signature[signature] = (self._leaf[key], reasons)
        return self._leaf[key]

    def leading_grids(self, k):
        """The grids that are among the k fastest of at least one leaf layer, in the order of `grids`."""
        keep = set()
        for t, _, _, _ in self._leaf.values():
            finite = np.flatnonzero(np.isfinite(t))
            keep.update(int(i) for i in finite[np.argsort(t[finite], kind="stable")[:k]])
        return [g for i, g in enumerate(self.grids) if i in keep]

    def _ranks(self):
        return math.prod(self.grids[0])

    def shuffle_matrix(self, shape):
        """(G, G) seconds of moving a tensor of `shape` between grids, forward and backward."""
        shape = tuple(shape)
        hit = self._shuffle.get(shape)
        if hit is None:
            hit = self._shuffle[shape] = 2 * shuffle_matrix(shape, self.grids, self.grids, self.machine)
        return hit

    # --- the DP ------------------------------------------------------------------------------
    def _leaf_vectors(self, node, lam):
        t, m, _, _ = self._leaf_costs(node)
        return t + lam * m, t, m

    def _fixed_chain(self, chain, lam):
        """(weight, time, memory) (G,) of a chain whose layers all run in the grid of its input (a shortcut)."""
        w = np.zeros(self.G)
        t = np.zeros(self.G)
        m = np.zeros(self.G)
        for node in chain:
            if isinstance(node, Block):
                bw, bt, bm = (np.diagonal(a).copy() for a in self._block_matrices(node, lam)[:3])
            else:
                bw, bt, bm = self._leaf_vectors(node, lam)
            w, t, m = w + bw, t + bt, m + bm
        return w, t, m

    def _block_matrices(self, block, lam):
        """(weight, time, memory) (G, G) of a block entered in grid g (rows) and left in grid h (columns),
        with the body's solution for backtracking.

        Residual: body from g to h (any path), shortcut in g, its output shuffled to h when h != g
        (as `DistResidual` does), the add in h. Skip: the inner chain from g, its output shuffled back
        to g (as `DistSkipConcat` does), the concatenation in g; only h == g.
        """
        key = (id(block), lam)
        hit = self._blocks.get(key)
        if hit is not None:
            return hit
        G = self.G
        extra = self._blocks[id(block)]
        x_t = np.array([e.time for e in extra])
        x_m = np.array([e.activation_bytes for e in extra])
        start = np.full((G, G), _INF)
        np.fill_diagonal(start, 0.0)
        body = self._solve(block.body, start, lam)
        if block.kind == "residual":
            s_w, s_t, s_m = self._fixed_chain(block.shortcut or [], lam)
            move = self.shuffle_matrix(block.out_shape)
            weight = body["weight"] + s_w[:, None] + move + (x_t + lam * x_m)[None, :]
            t = body["time"] + s_t[:, None] + move + x_t[None, :]
            m = body["memory"] + s_m[:, None] + x_m[None, :]
            last = np.broadcast_to(np.arange(G), (G, G))
        else:
            back = self.shuffle_matrix(block.body[-1].out_shape)          # inner's last grid -> g
            total = body["weight"] + back.T                               # (g, last)
            last_of = np.argmin(total, axis=1)
            rows = np.arange(G)
            weight = np.full((G, G), _INF)
            t = np.full((G, G), _INF)
            m = np.zeros((G, G))
            weight[rows, rows] = total[rows, last_of] + x_t + lam * x_m
            t[rows, rows] = body["time"][rows, last_of] + back[last_of, rows] + x_t
            m[rows, rows] = body["memory"][rows, last_of] + x_m
            last = np.broadcast_to(last_of[:, None], (G, G))
        hit = self._blocks[key] = (weight, t, m, body, last)
        return hit

    def _solve(self, chain, start, lam):
        """DP over `chain` from S start states: start (S, G) is the cost of having the chain's input in
        each grid. Returns weight/time/memory (S, G) of the best path ending in each grid, and the
        argmin predecessor grids per node for backtracking."""
        S = start.shape[0]
        weight = start.copy()
        t_acc = np.where(np.isfinite(start), start, _INF)
        m_acc = np.zeros_like(start)
        back = []
        s_idx = np.arange(S)[:, None]
        h_idx = np.arange(self.G)[None, :]
        for node in chain:
            if isinstance(node, Block):
                edge_w, edge_t, edge_m = self._block_matrices(node, lam)[:3]
                node_w = node_t = node_m = 0.0
            else:
                shuf = self.shuffle_matrix(node.in_shape)
                edge_w, edge_t, edge_m = shuf, shuf, 0.0
                w_v, t_v, m_v = self._leaf_vectors(node, lam)
                node_w, node_t, node_m = w_v[None, :], t_v[None, :], m_v[None, :]
            cand = weight[:, :, None] + edge_w[None, :, :]               # (S, prev, next)
            pred = np.argmin(cand, axis=1)
            weight = cand[s_idx, pred, h_idx] + node_w
            t_acc = t_acc[s_idx, pred] + (edge_t[pred, h_idx]) + node_t
            m_acc = m_acc[s_idx, pred] + (edge_m[pred, h_idx] if not np.isscalar(edge_m) else 0.0) + node_m
            back.append(pred)
        return {"weight": weight, "time": t_acc, "memory": m_acc, "back": back}

    def solve(self, lam):
        start = np.zeros((1, self.G))
        res = self._solve(self.chain, start, lam)
        last = int(np.argmin(res["weight"][0]))
        if not math.isfinite(res["weight"][0, last]):
            raise PlanError("no sequence of grids serves every layer (every path has an infeasible layer)")
        assignment = {}
        self._trace(self.chain, res, 0, last, assignment, lam)
        return assignment

    def _trace(self, chain, res, s, last, assignment, lam):
        """Fill {layer name: grid index} walking the predecessors back from grid index `last`.
        A block's entry is `g_in` (its predecessor), its exit `g`."""
        g = last
        for j in range(len(chain) - 1, -1, -1):
            node = chain[j]
            g_in = int(res["back"][j][s, g])
            if isinstance(node, Block):
                assignment[node.name] = g_in
                _, _, _, body, body_last = self._block_matrices(node, lam)
                self._trace(node.body, body, g_in, int(body_last[g_in, g]), assignment, lam)
                for leaf in node.shortcut or []:
                    self._assign_fixed(leaf, g_in, assignment, lam)
            else:
                assignment[node.name] = g
            g = g_in

    def _assign_fixed(self, node, g, assignment, lam):
        if isinstance(node, Block):
            assignment[node.name] = g
            _, _, _, body, body_last = self._block_matrices(node, lam)
            self._trace(node.body, body, g, int(body_last[g, g]), assignment, lam)
            for leaf in node.shortcut or []:
                self._assign_fixed(leaf, g, assignment, lam)
        else:
            assignment[node.name] = g
