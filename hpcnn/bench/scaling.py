"""Strong and weak scaling of a model over ranks: measured time, throughput, communication and memory next to
the performance model's prediction for the same point, as CSV and plots.

    hpcnn bench scaling --model meshnet --input 18x512x512 --batch 4 --ranks 1,2 --mode strong
    hpcnn bench scaling --model resnet18 --input 3x64x64 --batch 8 --ranks 1,2 --mode weak --grids sample,spatial
    hpcnn bench scaling --model resnet18 --input 3x64x64 --batch 8 --ranks 1,2 --grids sample,1x1x1x2x1,1x1x1x1x2

A point is (ranks, threads per rank, split). The splits of `--grids`: `sample` (the batch over the
ranks, grid Px1x1), `spatial` (the best grid with Pn = 1 by the model), `hybrid` (the best grid with
both Pn > 1 and a spatial split), `plan` (the planner's layer-by-layer plan), or explicit grids such as
1x2x1, or long ones such as 1x1x1x2x1 (channels over 2 ranks) and 1x1x1x1x2 (filters), used at the rank
counts whose product they match; `auto` is sample,spatial,plan. Splits that
come to the same configuration at a rank count are measured once. Strong: the global batch is
--batch at every rank count; weak: it grows with the ranks (--batch at the smallest count).

Every configuration runs in its own `mpiexec -n R` (so peak memory is its own), with BLAS, OpenMP and
numba set to --threads-per-rank threads (default one: ranks are cores), on --device (cpu, gpu: the GPU
of each rank's node-local rank, emulated-gpu); `--threads 2` adds 1 rank with
2 threads beside the sweep (strong mode), to set splitting the sample against threading the kernels. An iteration is `probe.training_step` (forward, backward of a gradient of ones,
bucketed gradient allreduce, SGD with momentum), as in the performance model; after a warm-up and
one traced iteration, --iterations are timed (the slowest rank's time; median and best). Recorded:
time per iteration, samples per second, communication seconds by kind (halo exchange, collectives
inside layers, shuffles between grids, the gradient-allreduce wait) and their share of the
iteration, peak memory per rank (resident set; arrays allocated by the run, via tracemalloc, or with
--device gpu what CuPy's memory pool holds after the traced iteration), the
per-layer breakdown, and the model's prediction of each (profile: --machine).

Under SLURM (slurm/scaling.sbatch) every configuration is started with `srun -n R hpcnn bench
scaling ... --here` (it writes OUT/points/*.json), and `hpcnn bench scaling --merge --out OUT`
writes the tables and plots from every point there: scaling.csv, scaling_layers.csv,
scaling.json, scaling_<mode>.png (speedup with the ideal line, efficiency, time per iteration by
part) and breakdown_<mode>.png (per-layer stacked compute, halo, allreduce, shuffle; measured and
predicted).
"""
import argparse
import glob
import json
import os
import statistics

from perfmodel import provenance

from ..backend import DEVICES
from .launch import THREAD_VARIABLES, run_ranks
from .output import write_csv
from .scaling_plots import plot
from .scaling_setup import (chain, distinct_splits, ints, prediction_machine, resolve_splits, sample_shape,
                            split_tokens)
from .scaling_tables import CSV_COLUMNS, LAYER_COLUMNS, load_points, print_table, table_rows
from .scaling_worker import here

__all__ = ["add_arguments", "run", "THREAD_VARIABLES", "CSV_COLUMNS", "LAYER_COLUMNS", "resolve_splits"]


def add_arguments(p):
    p.add_argument("--model", default="meshnet", help="a zoo model (default meshnet)")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="one sample's shape, CxHxW or CxDxHxW (default: 18x512x512 for meshnet, else the model's "
                        "usual input)")
    p.add_argument("--batch", type=int, default=2, help="global batch (weak: at the smallest rank count; default 2)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. --set widths=[16,16] (repeatable)")
    p.add_argument("--ranks", default="1,2", help="rank counts, one thread per rank (default 1,2)")
    p.add_argument("--mode", choices=("strong", "weak"), default="strong",
                   help="strong: the same global batch at every rank count; weak: the batch grows with the ranks")
    p.add_argument("--grids", default="auto", help="splits: auto (= sample,spatial,plan) or a comma list of "
                   "sample, spatial, hybrid, plan and grids like 1x2x1 or, splitting channels or filters, 1x1x1x2x1")
    p.add_argument("--threads", default="2", help="thread counts to run on 1 rank beside them (strong mode; "
                   "default 2; '' for none)")
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS/OpenMP/numba threads of every rank of the "
                   "sweep (default 1; the predictions assume the machine profile's threads per rank)")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration (default 3)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where every rank computes: cpu (default), gpu (the GPU of its node-local rank; ranks may "
                        "share one) or emulated-gpu (the GPU code path on the CPU: correct runs, not GPU times)")
    p.add_argument("--overlap", choices=("on", "off"), default="on",
                   help="compute convolution interiors while halos travel (default on)")
    p.add_argument("--machine", default=None, help="machine profile for the predictions (default: the "
                   "shipped profile most like this machine)")
    p.add_argument("--out", default="bench-out", help="folder for the results (default bench-out)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    p.add_argument("--here", action="store_true", help="measure on the ranks this process was started with "
                   "(under mpiexec or srun) and write OUT/points/*.json; the SLURM sweep uses this")
    p.add_argument("--only", default=None, help="with --here: measure only this split (default: every split; the "
                   "peak resident set then covers the splits measured before in the same process)")
    p.add_argument("--role", choices=("sweep", "threads"), default="sweep", help=argparse.SUPPRESS)
    p.add_argument("--merge", action="store_true", help="only write the tables and plots from OUT/points/*.json")
    p.add_argument("--list-splits", type=int, default=None, metavar="RANKS",
                   help="print the distinct splits to measure at RANKS ranks, one per line, and exit")


# --- the driver -----------------------------------------------------------------------------------
def _worker_argv(args):
    """The options a `--here` worker needs to measure what this command would."""
    argv = ["--model", args.model, "--batch", str(args.batch), "--ranks", args.ranks, "--mode", args.mode,
            "--grids", args.grids, "--iterations", str(args.iterations), "--overlap", args.overlap,
            "--device", args.device,
            "--threads-per-rank", str(args.threads_per_rank), "--out", args.out]
    if args.input:
        argv += ["--input", args.input]
    if args.machine:
        argv += ["--machine", args.machine]
    for item in args.options:
        argv += ["--set", item]
    return argv


def _launch(args, ranks, threads, label, role):
    """One configuration in its own `mpiexec -n ranks` with `threads` threads per rank."""
    print(f"running {ranks} rank(s) x {threads} thread(s), split {label}", flush=True)
    run_ranks(ranks, threads, ["-m", "mpi4py", "-m", "hpcnn.cli", "bench", "scaling", *_worker_argv(args), "--here",
                               "--only", label, "--role", role],
              args.timeout, "hpcnn bench scaling", f"{ranks} rank(s) x {threads} thread(s), {label}")


def _drive(args):
    """The sweep: every distinct split at every rank count (and the --threads runs), one mpiexec each, then the
    tables and plots."""
    machine = prediction_machine(args)
    tokens = split_tokens(args)
    ranks_list = ints(args.ranks)
    if not ranks_list or min(ranks_list) < 1:
        raise SystemExit(f"hpcnn bench scaling: --ranks takes positive rank counts, received {args.ranks!r}")
    folder = os.path.join(args.out, "points")
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, f"{args.mode}-*.json")):
        os.remove(old)
    cores = os.cpu_count() or 1
    print(f"hpcnn bench scaling: {args.model} input {'x'.join(map(str, sample_shape(args)))}, {args.mode} scaling, "
          f"ranks {ranks_list}, splits {', '.join(tokens)}; predictions from {machine.path or machine.name}")
    print(provenance.check(machine)[1])
    print(provenance.held_out_line(machine))
    if args.threads_per_rank < 1:
        raise SystemExit(f"hpcnn bench scaling: --threads-per-rank must be at least 1, received {args.threads_per_rank}")
    note = provenance.threads_note(machine, args.threads_per_rank)
    if note:
        print(note)
    if max(ranks_list) * args.threads_per_rank > cores:
        print(f"note: {max(ranks_list)} ranks x {args.threads_per_rank} thread(s) on {cores} cores: those timings are "
              f"oversubscribed (correct runs, meaningless times)")
    runs = []
    for ranks in ranks_list:
        resolved = resolve_splits(chain(args, ranks), ranks, machine, tokens)
        for label, result, note in resolved:
            if result is None and note != "another rank count":
                print(f"  {ranks} rank(s): no {label} split ({note})")
        runs += [(ranks, args.threads_per_rank, label, "sweep") for label in distinct_splits(resolved)]
    if args.mode == "strong":
        for threads in ints(args.threads):
            if threads != args.threads_per_rank:
                runs += [(1, threads, label, "threads")
                         for label in distinct_splits(resolve_splits(chain(args, 1), 1, machine, tokens))]
    for ranks, threads, label, role in runs:
        _launch(args, ranks, threads, label, role)
    return _merge(args.out)


# --- tables and plots -----------------------------------------------------------------------------
def _merge(out):
    """scaling.csv, scaling_layers.csv, scaling.json and the plots from every point in OUT/points."""
    points = load_points(out)
    rows, layer_rows = table_rows(points)
    write_csv(os.path.join(out, "scaling.csv"), CSV_COLUMNS, rows)
    write_csv(os.path.join(out, "scaling_layers.csv"), LAYER_COLUMNS, layer_rows)
    errors = [abs(r["error"]) for r in rows if r["role"] == "sweep" and not r["oversubscribed"]]
    summary = {"median_abs_error": statistics.median(errors) if errors else None,
               "max_abs_error": max(errors) if errors else None}
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump({"summary": summary, "rows": rows, "points": points}, f, indent=1)
    written = ["scaling.csv", "scaling_layers.csv", "scaling.json"]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        written += plot(rows, [p for p in points if p["mode"] == mode], mode, out)
    print_table(rows, summary, points)
    print(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    return 0


def run(args):
    if args.merge:
        return _merge(args.out)
    if args.list_splits is not None:
        machine = prediction_machine(args)
        resolved = resolve_splits(chain(args, args.list_splits), args.list_splits, machine, split_tokens(args))
        for label in distinct_splits(resolved):
            print(label)
        return 0
    if args.here:
        return here(args)
    if any(name in os.environ for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        raise SystemExit("hpcnn bench scaling starts its own mpiexec runs: start it without mpiexec, or add --here "
                         "to measure on the ranks it was started with")
    return _drive(args)
