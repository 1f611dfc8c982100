"""One training iteration from per-layer costs: forward, backward, the bucketed gradient reduction, the step."""
from typing import NamedTuple

from .costs import BUCKET_BYTES, busy_ranks

__all__ = ["Reduction", "gradient_allreduce_time", "iteration_time"]


class Reduction(NamedTuple):
    """One layer's parameter gradients as hpcnn.parallel.GradientReducer moves them: `whole` bytes, of which this
    rank's `piece` is summed over `group` ranks and the whole then gathered over `gather` ranks (1: unsplit);
    `key`: the grid of a split layer (None: unsplit); buckets hold layers of one key."""
    whole: float
    piece: float
    group: int
    gather: int = 1
    key: tuple = None

    @classmethod
    def of(cls, cost):
        """The Reduction of a LayerCost."""
        return cls(cost.param_bytes, cost.grad_piece_bytes, cost.grad_group, cost.grad_gather, cost.grad_grid)


def gradient_allreduce_time(reductions, ready_times, machine, ranks, backward_end):
    """(exposed seconds, total seconds) of the bucketed gradient reduction after backward.

    reductions[i] is layer i's `Reduction`, in the order backward produces them, ready at ready_times[i]
    (seconds since backward began). Buckets of up to BUCKET_BYTES of whole gradients, of one key, are
    summed in order, each starting when its last layer is ready and the previous sum is done; the split
    buckets' allgathers follow once backward has ended and their own sum is done (`GradientReducer.finish`).
    `overlap.gradient_allreduce` of the profile says how much of that pipelining the MPI library
    really achieves (0: every collective runs after backward, 1: perfect overlap).
    """
    if ranks <= 1:
        return 0.0, 0.0
    inter = machine.spans_nodes(ranks)
    buckets, ready = [], 0.0
    whole = piece = 0.0
    last = None
    for r, t in zip(reductions, ready_times):
        if r.whole <= 0:
            continue
        if whole and (whole + r.whole > BUCKET_BYTES or r.key != last.key):
            buckets.append((whole, piece, last, ready))
            whole = piece = 0.0
        whole += r.whole
        piece += r.piece
        last, ready = r, t
    if whole:
        buckets.append((whole, piece, last, ready))
    end = gathered = total = 0.0
    for whole, piece, r, t_ready in buckets:
        t = machine.allreduce(piece, r.group, inter) if r.group > 1 else 0.0
        end = max(end, t_ready) + t
        total += t
        if r.gather > 1:
            g = machine.allgather(whole, r.gather, r.gather > machine.ranks_per_node)
            gathered = max(gathered, end, backward_end) + g
            total += g
    pipelined = max(max(end, gathered) - backward_end, 0.0)
    f = machine.overlap["gradient_allreduce"]
    return f * pipelined + (1.0 - f) * total, total


def iteration_time(layer_costs, shuffles, machine, ranks):
    """(seconds, parts) of one training iteration from per-layer costs in forward order and the shuffle times.

    layer_costs: [(LayerCost)] of every leaf layer in forward order; shuffles: total seconds of the
    shuffles (forward + backward). The optimizer step is an element-wise pass over the parameters.
    """
    fwd = sum(c.forward + c.halo_forward + c.collective_forward for c in layer_costs)
    bwd_each = [c.backward + c.halo_backward + c.collective_backward for c in reversed(layer_costs)]
    ready, t = [], 0.0
    for b in bwd_each:
        t += b
        ready.append(t)
    grads = [Reduction.of(c) for c in reversed(layer_costs)]
    exposed, total = gradient_allreduce_time(grads, ready, machine, ranks, t)
    params = sum(c.param_bytes for c in layer_costs) / machine.itemsize
    busy = busy_ranks(machine, ranks)
    step = 3 * machine.kernel_time("elementwise", busy, n=1, c=int(params)) if params else 0.0
    parts = {"forward": fwd, "backward": t, "shuffle": shuffles, "gradient_allreduce": exposed,
             "gradient_allreduce_total": total, "optimizer": step}
    return fwd + t + shuffles + exposed + step, parts
