"""One training iteration from per-layer costs: forward, backward, the bucketed gradient allreduce, the step."""
from .costs import BUCKET_BYTES, busy_ranks

__all__ = ["gradient_allreduce_time", "iteration_time"]


def gradient_allreduce_time(param_bytes_backward_order, ready_times, machine, ranks, backward_end):
    """(exposed seconds, total seconds) of the bucketed gradient allreduce after backward.

    param_bytes_backward_order[i] is layer i's gradient bytes, in the order backward produces them,
    ready at ready_times[i] (seconds since backward began). Buckets of BUCKET_BYTES are reduced in
    order, each starting when its last layer is ready and the previous bucket is done;
    `overlap.gradient_allreduce` of the profile says how much of that pipelining the MPI library
    really achieves (0: every allreduce runs after backward, 1: perfect overlap).
    """
    if ranks <= 1:
        return 0.0, 0.0
    inter = machine.spans_nodes(ranks)
    buckets, nbytes, ready = [], 0.0, 0.0
    for b, t in zip(param_bytes_backward_order, ready_times):
        if b <= 0:
            continue
        if nbytes and nbytes + b > BUCKET_BYTES:
            buckets.append((nbytes, ready))
            nbytes = 0.0
        nbytes += b
        ready = t
    if nbytes:
        buckets.append((nbytes, ready))
    end = 0.0
    total = 0.0
    for size, t_ready in buckets:
        t = machine.allreduce(size, ranks, inter)
        total += t
        end = max(end, t_ready) + t
    pipelined = max(end - backward_end, 0.0)
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
    grads = [c.param_bytes for c in reversed(layer_costs)]
    exposed, total = gradient_allreduce_time(grads, ready, machine, ranks, t)
    params = sum(c.param_bytes for c in layer_costs) / machine.itemsize
    busy = busy_ranks(machine, ranks)
    step = 3 * machine.kernel_time("elementwise", busy, n=1, c=int(params)) if params else 0.0
    parts = {"forward": fwd, "backward": t, "shuffle": shuffles, "gradient_allreduce": exposed,
             "gradient_allreduce_total": total, "optimizer": step}
    return fwd + t + shuffles + exposed + step, parts
