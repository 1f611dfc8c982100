"""One `hpcnn bench scaling` configuration measured on the ranks it was started with (`--here`, under mpiexec or srun)."""
import gc
import json
import os
import resource
import socket
import statistics
import sys
import time
import tracemalloc

from .scaling_setup import (build_model, chain, distinct_splits, global_batch, grid_text, prediction_machine,
                            resolve_splits, sample_shape, split_tokens)

__all__ = ["here"]


def _measure(args, label, result, splits, machine):
    """The point of one configuration (rank 0; None on the others): times, communication by kind, peak
    memory, the per-layer breakdown and the model's prediction of each."""
    import numpy as np

    from perfmodel.report import breakdown, to_plan

    from .. import parallel
    from ..backend import open_device
    from ..parallel.mpi import Clock, Communicator
    from ..calibrate.probe import LayerProbe, training_step

    world = Communicator.world()
    device = open_device(args.device)
    ranks = world.size
    shape = sample_shape(args)
    batch = global_batch(args, ranks)
    global_shape = (batch,) + shape
    plan = to_plan(result)

    def build():
        model = build_model(args).to(device)
        dm = parallel.distribute(model, plan=plan, overlap=args.overlap == "on")
        first = parallel.Distribution(world, plan.grid_for(next(model.named_leaves())[0]))
        rng = np.random.default_rng(world.rank)
        x = device.put(rng.standard_normal(first.local_shape(global_shape), dtype=np.float32))
        xt = parallel.DistTensor(x, first, global_shape)
        momentum = {name: device.xp.zeros_like(p) for name, p, _ in model.parameters()}
        return model, dm, xt, momentum

    # warm up (numba loads or compiles its kernels, buffers are allocated), then trace one iteration on
    # fresh objects: the traced peak is what the model, its data and one iteration allocate
    model, dm, xt, momentum = build()
    training_step(dm, xt, momentum)
    del model, dm, xt, momentum
    gc.collect()
    tracemalloc.start()
    model, dm, xt, momentum = build()
    training_step(dm, xt, momentum)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if device.name == "gpu":
        # the arrays live in device memory: what CuPy's pool holds after the traced iteration (its peak)
        traced_peak = device.xp.get_default_memory_pool().total_bytes()

    probe = LayerProbe(dm)
    times, comm = [], []
    for _ in range(args.iterations):
        world.barrier()
        before = world.clock.snapshot()
        t0 = time.perf_counter()
        training_step(dm, xt, momentum)
        device.synchronize()
        elapsed = time.perf_counter() - t0
        comm.append(Clock.difference(before, world.clock.snapshot()))
        times.append(world.allreduce_scalar(elapsed, "max"))
    local = {k: statistics.median(c[k] for c in comm) for k in comm[0]}
    every = world.allgather_object({"comm": local, "comm_total": statistics.median(sum(c.values()) for c in comm),
                                          "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                          "traced": traced_peak})
    layers = probe.summary(world)
    if world.rank != 0:
        return None
    predicted = breakdown(result)
    p_comm = (sum(v["halo_s"] + v["collective_s"] + v["shuffle_s"] for v in predicted["layers"].values())
              + predicted["gradient_allreduce_s"] + predicted["block_shuffle_s"])
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    return {
        "mode": args.mode, "model": args.model, "input": "x".join(map(str, shape)), "batch": batch,
        "ranks": ranks, "threads": threads, "role": args.role, "label": label, "splits": splits, "grid": grid_text(result),
        "overlap": args.overlap, "device": args.device, "iterations_s": times, "iteration_s": statistics.median(times),
        "best_s": min(times),
        "comm_s": {k: max(r["comm"][k] for r in every) for k in every[0]["comm"]},
        "comm_total_s": max(r["comm_total"] for r in every),
        "peak_rss_bytes": max(r["rss"] for r in every), "peak_arrays_bytes": max(r["traced"] for r in every),
        "layers": layers, "predicted": {**predicted, "comm_s": p_comm, "threads": machine.run_threads,
                                        "threads_priced": machine.prices_threads(threads)}, "machine": machine.path or machine.name,
        "host": socket.gethostname(), "cpu_count": os.cpu_count(),
        "command": "hpcnn bench scaling " + " ".join(sys.argv[sys.argv.index("scaling") + 1:])
        if "scaling" in sys.argv else "",
    }


def here(args):
    """`--here`: measure every distinct split (or --only one) on the ranks this process was started with and
    write OUT/points/MODE-ROLE-rRANKS-tTHREADS-SPLIT.json."""
    from ..parallel.abort import install_abort_on_error
    from ..parallel.mpi import Communicator
    from ..threads import apply_threads
    install_abort_on_error()
    world = Communicator.world()
    ranks = world.size
    # the launcher set every thread variable to the run's threads per rank; they go to the kernels as
    # `hpcnn train` gives them (apply_threads: BLAS on one thread)
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    apply_threads(threads)
    # the predictions price this run's threads per rank (through the profile's measured thread speedup)
    machine = prediction_machine(args).for_threads(threads)
    resolved = resolve_splits(chain(args, ranks), ranks, machine, split_tokens(args))
    groups = distinct_splits(resolved)
    by_label = {label: result for label, result, _ in resolved}
    todo = [args.only] if args.only else list(groups)
    folder = os.path.join(args.out, "points")
    if world.rank == 0:
        os.makedirs(folder, exist_ok=True)
        for label, result, note in resolved:
            if result is None:
                print(f"hpcnn bench scaling: {ranks} rank(s): no {label} split ({note})", flush=True)
    for label in todo:
        if label not in groups:
            raise SystemExit(f"hpcnn bench scaling: split {label!r} is not measured at {ranks} ranks "
                             f"(distinct splits: {', '.join(groups) or 'none'})")
        point = _measure(args, label, by_label[label], groups[label], machine)
        if point is not None:
            threads = point["threads"]
            path = os.path.join(folder, f"{args.mode}-{args.role}-r{ranks}-t{threads}-{label}.json")
            with open(path, "w") as f:
                json.dump(point, f, indent=1)
            predicted = (f"predicted {point['predicted']['iteration_s']:.3f} s"
                         if args.role == "sweep" or point["predicted"]["threads_priced"] else
                         "(not predicted: the profile measured no thread speedup)")
            print(f"  {ranks} rank(s) x {threads} thread(s), {label} ({point['grid']}): "
                  f"{point['iteration_s']:.3f} s per iteration, {predicted}", flush=True)
    return 0
