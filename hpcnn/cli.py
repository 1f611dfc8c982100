"""`hpcnn` and its subcommands: the one place that composes hpcnn and perfmodel.

Each subcommand's module is imported only when that subcommand runs (a benchmark's module only
for `hpcnn bench NAME`), so `hpcnn plan` loads the performance model and not MPI.
"""
import argparse
import sys

from .backend import DEVICES

__all__ = ["main", "build_parser"]


def _add_bench(sub):
    from .bench import BENCHMARKS
    p = sub.add_parser("bench", help="benchmarks with tables, CSV and PNG plots",
                       description="Benchmarks with tables, CSV and PNG plots; `hpcnn bench NAME --help` for one.")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (_, summary) in BENCHMARKS.items():
        # the benchmark's own options are parsed by its module's parser, once it is loaded
        bsub.add_parser(name, help=summary, add_help=False).set_defaults(func=_run_bench)


def _run_bench(args):
    from .bench import BENCHMARKS, load
    module = load(args.benchmark)
    parser = argparse.ArgumentParser(prog=f"hpcnn bench {args.benchmark}", description=BENCHMARKS[args.benchmark][1])
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.bench_args))


def _add_train(sub):
    p = sub.add_parser("train", help="train the model of a job file (under mpiexec/srun: on every rank)",
                       description="Train the model of a TOML job file: validation each epoch, a metrics "
                                   "log, checkpoints; SIGTERM/SIGUSR1 write a checkpoint and exit.")
    p.add_argument("job", help="the job file (TOML), e.g. jobs/lenet-digits.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set training.batch=64 (repeatable)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint of checkpoint.dir (or from CHECKPOINT)")
    p.add_argument("--restart", action="store_true",
                   help="start over, deleting the checkpoints an earlier run left in checkpoint.dir")
    p.add_argument("--engine", choices=("spatial", "chaos", "auto"), help="same as --set distribution.engine=...")
    p.add_argument("--grid", metavar="NxHxW[xCxF]", help="same as --set distribution.grid=[N,H,W] (e.g. 1x2x2; "
                   "1x2x1x2x1 also splits channels over 2 ranks: N x [D x] H x W x C x F)")
    p.add_argument("--plan", metavar="FILE", help="same as --set distribution.plan=FILE")
    p.add_argument("--threads", type=int, metavar="T", help="same as --set training.threads=T: BLAS/numba threads "
                   "per rank (default: the node's cores divided by its ranks)")
    p.add_argument("--device", choices=DEVICES, help="same as --set training.device=... (cpu, gpu: each rank on "
                   "the GPU of its node-local rank, emulated-gpu: the GPU code path checked on the CPU)")
    p.set_defaults(func=_run_train)


def _run_train(args):
    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"distribution.engine={args.engine!r}")
    if args.grid:
        overrides.append("distribution.grid=[" + ",".join(args.grid.lower().split("x")) + "]")
    if args.plan:
        overrides.append(f"distribution.plan={args.plan!r}")
    if args.threads is not None:
        overrides.append(f"training.threads={args.threads}")
    if args.device:
        overrides.append(f"training.device={args.device!r}")
    from .train.trainer import command
    return command(args.job, overrides, resume=args.resume, restart=args.restart,
                   launch_args=getattr(args, "train_args", None))


def _add_data(sub):
    p = sub.add_parser("data", help="write datasets to HDF5 or .npy files; describe a data file")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    g = dsub.add_parser("generate", help="write the train and val splits of a dataset to a file",
                        description="Write a generated dataset (textures, fields3d, digits) to an HDF5 file "
                                    "(groups train/ and val/ with x and y) or a .npy folder, sample by sample.")
    g.add_argument("dataset", help="digits, textures or fields3d")
    g.add_argument("-o", "--out", required=True, help="output: FILE.h5 (hdf5) or a folder (npy)")
    g.add_argument("--format", choices=("hdf5", "npy"), default=None, help="default: from --out (.h5/.hdf5: hdf5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, help="image side (textures, fields3d)")
    g.add_argument("--samples", type=int, help="training samples")
    g.add_argument("--val-samples", type=int, help="validation samples")
    g.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="another dataset option, e.g. --set region=128")
    g.set_defaults(func=_run_data_generate)
    i = dsub.add_parser("info", help="check a data file (HDF5 file or .npy folder) and describe its splits")
    i.add_argument("path")
    i.set_defaults(func=_run_data_info)


def _run_data_generate(args):
    from .data.command import generate_command
    from .train.config import JobError, apply_overrides, dataset_options
    options = {k: v for k, v in (("size", args.size), ("samples", args.samples),
                                 ("val_samples", args.val_samples)) if v is not None}
    try:
        options = dataset_options(args.dataset, apply_overrides(options, args.options))
    except JobError as e:
        sys.stderr.write(f"hpcnn data generate: error: {e}\n")
        return 2
    return generate_command(args.dataset, args.out, args.format, args.seed, options)


def _run_data_info(args):
    from .data.command import info_command
    return info_command(args.path)


def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="measure this machine for the performance model (run under mpiexec)",
                       description="Kernel microbenchmarks over sampled shapes, ping-pong, allreduce and all-to-all "
                                   "sweeps on every rank; writes a machine profile for `hpcnn plan --machine`. "
                                   "Run as `mpiexec -n P hpcnn calibrate -o PROFILE.json` (P = ranks per node).")
    p.add_argument("-o", "--out", required=True, help="the profile to write (JSON)")
    p.add_argument("--quick", action="store_true", help="under 2 minutes (fewer shapes and sizes)")
    p.add_argument("--budget", type=float, default=220.0, metavar="SECONDS",
                   help="time for the kernel, message and layer measurements (default 220: under 5 minutes in all on "
                        "a loaded 2-core machine; --quick caps it at 75)")
    p.add_argument("--name", help="the profile's name (default: HOST-cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shape sampling")
    p.add_argument("--threads", type=int, metavar="T", help="BLAS/numba threads per rank (default: the node's cores "
                   "divided by its ranks, or the thread variables of the environment)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="measure the CPU kernels (default) or "
                   "those of each rank's GPU, with the staging of messages through host memory")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args):
    from .backend import DeviceUnavailable, open_device
    from .calibrate import calibrate
    from .parallel.abort import install_abort_on_error
    from .parallel.mpi import Communicator
    from .threads import apply_threads, blas_kernels, choose_threads
    install_abort_on_error()
    comm = Communicator.world()
    threads = choose_threads(comm.node_size(), args.threads)
    apply_threads(threads.threads)
    try:
        device = open_device(args.device)
    except DeviceUnavailable as e:
        if comm.rank == 0:
            sys.stderr.write(f"hpcnn calibrate: error: {e}\n")
        return 2
    if comm.rank == 0:
        print(f"hpcnn calibrate on {comm.size} rank(s), {args.device}; {threads.describe()}"
              + ("" if args.device == "gpu" else f"; BLAS: {blas_kernels()}"))
    profile = calibrate(comm, budget=args.budget, quick=args.quick, progress=True, seed=args.seed, name=args.name,
                        threads=threads.threads, device=device)
    if comm.rank == 0:
        profile.save(args.out)
        fits = ", ".join(f"{op} {m.spec['fit']['median_abs_relative'] * 100:.0f}%"
                         for op, m in profile.kernels.items())
        alpha, beta = profile.link(False)
        print(f"wrote {args.out}: alpha {alpha * 1e6:.2f} us, {1 / beta / 1e9:.2f} GB/s, concurrency slowdown "
              f"{profile.concurrency_slowdown:.2f}; kernel fits (median relative error): {fits}")
    comm.barrier()
    return 0


def _shape_arg(text):
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 3x224x224, received {text!r}") from None


def _add_plan(sub):
    p = sub.add_parser("plan", help="choose each layer's process grid with the performance model",
                       description="Plan a model over P ranks: every layer's grid (shortest path through the "
                                   "layered graph of layer x grid, shuffles between grids), the predicted time "
                                   "and memory per layer, and a plan file for `hpcnn train --plan`.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a zoo model (hpcnn.models.names())")
    which.add_argument("--factory", metavar="FILE.py:FUNCTION", help="an own network: a Python file and the "
                       "function in it that returns an hpcnn.nn module (as [model] factory in a job file)")
    p.add_argument("--input", type=_shape_arg, metavar="CxHxW", help="one sample's shape, CxHxW or CxDxHxW "
                   "(default: the zoo model's usual input; needed with --factory)")
    p.add_argument("--batch", type=int, required=True, help="global batch size")
    p.add_argument("--ranks", type=int, required=True, help="number of MPI ranks")
    p.add_argument("--machine", required=True, help="a machine profile: a JSON file or a shipped name "
                   "(perfmodel/profiles/, e.g. v100-nvlink-edr)")
    p.add_argument("--memory-per-rank", type=float, metavar="GiB", help="memory limit per rank (default: the profile's)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="BLAS/numba threads per rank of the run priced (default: the profile's calibration count; "
                        "another is priced through the profile's measured thread speedup)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw", "adam-amsgrad", "adamw-amsgrad"),
                   help="the optimizer whose state the memory holds (training.optimizer; default sgd: one momentum "
                        "buffer per parameter; Adam/AdamW two moments, with amsgrad three)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option (an argument of the factory), e.g. --set width=32 (repeatable)")
    p.add_argument("--json", metavar="OUT", help="write the plan (hpcnn.plan.Plan JSON) to OUT")
    p.add_argument("--explain", metavar="LAYER", action="append", default=[],
                   help="show every candidate grid's costs for LAYER and why its grid was chosen (repeatable)")
    p.set_defaults(func=_run_plan)


def _plan_model(args, options, batch):
    """(label, shape, build options fixed by the input, chain) of --model or --factory."""
    from perfmodel.layers import model_chain, walk

    from .nn import models
    from .nn.factory import load_factory
    if args.model:
        shape = args.input or models.default_input(args.model)
        _, chain = model_chain(args.model, shape, batch, **options)
        return args.model, shape, models.input_options(args.model, shape), chain
    if not args.input:
        raise ValueError("--factory needs --input (one sample's shape, e.g. 3x512x512)")
    shape = args.input
    factory = load_factory(args.factory)
    known = factory.options()
    fixed = {"in_channels": shape[0]}
    if "input_size" in known and len(set(shape[1:])) == 1:
        fixed["input_size"] = shape[1]
    fixed = {k: v for k, v in fixed.items() if k in known}
    model = factory.build(**{**fixed, **options})
    return factory.label, shape, fixed, walk(model, (batch,) + tuple(shape))


def _run_plan(args):
    from perfmodel import provenance, report
    from perfmodel.machine import ProfileError, load_profile
    from perfmodel.planner import PlanError, plan_chain

    from .train.config import JobError, parse_options
    try:
        options = parse_options(args.options)
        if args.batch < 1 or args.ranks < 1:
            raise ValueError("--batch and --ranks must be positive")
        machine = load_profile(args.machine)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError("--threads must be positive")
            machine = machine.for_threads(args.threads)
        label, shape, fixed, chain = _plan_model(args, options, args.batch)
        limit = None if args.memory_per_rank is None else args.memory_per_rank * 2**30
        result = plan_chain(chain, args.ranks, machine, memory_limit=limit, optimizer=args.optimizer)
        explanations = [report.explain(result, name) for name in args.explain]
    except (ValueError, ProfileError, PlanError, JobError) as e:
        sys.stderr.write(f"hpcnn plan: error: {e}\n")
        return 2
    print(f"plan for {label} input {'x'.join(map(str, shape))}, batch {args.batch}, {args.ranks} ranks on "
          f"'{machine.name}' ({machine.backend}, {machine.ranks_per_node} ranks per node); planned in "
          f"{result.planning_seconds:.2f} s")
    print(provenance.check(machine)[1])
    for line in (provenance.threads_note(machine, args.threads) if args.threads is not None else None,
                 provenance.held_out_line(machine)):
        if line:
            print(line)
    print(report.plan_table(result))
    print(report.speedups(result))
    for text in explanations:
        print()
        print(text)
    if args.json:
        plan = report.to_plan(result, label, {**options, **fixed}, (args.batch,) + tuple(shape))
        plan.save(args.json)
        print(f"wrote {args.json}")
    return 0


def _add_export(sub):
    p = sub.add_parser("export", help="write a checkpoint's weights as a safetensors file that PyTorch loads",
                       description="Write a checkpoint's parameters and batch-norm state as a safetensors file "
                                   "under PyTorch's names (block1.conv.weight, bn.running_mean, ...): "
                                   "torch_model.load_state_dict(safetensors.torch.load_file(OUT)).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file, or a checkpoint folder (its newest)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the safetensors file to write")
    p.set_defaults(func=lambda args: _export(args))


def _export(args):
    from .train.export import command
    return command(args.checkpoint, args.output)


def build_parser():
    parser = argparse.ArgumentParser(prog="hpcnn", description=(
        "Train convolutional networks on inputs too large for one process: spatial blocks per MPI "
        "rank, halo exchange, a performance-model planner, a CHAOS thread engine for CPUs."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bench(sub)
    _add_plan(sub)
    _add_calibrate(sub)
    _add_train(sub)
    _add_data(sub)
    _add_export(sub)
    return parser


def main(argv=None):
    from .kernels.cpu._memory import keep_freed_arrays
    keep_freed_arrays()             # large arrays reused between steps, not mapped afresh (see _memory)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "func", None) is _run_train:
        args.train_args = argv[argv.index("train") + 1:]   # repeated in the command that resumes a stopped run
    if getattr(args, "func", None) is _run_bench:
        args.bench_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
