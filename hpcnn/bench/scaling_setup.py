"""What `hpcnn bench scaling` runs at a rank count: the model, its input and batch, and the distinct splits there."""
import math

from perfmodel.splits import SPLITS, fastest_grid, split_plan

from ..grids import grid_parts, short_grid

from .host_profile import host_profile

__all__ = ["AUTO", "ints", "sample_shape", "global_batch", "build_model", "prediction_machine", "chain",
           "split_tokens", "resolve_splits", "distinct_splits", "grid_text"]

AUTO = ("sample", "spatial", "plan")


def ints(text):
    """'1,2,4' -> [1, 2, 4]."""
    return [int(v) for v in str(text).split(",") if v.strip()]


def sample_shape(args):
    """One sample's shape (C, *S): --input, else 18x512x512 for meshnet, else the model's usual input."""
    from ..nn.models import DEFAULT_INPUTS
    if args.input:
        try:
            return tuple(int(v) for v in args.input.lower().split("x"))
        except ValueError:
            raise SystemExit(f"hpcnn bench scaling: --input takes sizes like 18x512x512, received {args.input!r}")
    if args.model == "meshnet":
        return (18, 512, 512)
    if args.model not in DEFAULT_INPUTS:
        raise SystemExit(f"hpcnn bench scaling: --input is needed for model {args.model!r}")
    return DEFAULT_INPUTS[args.model]


def _options(args):
    from ..train.config import JobError, parse_options
    try:
        return parse_options(args.options)
    except JobError as e:
        raise SystemExit(f"hpcnn bench scaling: {e}") from None


def global_batch(args, ranks):
    """The global batch at `ranks` ranks: --batch (strong), or --batch at the smallest rank count, grown in
    proportion to the ranks (weak)."""
    if args.mode == "strong":
        return args.batch
    first = min(ints(args.ranks))
    if (args.batch * ranks) % first:
        raise SystemExit(f"hpcnn bench scaling: weak scaling needs batch x ranks divisible by the smallest rank "
                         f"count ({args.batch} x {ranks} / {first})")
    return args.batch * ranks // first


def build_model(args):
    """The model measured: --model for sample_shape(args), with the --set options, seed 0."""
    from ..nn.models import build_for_input
    return build_for_input(args.model, sample_shape(args), seed=0, **_options(args))


def prediction_machine(args):
    """The machine profile of the predictions (--machine, else this host's)."""
    return host_profile(args.machine)


def chain(args, ranks):
    """The perfmodel chain of the model at the global batch of `ranks` ranks."""
    from perfmodel.layers import walk
    return walk(build_model(args), (global_batch(args, ranks),) + sample_shape(args))


def split_tokens(args):
    """The splits of --grids, `auto` expanded, each once in order."""
    tokens = [t.strip().lower() for t in args.grids.split(",") if t.strip()]
    out = []
    for t in tokens:
        out.extend(AUTO if t == "auto" else [t])
    for t in out:
        if t not in SPLITS and not all(v.isdigit() for v in t.split("x")):
            raise SystemExit(f"hpcnn bench scaling: --grids takes auto, {', '.join(SPLITS)} or grids like 1x2x1; "
                             f"received {t!r}")
    return list(dict.fromkeys(out))


def resolve_splits(chain, ranks, machine, tokens):
    """[(label, PlanResult or None, note)] for the split tokens at `ranks` ranks.

    A split of perfmodel.splits.SPLITS is `split_plan` with no memory limit on single grids (the
    fastest grid by time; the plan keeps the profile's memory per rank); an explicit grid such as
    1x2x1, or a long one such as 1x1x1x2x1 (channels over 2 ranks), has one grid everywhere. None with a note when the split is impossible here (more sample
    blocks than samples, blocks smaller than halos, no plan within the memory per rank) or an
    explicit grid has another rank count.
    """
    from perfmodel.planner import parse_grid
    nd = len(chain[0].in_shape) - 2
    out = []
    for t in tokens:
        if t in SPLITS:
            result, note = split_plan(chain, t, ranks, machine)
        else:
            try:
                grid = short_grid(parse_grid(t))
                grid_parts(grid, nd)
            except ValueError:
                raise SystemExit(f"hpcnn bench scaling: grid {t} needs {nd + 1} entries (N, *S) or {nd + 3} "
                                 f"(N, *S, C, F) for a {nd}-D input") from None
            if math.prod(grid) != ranks:
                result, note = None, "another rank count"
            else:
                result, note = fastest_grid(chain, [grid], machine)
        out.append((t, result, note))
    return out


def _signature(result):
    """What identifies a configuration: the grid of every leaf, in order."""
    return tuple(tuple(g) for node, g, _, _ in result.layers if node is not None)


def distinct_splits(resolved):
    """{label measured: [labels it stands for]} in order, one per distinct configuration."""
    groups, seen = {}, {}
    for label, result, _ in resolved:
        if result is None:
            continue
        key = _signature(result)
        if key in seen:
            groups[seen[key]].append(label)
        else:
            seen[key] = label
            groups[label] = [label]
    return groups


def grid_text(result):
    """The grid a configuration runs on, e.g. 2x1x1, or its most common grid and how many others."""
    from perfmodel.planner import grid_string
    grids = [tuple(g) for node, g, _, _ in result.layers if node is not None]
    distinct = list(dict.fromkeys(grids))
    if len(distinct) == 1:
        return grid_string(distinct[0])
    common = max(distinct, key=grids.count)
    return f"{grid_string(common)} +{len(distinct) - 1} more"
