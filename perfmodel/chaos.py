"""A time model for the CHAOS engine: epoch time and speedup from threads, samples and measured per-sample costs.

The model
---------
One epoch of n samples (mini-batch b, so n/b worker steps) on T workers and P free cores:

    train(T) = n * max(c(T) / min(T, P), g)  +  tail(T)  +  start(T)
    epoch(T) = train(T) + s

    c(T)    = c * (1 + kappa * (min(T, P) - 1))   per-sample worker time; c is measured with one worker,
              kappa is the slowdown per extra busy worker: from sharing the weights (cache lines of
              the weights that every update invalidates on the other cores) plus from the machine
              (a neighbour core busy with independent work: shared caches, memory bandwidth, SMT
              siblings); 0 unless measured
    g       = the part of c for which a worker holds the GIL (Python between nogil calls): the GIL
              serializes it, so throughput never exceeds 1/g samples per second whatever T is
    tail(T) = (T > 1) * b * c(T) / 2: the workers take shrinking shares of what is left of the epoch,
              the last ones single mini-batches (hpcnn.chaos.workers), so at the epoch's barrier the
              others wait on average half a mini-batch for the last one
    start(T)= (T > 1) * T * t_thread: starting and joining the worker threads (the epoch barrier)
    s       = the serial part per epoch outside the workers: validation, sample order, LR table

The speedup the benchmark reports is images per second over the training phase:
speedup(T) = train(1) / train(T). With T > P the cores are shared, so the model stops gaining.

Where the inputs come from
--------------------------
Never from the runs the model predicts: `hpcnn bench chaos` measures them in runs of their own
(`hpcnn.bench.chaos_costs`, with weights and sample orders no timed run uses):
  c, g, s   a short one-worker calibration run before the timed runs (`costs_from_metrics` on its
            epochs): c = the worker's busy time per sample, g = (busy time - time inside the nogil
            step) per sample for the fused step; for the layer-by-layer step, the share of time
            outside numba kernels in a run with timed kernels (g = that share * c)
  kappa     short calibration runs of the fused step, one before each timed repeat (medians): the
            machine's part from two independent one-worker engines (each with its own weights) run
            at once against one alone; the weights' part from one two-worker engine (one shared
            copy) against those two
  t_thread  starting and joining a worker thread that does nothing (the least of 20 tries)
`ChaosCosts.sources` names, per input, the measurement it came from. The bound max(c/T, g)
ignores the cost of handing the GIL back and forth, so for a GIL-bound step (g close to c) the
measured speedup falls below it (two workers can be slower than one).
"""
from dataclasses import asdict, dataclass, field

__all__ = ["ChaosCosts", "costs_from_metrics", "train_seconds", "epoch_seconds", "predict"]


@dataclass
class ChaosCosts:
    samples: int                 # n: samples per epoch (on this rank)
    sample_seconds: float        # c: one worker's time per sample, one worker running
    gil_seconds: float           # g: GIL-held part of c
    serial_seconds: float = 0.0  # s: per-epoch time outside the workers
    cores: int = 2               # P: cores free for the workers
    batch: int = 1               # b
    thread_seconds: float = 1e-4  # t_thread: start + join of one worker thread
    contention: float = 0.0      # kappa
    sources: dict = field(default_factory=dict)  # input name -> the measurement it came from

    def as_dict(self):
        return asdict(self)


def costs_from_metrics(metrics, *, cores, batch=1, gil_seconds=None, thread_seconds=1e-4, contention=0.0):
    """ChaosCosts from the engine's per-epoch metrics of a one-worker run (a list of dicts; medians are taken):
    a calibration run of its own, not one of the runs whose speedup the model then predicts.

    gil_seconds: the GIL-held time per sample when the run's own split (busy - kernel time) does not
    apply (the layer-by-layer step); None uses that split.
    """
    def median(values):
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    metrics = list(metrics)
    if not metrics:
        raise ValueError("costs_from_metrics: no epochs given")
    if any(m["threads"] != 1 for m in metrics):
        raise ValueError("costs_from_metrics: the costs come from a one-worker run")
    n = metrics[0]["samples"]
    c = median([m["busy_seconds"] / m["samples"] for m in metrics])
    if gil_seconds is None:
        gil_seconds = median([(m["busy_seconds"] - m["kernel_seconds"]) / m["samples"] for m in metrics])
    serial = median([m["seconds"] - m["train_seconds"] for m in metrics])
    return ChaosCosts(samples=n, sample_seconds=c, gil_seconds=max(0.0, gil_seconds), serial_seconds=serial,
                      cores=int(cores), batch=int(batch), thread_seconds=thread_seconds,
                      contention=contention)


def _sample_seconds(costs, threads):
    busy = min(threads, costs.cores)
    return costs.sample_seconds * (1.0 + costs.contention * (busy - 1))


def train_seconds(costs, threads):
    """Predicted wall time of one epoch's training phase on `threads` workers."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, received {threads}")
    c = _sample_seconds(costs, threads)
    body = costs.samples * max(c / min(threads, costs.cores), costs.gil_seconds)
    extra = 0.0
    if threads > 1:
        extra = costs.batch * c / 2 + threads * costs.thread_seconds
    return body + extra


def epoch_seconds(costs, threads):
    """Predicted wall time of one epoch, validation and other serial parts included."""
    return train_seconds(costs, threads) + costs.serial_seconds


def predict(costs, threads):
    """{threads, train_seconds, epoch_seconds, images_per_second, speedup} for a number of workers."""
    t = train_seconds(costs, threads)
    return {"threads": threads, "train_seconds": t, "epoch_seconds": t + costs.serial_seconds,
            "images_per_second": costs.samples / t, "speedup": train_seconds(costs, 1) / t}
