"""What `hpcnn plan` prints and writes: the per-layer table, totals, speedups, --explain, and the plan dict."""
import math

from .costs import layer_cost, parts
from .grids import grid_refusal, planner_grids
from .shuffle import shuffle_time
from .layers import Block
from .planner import grid_string
from .splits import best_uniform

__all__ = ["plan_table", "speedups", "explain", "split_kind", "plan_entries", "to_plan", "breakdown"]


def _ms(seconds):
    return f"{seconds * 1e3:9.3f}"


def _mib(nbytes):
    return f"{nbytes / 2**20:9.1f}"


def _shape(shape):
    return "x".join(str(s) for s in shape)


def plan_table(result):
    """The per-layer table with totals, as text."""
    head = (f"{'layer':34s} {'output shape':>20s} {'grid':>12s} {'fwd ms':>9s} {'bwd ms':>9s} {'comm ms':>9s} "
            f"{'shuf ms':>9s} {'mem MiB':>9s}")
    lines = [head, "-" * len(head)]
    for node, grid, c, shuffle in result.layers:
        if node is None:
            name, shape = "  (shuffle in block)", ""
        elif isinstance(node, Block):
            name, shape = f"{node.name} [{'add' if node.kind == 'residual' else 'concat'}]", _shape(node.out_shape)
        else:
            name, shape = node.name, _shape(node.out_shape)
        comm = c.communication + c.gradient_allreduce
        lines.append(f"{name[-34:]:34s} {shape:>20s} {grid_string(grid):>12s} {_ms(c.forward)} {_ms(c.backward)} "
                     f"{_ms(comm)} {_ms(shuffle)} {_mib(c.activation_bytes + c.workspace_bytes)}")
    t = result.totals()
    lines.append("-" * len(head))
    lines.append(f"{'total (per iteration)':34s} {'':>20s} {'':>12s} {_ms(t['forward'])} {_ms(t['backward'])} "
                 f"{_ms(t['communication'])} {_ms(t['shuffle'])} {_mib(t['memory'])}")
    lines.append(f"predicted iteration: {t['iteration'] * 1e3:.3f} ms (forward {t['forward'] * 1e3:.3f}, backward "
                 f"{t['backward'] * 1e3:.3f}, exposed gradient allreduce {t['gradient_allreduce'] * 1e3:.3f} of "
                 f"{t['gradient_allreduce_total'] * 1e3:.3f}, shuffles {t['shuffle'] * 1e3:.3f}, optimizer "
                 f"{t['optimizer'] * 1e3:.3f}); memory per rank {t['memory'] / 2**30:.3f} GiB "
                 f"(limit {result.solver.memory_limit / 2**30:.3g} GiB)")
    return "\n".join(lines)


def speedups(result):
    """Lines comparing the plan with pure sample parallelism and the best pure spatial grid."""
    t = result.totals()["iteration"]
    out = []
    for label, sample in (("pure sample (data) parallelism", True), ("pure spatial parallelism", False)):
        grid, value = best_uniform(result.chain, result.ranks, result.machine, sample)
        if grid is None:
            out.append(f"  vs {label}: not possible ({value})")
        else:
            out.append(f"  vs {label} {grid_string(grid)}: {value * 1e3:.3f} ms -> predicted speedup "
                       f"{value / t:.2f}x")
    return "\n".join(out)


def _neighbours(result, name):
    """(index in result.layers, previous entry's grid and shape, next leaf entry)."""
    for i, (node, grid, c, s) in enumerate(result.layers):
        if node is not None and not isinstance(node, Block) and node.name == name:
            prev = None
            for j in range(i - 1, -1, -1):
                pn = result.layers[j][0]
                if pn is not None and not isinstance(pn, Block):
                    prev = (result.layers[j][1], pn.out_shape)
                    break
            nxt = None
            for j in range(i + 1, len(result.layers)):
                nn_ = result.layers[j][0]
                if nn_ is not None and not isinstance(nn_, Block):
                    nxt = (result.layers[j][1], nn_.in_shape)
                    break
            return i, prev, nxt
    return None, None, None


def split_kind(grid):
    """What a grid splits, in words: 'sample', 'spatial', 'channel', 'filter' joined by '+' ('none' for one rank)."""
    p = parts(tuple(grid))
    names = [n for n, k in (("sample", p.samples), ("spatial", math.prod(p.spatial)), ("channel", p.channels),
                            ("filter", p.filters)) if k > 1]
    return "+".join(names) or "none"


def explain(result, name):
    """Why layer `name` got its grid: every candidate's costs with the neighbours' grids held fixed."""
    i, prev, nxt = _neighbours(result, name)
    if i is None:
        names = [n.name for n, _, _, _ in result.layers if n is not None and not isinstance(n, Block)]
        raise ValueError(f"--explain: no layer {name!r} in the model; layers are e.g. {', '.join(names[:8])} ...")
    node, chosen, _, _ = result.layers[i]
    m = result.machine
    rows = []
    for g in dict.fromkeys(planner_grids(result.chain, result.ranks) + list(result.grids)):
        why = grid_refusal(node, g)
        if why:
            rows.append((g, None, why))
            continue
        c = layer_cost(node, g, m)
        s_in = 2 * shuffle_time(prev[1], prev[0], g, m) if prev else 0.0
        s_out = 2 * shuffle_time(nxt[1], g, nxt[0], m) if nxt else 0.0
        rows.append((g, (c, s_in, s_out), None))
    lines = [f"layer {node.name} ({node.kind}): input {_shape(node.in_shape)} -> output {_shape(node.out_shape)}; "
             f"chosen grid {grid_string(chosen)}"]
    if prev:
        lines.append(f"  the previous layer runs on {grid_string(prev[0])}, the next on "
                     f"{grid_string(nxt[0]) if nxt else '-'}; shuffles to and from them count forward + backward")
    head = (f"  {'grid':>14s} {'split':>29s} {'compute':>9s} {'halo':>9s} {'collect.':>9s} {'shuffles':>9s} {'total ms':>9s} "
            f"{'mem MiB':>9s}")
    lines += [head]
    feasible = []
    refused = 0
    for g, costs, why in sorted(rows, key=lambda r: (r[1] is None, _total(r[1]))):
        if costs is None:
            refused += 1
            if refused <= 4:
                lines.append(f"  {grid_string(g):>14s} {split_kind(g):>29s}  refused: {why}")
            continue
        c, s_in, s_out = costs
        total = _total(costs)
        feasible.append((total, g, c, s_in + s_out))
        mark = "  <- chosen" if g == chosen else ""
        lines.append(f"  {grid_string(g):>14s} {split_kind(g):>29s} {_ms(c.forward + c.backward)} {_ms(c.halo_forward + c.halo_backward)} "
                     f"{_ms(c.collective_forward + c.collective_backward)} {_ms(s_in + s_out)} {_ms(total)} "
                     f"{_mib(c.activation_bytes + c.workspace_bytes)}{mark}")
    if refused > 4:
        lines.append(f"  ... and {refused - 4} more grids refused")
    lines.append("  " + _reason(node, chosen, feasible))
    return "\n".join(lines)


def _total(costs):
    if costs is None:
        return math.inf
    c, s_in, s_out = costs
    return c.time + s_in + s_out


def _reason(node, chosen, feasible):
    """One sentence: what the chosen grid saves against the runner-up, and on what."""
    feasible.sort(key=lambda r: r[0])
    mine = next((r for r in feasible if r[1] == chosen), None)
    others = [r for r in feasible if r[1] != chosen]
    if mine is None or not others:
        return f"only {grid_string(chosen)} can run this layer." if mine else "the chosen grid is outside the table."
    best_other = others[0]
    _, g2, c2, sh2 = best_other
    _, _, c1, sh1 = mine
    parts = {"compute": (c1.forward + c1.backward) - (c2.forward + c2.backward),
             "halo exchange": (c1.halo_forward + c1.halo_backward) - (c2.halo_forward + c2.halo_backward),
             "collectives": (c1.collective_forward + c1.collective_backward)
             - (c2.collective_forward + c2.collective_backward),
             "shuffles": sh1 - sh2}
    delta = mine[0] - best_other[0]
    if delta <= 0:
        main = min(parts, key=parts.get)
        return (f"{grid_string(chosen)} beats the next best, {grid_string(g2)}, by {-delta * 1e3:.3f} ms here; "
                f"mostly on {main} ({-parts[main] * 1e3:.3f} ms less).")
    main = max(parts, key=parts.get)
    return (f"{grid_string(g2)} would be {delta * 1e3:.3f} ms faster for this layer alone (mostly {main}), but the "
            f"plan keeps {grid_string(chosen)} because the whole path is cheaper: moving this layer alone would "
            f"add shuffles or force its block's layers to follow.")


def plan_entries(result):
    """{leaf name: grid}, {leaf name: predicted dict} for `hpcnn.dist.Plan`."""
    grids, predicted = {}, {}
    for node, grid, c, shuffle in result.layers:
        if node is None or isinstance(node, Block):
            continue
        grids[node.name] = list(grid)
        predicted[node.name] = {
            "time_s": c.time + shuffle, "forward_s": c.forward, "backward_s": c.backward,
            "communication_s": c.communication, "gradient_allreduce_s": c.gradient_allreduce,
            "shuffle_before_s": shuffle, "memory_bytes": c.activation_bytes + c.workspace_bytes,
        }
    return grids, predicted


def to_plan(result, model=None, model_options=None, input_shape=None):
    """The `hpcnn.plan.Plan` of a PlanResult: every leaf's grid, the most common one as the default."""
    from hpcnn.plan import Plan
    grids, predicted = plan_entries(result)
    counts = {}
    for g in grids.values():
        counts[tuple(g)] = counts.get(tuple(g), 0) + 1
    default = max(counts, key=counts.get)
    return Plan(result.ranks, list(default), grids, model, model_options, input_shape, predicted)


def breakdown(result):
    """What a PlanResult predicts, split the way `hpcnn bench scaling` measures it.

    Returns {"layers": {leaf name: {compute_s, halo_s, collective_s, shuffle_s}}, "block_shuffle_s":
    shuffles inside blocks (a residual's shortcut output joining the body's grid), "other_s": the rest
    outside the leaves (residual adds and concatenations, the optimizer step), "gradient_allreduce_s":
    the exposed wait after backward, "iteration_s", "memory_bytes"}; a shuffle into a leaf's grid counts
    for that leaf (the leaf's forward runs it).
    """
    layers, other, between = {}, 0.0, 0.0
    for node, _, c, shuffle in result.layers:
        if node is None:
            between += shuffle
            continue
        if isinstance(node, Block):
            other += c.time
            continue
        layers[node.name] = {"compute_s": c.forward + c.backward, "halo_s": c.halo_forward + c.halo_backward,
                             "collective_s": c.collective_forward + c.collective_backward, "shuffle_s": shuffle}
    t = result.totals()
    return {"layers": layers, "block_shuffle_s": between, "other_s": other + t["optimizer"],
            "gradient_allreduce_s": t["gradient_allreduce"],
            "iteration_s": t["iteration"], "memory_bytes": t["memory"]}
