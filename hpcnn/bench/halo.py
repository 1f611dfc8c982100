"""Halo exchange in training: a meshnet-like stack on one large sample, time per iteration with and without overlap.

Runs on the ranks it is started with (`mpiexec -n P hpcnn bench halo`), spatially split over H
by default (grid 1xPx1). One training iteration is forward, per-pixel cross-entropy, backward
(halo exchanges, the adjoint halo sums, the bucketed gradient allreduce) and an SGD step. For
each mode (overlap on: convolution interiors computed while halos travel, gradient allreduce
started per bucket; off: everything in sequence) it reports the median and the best time per
iteration (the best is the one least disturbed by other processes on a shared machine), the
time spent in halo exchange calls and its share, the bytes each rank sent, and the time waiting
for the gradient allreduce. Memory: the peak resident set of each rank (getrusage) and the peak
of memory allocated by arrays during one iteration, data and model included (tracemalloc).
With --allreduce it also times the backward of a data-parallel resnet18 (11M parameters) with
the bucketed gradient allreduce started per bucket during the backward, or only after it.

    mpiexec -n 2 hpcnn bench halo --size 2048 --channels 16 --json halo.json
"""
import json
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

__all__ = ["add_arguments", "run", "measure", "measure_allreduce"]


def add_arguments(p):
    p.add_argument("--size", type=int, default=2048, help="image height and width (default 2048)")
    p.add_argument("--channels", type=int, default=16, help="input channels (default 16)")
    p.add_argument("--widths", default="16,16,16", help="conv widths of the stack (default 16,16,16)")
    p.add_argument("--dilations", default="1,2,1", help="their dilations (default 1,2,1)")
    p.add_argument("--iterations", type=int, default=2, help="timed iterations per mode (default 2)")
    p.add_argument("--grid", default=None, help="N,H,W (default 1,P,1: H split over the P ranks)")
    p.add_argument("--modes", default="on,off", help="overlap modes to time: on, off or both (default on,off)")
    p.add_argument("--json", default=None, help="write the results (rank 0) to this file")
    p.add_argument("--allreduce", action="store_true",
                   help="also time the gradient allreduce overlap: resnet18 (11M parameters), batch split")


def _ints(text):
    return tuple(int(v) for v in str(text).split(",") if v.strip())


def _iteration(dm, dloss, xt, lt, lr=1e-3):
    y = dm.forward(xt)
    value = dloss.forward(y, lt)
    dm.backward(dloss.backward())
    for _, p, g in dm.parameters():
        p -= lr * g
    return value


def _counters(dm):
    exchanges = dm.halo_exchanges()
    return (sum(e.seconds for e in exchanges), sum(e.bytes_sent for e in exchanges), dm.reducer.wait_seconds)


def measure(size=2048, channels=16, widths=(16, 16, 16), dilations=(1, 2, 1), iterations=2, grid=None,
            modes=("on", "off"), comm=None):
    """Per-rank results as a dict (see the module docstring); a collective over `comm`."""
    from .. import models, nn
    from .. import parallel
    from ..parallel.mpi import Communicator
    world = Communicator.world() if comm is None else Communicator.of(comm)
    ranks = world.size
    grid = tuple(grid) if grid else (1, ranks, 1)
    d = parallel.Distribution(world, grid)
    shape = (1, channels, size, size)

    def build(global_shape):
        model = models.build("meshnet", in_channels=channels, num_classes=2, widths=widths, dilations=dilations,
                             seed=0)
        rng = np.random.default_rng(world.rank)
        local = d.local_shape(global_shape)
        xt = parallel.DistTensor(rng.standard_normal(local, dtype=np.float32), d, global_shape)
        lt = parallel.DistTensor(rng.integers(0, 2, local[:1] + local[2:]), d, global_shape[:1] + global_shape[2:])
        return model, xt, lt

    # compile the kernels on a small image first, so that neither the timings nor the memory peak see it
    model, xt, lt = build((1, channels, 8 * ranks, 8 * ranks))
    _iteration(parallel.distribute(model, d), parallel.distribute(nn.CrossEntropyLoss(), d), xt, lt)
    del model, xt, lt

    tracemalloc.start()
    model, xt, lt = build(shape)
    dm = parallel.distribute(model, d)
    dloss = parallel.distribute(nn.CrossEntropyLoss(), d)
    _iteration(dm, dloss, xt, lt)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    out = {"ranks": ranks, "grid": list(grid), "size": size, "channels": channels, "widths": list(widths),
           "dilations": list(dilations), "local_shape": list(xt.local.shape), "modes": {},
           "peak_traced_bytes": traced_peak}
    samples = {m: {"times": [], "cpu": [], "halo": [], "sent": [], "wait": []} for m in modes}
    # the modes take turns, so that other load on a shared machine falls on both alike
    for _ in range(iterations):
        for mode in modes:
            dm.overlap = mode == "on"
            dm.reducer.overlap = mode == "on"
            got = samples[mode]
            world.barrier()
            h0, b0, w0 = _counters(dm)
            t0, c0 = time.perf_counter(), time.process_time()
            _iteration(dm, dloss, xt, lt)
            got["cpu"].append(time.process_time() - c0)
            world.barrier()
            got["times"].append(time.perf_counter() - t0)
            h1, b1, w1 = _counters(dm)
            got["halo"].append(h1 - h0)
            got["sent"].append(b1 - b0)
            got["wait"].append(w1 - w0)
    for mode, got in samples.items():
        out["modes"][mode] = {"iteration_s": statistics.median(got["times"]), "best_s": min(got["times"]),
                              "times_s": got["times"], "cpu_s": min(got["cpu"]),
                              "halo_s": statistics.median(got["halo"]), "bytes_sent": int(statistics.median(got["sent"])),
                              "allreduce_wait_s": statistics.median(got["wait"])}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def measure_allreduce(iterations=6, comm=None):
    """Backward time of a data-parallel resnet18 with the bucketed allreduce overlapped or not (rank 0's view)."""
    from .. import models, nn
    from .. import parallel
    from ..parallel.mpi import Communicator
    world = Communicator.world() if comm is None else Communicator.of(comm)
    ranks = world.size
    d = parallel.Distribution(world, (ranks, 1, 1))
    model = models.build("resnet18", in_channels=3, num_classes=100, small_input=True, width=64, seed=0)
    rng = np.random.default_rng(0)
    xt = parallel.scatter(rng.standard_normal((2 * ranks, 3, 32, 32), dtype=np.float32), d)
    lt = parallel.scatter(rng.integers(0, 100, 2 * ranks), d)
    dm, dloss = parallel.distribute(model, d), parallel.distribute(nn.CrossEntropyLoss(), d)
    samples = {True: ([], []), False: ([], [])}
    for i in range(iterations + 1):
        for overlap in (True, False):
            dm.reducer.overlap = overlap
            dloss.forward(dm.forward(xt), lt)
            g = dloss.backward()
            world.barrier()
            w0, t0 = dm.reducer.wait_seconds, time.perf_counter()
            dm.backward(g)
            world.barrier()
            if i:  # the first round warms up
                samples[overlap][0].append(time.perf_counter() - t0)
                samples[overlap][1].append(dm.reducer.wait_seconds - w0)
    params = sum(p.size for _, p, _ in dm.parameters())
    return {"parameters": params, "buckets": len(dm.reducer.buckets),
            **{("on" if k else "off"): {"backward_s": statistics.median(v[0]), "wait_s": statistics.median(v[1])}
               for k, v in samples.items()}}


def run(args):
    from ..parallel.abort import install_abort_on_error
    from ..parallel.mpi import Communicator
    from ..threads import apply_threads, choose_threads
    install_abort_on_error()
    world = Communicator.world()
    threads = choose_threads(world.node_size())
    apply_threads(threads.threads)
    if world.rank == 0:
        print(f"hpcnn bench halo on {world.size} rank(s); {threads.describe()}")
    modes = ("on", "off") if args.modes == "both" else tuple(m for m in args.modes.split(",") if m)
    bad = [m for m in modes if m not in ("on", "off")]
    if bad:
        raise SystemExit(f"hpcnn bench halo: --modes takes on, off or both, received {args.modes!r}")
    grid = _ints(args.grid) if args.grid else None
    result = measure(args.size, args.channels, _ints(args.widths), _ints(args.dilations), args.iterations, grid,
                     modes)
    allreduce = measure_allreduce() if args.allreduce else None
    per_rank = world.gather_object(result, root=0)
    if world.rank != 0:
        return 0
    summary = {**per_rank[0], "peak_rss_bytes": [r["peak_rss_bytes"] for r in per_rank],
               "cpu_s_per_rank": {m: [r["modes"][m]["cpu_s"] for r in per_rank] for m in modes},
               "peak_traced_bytes": [r["peak_traced_bytes"] for r in per_rank], "allreduce": allreduce,
               "halo_s_per_rank": {m: [r["modes"][m]["halo_s"] for r in per_rank] for m in modes},
               "bytes_sent_per_rank": {m: [r["modes"][m]["bytes_sent"] for r in per_rank] for m in modes}}
    print(f"hpcnn bench halo: meshnet widths {summary['widths']} on 1x{args.channels}x{args.size}x{args.size} "
          f"float32, grid {summary['grid']}, {summary['ranks']} rank(s)")
    print(f"{'overlap':>8} {'median s':>8} {'best s':>8} {'halo s':>8} {'halo %':>7} {'MB sent':>8} "
          f"{'allreduce wait s':>17}")
    for m in modes:
        r = summary["modes"][m]
        halo_max = max(summary["halo_s_per_rank"][m])
        print(f"{m:>8} {r['iteration_s']:8.3f} {r['best_s']:8.3f} {halo_max:8.3f} "
              f"{100 * halo_max / r['iteration_s']:6.1f}% "
              f"{max(summary['bytes_sent_per_rank'][m]) / 1e6:8.2f} {r['allreduce_wait_s']:17.4f}")
    print(f"peak memory per rank: RSS {', '.join(f'{b / 2**20:.0f}' for b in summary['peak_rss_bytes'])} MiB; "
          f"arrays (tracemalloc) {', '.join(f'{b / 2**20:.0f}' for b in summary['peak_traced_bytes'])} MiB")
    if args.allreduce:
        ar = summary["allreduce"]
        print(f"gradient allreduce (resnet18, {ar['parameters'] / 1e6:.1f}M parameters in {ar['buckets']} buckets, "
              f"batch split over {summary['ranks']} rank(s)): backward {ar['on']['backward_s']:.3f} s overlapped "
              f"(waiting {ar['on']['wait_s']:.3f} s at the end) vs {ar['off']['backward_s']:.3f} s after the "
              f"backward (waiting {ar['off']['wait_s']:.3f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    sys.stdout.flush()
    return 0
