"""`hpcnn` and its subcommands: the one place that composes hpcnn and perfmodel."""
import argparse
import sys

__all__ = ["main", "build_parser"]


def _add_bench(sub):
    from .bench import BENCHMARKS, load
    p = sub.add_parser("bench", help="benchmarks with tables, CSV and PNG plots")
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        module = load(name)
        bp = bsub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)


def build_parser():
    parser = argparse.ArgumentParser(prog="hpcnn", description=(
        "Train convolutional networks on inputs too large for one process: spatial blocks per MPI "
        "rank, halo exchange, a performance-model planner, a CHAOS thread engine for CPUs."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bench(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
