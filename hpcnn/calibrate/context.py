"""Layers in context: random networks trained, each layer's measured time against the kernel models.

A kernel timed alone, called again and again on the same arrays, is not the kernel a network runs: there the
layer's input was just written by another layer, its output and gradients are fresh arrays, the distributed
layer adds its own Python, checks, halo bookkeeping and copies, and on several ranks every synchronising
layer waits for the slowest. This phase builds seeded random networks (`synthetic_network`: 2-D and 3-D
chains of convolutions of random widths, kernels, strides and dilations, batch-norm, ReLU and LeakyReLU,
max- and average-pooling, upsampling, residual blocks, a global-pool and linear head; never the zoo's models)
and trains each (`measure_layers_in_context`), every leaf timed (`probe.LayerProbe`):
- on rank 0 alone, the other ranks asleep (`Communicator.idle_barrier`), in CPU time. Per layer kind and
  direction, `fit_layer_calls` fits

      measured = kernel models' time + fixed + per_byte * (local input + output + parameter bytes)

  by non-negative least squares on relative error, dropping descheduled calls: the profile's "layer_calls"
  for the kinds the networks hold enough of (the others keep the terms of one layer timed alone on a tiny
  and a large shape, `layers.measure_layer_calls`);
- on several ranks, on every rank at once, each its own copy: per kernel operation, the slowest rank's time
  over rank 0's alone is the profile's `concurrency_slowdown_by_op` (`concurrency_in_context`);
- on several ranks, on all of them under a grid in rotation (the samples, then each spatial dimension split),
  in the wall time of the slowest rank, waits and messages included.
What the profile so made still misses, layer by layer, on one rank and on several, is its "layers_in_context"
(`context_section`): the correction of `perfmodel.context`, by kind and grid, refined near measured layers.
"""
import math
import time
from typing import NamedTuple

import numpy as np

from perfmodel.costs import kernel_cost, layer_cost, layer_point, local_numel
from perfmodel.fit import OUTLIER_FLOOR, OUTLIER_SECONDS
from perfmodel.layers import iter_layers, walk

__all__ = ["synthetic_network", "LayerSample", "measure_layers_in_context", "fit_layer_calls", "context_section",
           "concurrency_in_context", "MIN_SAMPLES"]

# A kind needs this many timed layers in context for its own fit; fewer keep the standalone terms.
MIN_SAMPLES = 6
_WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def synthetic_network(rng, scale=1.0, width_scale=1.0):
    """(model, input shape (N, C, *S)) of one random network; `scale` shrinks its spatial size and `width_scale` its
    layers' widths (each in (0, 1])."""
    from hpcnn import nn
    nd = 3 if rng.random() < 0.3 else 2
    conv, bn, pools = (nn.Conv3d, nn.BatchNorm3d, (nn.MaxPool3d, nn.AvgPool3d)) if nd == 3 else \
        (nn.Conv2d, nn.BatchNorm2d, (nn.MaxPool2d, nn.AvgPool2d))
    n = int(_pick(rng, (1, 1, 2, 2, 4)))
    c = int(_pick(rng, (1, 2, 3, 4, 8, 16)))
    size = int(rng.integers(12, 57) if nd == 3 else rng.integers(24, 385))
    size = max(int(size * scale), 8)
    spatial = [size] * nd
    if rng.random() < 0.4:                       # not every block is a cube
        spatial[int(rng.integers(nd))] = max(int(size * rng.uniform(0.5, 1.5)), 8)
    shape = (n, c, *spatial)
    layers, s = [], min(spatial)

    def unit(c_in, k, r, stride, dilation):
        out = [conv(c_in, k, r, stride=stride, padding=dilation * (r // 2), dilation=dilation,
                    bias=bool(rng.random() < 0.3))]
        if rng.random() < 0.7:
            out.append(bn(k))
        out.append(nn.ReLU() if rng.random() < 0.8 else nn.LeakyReLU(0.1))
        return out

    for _ in range(int(rng.integers(3, 8))):
        k = max(int(_pick(rng, _WIDTHS) * width_scale), 2)
        r = int(_pick(rng, (1, 3, 3, 3, 5) if nd == 2 else (1, 3, 3)))
        stride = 2 if s >= 8 and r > 1 and rng.random() < 0.2 else 1
        dilation = 2 if stride == 1 and r == 3 and rng.random() < 0.15 else 1
        if stride == 1 and rng.random() < 0.2:
            body = nn.Sequential(*unit(c, k, r, 1, dilation), conv(k, k, r, padding=r // 2, bias=False))
            short = None if k == c else nn.Sequential(conv(c, k, 1, bias=False))
            layers.append(nn.Residual(body, short))
        else:
            layers.extend(unit(c, k, r, stride, dilation))
            s = -(-s // stride)
        c = k
        if s >= 8 and rng.random() < 0.2:
            layers.append(_pick(rng, pools)(2))
            s //= 2
        elif rng.random() < 0.1:
            layers.append(nn.Upsample(2))
            s *= 2
    if rng.random() < 0.4:
        layers += [nn.GlobalAvgPool(), nn.Flatten(), nn.Linear(c, int(_pick(rng, (10, 64, 100))))]
    return nn.Sequential(*layers), shape


def _kernel_seconds(spec, grid, machine):
    """(forward, backward) of a leaf's kernels as the model prices them, without any per-call term."""
    kc = kernel_cost(spec, grid, machine)
    out_bytes = local_numel(spec.out_shape, grid) * machine.itemsize
    in_bytes = local_numel(spec.in_shape, grid) * machine.itemsize
    return kc.forward + machine.fresh_memory_time(out_bytes), kc.backward + machine.fresh_memory_time(in_bytes)


def _sizes_within(seed, machine, target):
    """(scale, width_scale) that make the network of `seed` predicted (kernels only, on one rank) at most `target`
    seconds an iteration: drawn whole, then made smaller in its spatial size or (every other network) its widths
    until it fits, so that wide layers on small blocks and thin ones on large blocks are both measured."""
    scale = width = 1.0
    thin = seed % 2 == 0
    for _ in range(8):
        model, shape = synthetic_network(np.random.default_rng(seed), scale, width)
        grid = (1,) * (len(shape) - 1)
        t = sum(sum(_kernel_seconds(spec, grid, machine)) for spec in iter_layers(walk(model, shape)))
        if t <= target:
            break
        if thin and width > 0.1:
            width *= max(min(target / t, 0.8), 0.3)
        else:
            scale *= max(min(math.sqrt(target / t), 0.8), 0.3)
    return scale, width


class LayerSample(NamedTuple):
    """One leaf of a random network, timed in context: its kind, local input + output + parameter bytes, the kernel
    models' (forward, backward) seconds on its block, the measured (forward, backward) seconds, its LayerSpec and
    the grid it ran under. On one rank (rank 0 alone) the time is on the kernels' clock; on several, the wall time
    of the slowest rank, waits and messages included (`probe.LayerProbe.summary`). One-rank samples of a
    several-rank calibration add the wall (forward, backward) alone and, per rank, with every rank training its
    own copy at once (`together`; None otherwise)."""
    kind: str
    nbytes: float
    kernel: tuple
    measured: tuple
    spec: object
    grid: tuple
    alone: tuple = None
    together: tuple = None


def _train(model, shape, comm, grid, device, clock, reps):
    """LayerProbe of `reps` training iterations of `model` under `grid` on `comm` after a warm-up."""
    from .. import parallel
    from .probe import LayerProbe, training_step
    d = parallel.Distribution(comm, grid)
    dm = parallel.distribute(model.to(device), d)
    probe = LayerProbe(dm, clock=clock)
    xt = parallel.scatter(device.put(np.random.default_rng(0).standard_normal(shape, dtype=np.float32)), d)
    momentum = {name: device.xp.zeros_like(p) for name, p, _ in model.parameters()}
    for i in range(reps + 1):
        if i == 1:
            probe.clear()
        # a step of size 0: the optimizer's arithmetic runs, and a random network's weights cannot run away
        training_step(dm, xt, momentum, lr=0.0)
    return probe


def _split(turn, chain, shape, ranks):
    """A grid of `ranks` over the samples or the spatial dimensions that every layer of `chain` accepts, the
    `turn`-th in rotation (samples, then each spatial dimension), so that every kind of split is measured (None:
    the network refuses them all)."""
    from perfmodel.grids import candidate_grids, grid_refusal
    grids = [g for g in candidate_grids(ranks, len(shape) - 2) if math.prod(g) == ranks
             and not any(grid_refusal(spec, g) for spec in iter_layers(chain))]
    if not grids:
        return None
    # one dimension split first (sample, D, H, W), then the others in their order
    grids.sort(key=lambda g: (sum(v > 1 for v in g), [-v for v in g]))
    return tuple(grids[turn % len(grids)])


def _samples(chain, grid, machine, times, alone=None, together=None):
    """LayerSamples of `chain`'s leaves under `grid`, from {leaf name: (forward, backward) seconds}."""
    out = []
    for spec in iter_layers(chain):
        nbytes = (local_numel(spec.in_shape, grid) + local_numel(spec.out_shape, grid) + spec.params) * machine.itemsize
        out.append(LayerSample(spec.kind, nbytes, _kernel_seconds(spec, grid, machine), times[spec.name], spec, grid,
                               alone and alone[spec.name], together and together[spec.name]))
    return out


def _directions(summary, clock=False):
    """{leaf name: (forward, backward)} of a probe summary, wall seconds or (clock) the probe's clock's."""
    key = "_clock_s" if clock else "_s"
    return {name: (e["forward" + key], e["backward" + key]) for name, e in summary.items()}


def measure_layers_in_context(comm, machine, device, rng, budget, reps=2, targets=(0.02, 0.8)):
    """[LayerSample] of every leaf of random networks trained until `budget` seconds have passed (rank 0 decides
    when, every rank takes part): each network on rank 0 alone (the others asleep), then, on several ranks, on
    every rank at once, each its own copy, and on all of them together under a grid the network accepts, in
    rotation (`_split`). The medians of `reps` timed iterations after a warm-up. Each network's predicted iteration on one rank is at most a
    log-uniform draw from `targets` (seconds), so that small and large layers are both measured."""
    from .kernels import kernel_clock
    alone = comm.split(comm.rank, 0)
    clock = kernel_clock(device)
    samples, start = [], time.perf_counter()
    networks, split = 0, comm.size == 1
    # past the budget only while no network has run split yet (a few tries: some refuse every grid)
    while comm.allreduce_scalar(int(time.perf_counter() - start < budget or (not split and networks < 8)), "min"):
        networks += 1
        # every rank builds the same network and grid: the draws are common, the sizing rank 0's (only its
        # profile is whole)
        target = math.exp(rng.uniform(math.log(targets[0]), math.log(targets[1])))
        seed = int(rng.integers(1 << 31))
        scale, width = comm.bcast_object(_sizes_within(seed, machine, target) if comm.rank == 0 else None)
        model, shape = synthetic_network(np.random.default_rng(seed), scale, width)
        chain = walk(model, shape)
        one = (1,) * (len(shape) - 1)
        first = _train(model, shape, alone, one, device, clock, reps).local_summary() if comm.rank == 0 else None
        comm.idle_barrier()
        together = None
        if comm.size > 1:
            every = comm.allgather_object(_directions(_train(model, shape, alone, one, device, clock, reps)
                                                      .local_summary()))
            together = {name: tuple(rank[name] for rank in every) for name in every[0]}
        if comm.rank == 0:
            samples += _samples(chain, one, machine, _directions(first, clock=True), _directions(first), together)
        grid = _split(networks, chain, shape, comm.size) if comm.size > 1 else None
        if grid is not None:
            split = True
            summary = _train(model, shape, comm, grid, device, clock, reps).summary(comm)
            if comm.rank == 0:
                samples += _samples(chain, grid, machine, _directions(summary))
            comm.barrier()
    return samples


# The kernel operations a kind's (forward, backward) runs, for their slowdown with every rank busy.
_OPERATIONS_OF = {"conv": (("conv_forward",), ("conv_backward_data", "conv_backward_filter")),
                  "batchnorm": (("batchnorm_forward",), ("batchnorm_backward",)),
                  "relu": (("elementwise",), ("elementwise",)), "leaky_relu": (("elementwise",), ("elementwise",)),
                  "upsample": (("elementwise",), ("elementwise",)), "maxpool": (("pool_forward",), ("pool_backward",)),
                  "avgpool": (("pool_forward",), ("pool_backward",)), "linear": (("gemm",), ("gemm",))}


def concurrency_in_context(samples):
    """{operation: slowdown}: per operation a kind's direction runs (`_OPERATIONS_OF`), the wall time of its layers
    with every rank of the node training at once over their time with rank 0 alone, summed over the layers (what
    an iteration feels) of the kinds with at least MIN_SAMPLES of them, on the slowest rank (the cores of a
    virtual machine need not be equally fast, and a synchronous step goes at the slowest one's pace); {} without
    such samples (one rank). Hundreds of layers of whole networks: steadier than the few kernels the kernel phase
    times at once."""
    sums = {}
    for kind, directions in _OPERATIONS_OF.items():
        mine = [s for s in samples if s.kind == kind and s.together]
        if len(mine) < MIN_SAMPLES:
            continue
        ranks = len(mine[0].together)
        for j, ops in enumerate(directions):
            for op in ops:
                a, t = sums.get(op, (0.0, np.zeros(ranks)))
                sums[op] = (a + sum(s.alone[j] for s in mine),
                            t + np.array([sum(s.together[r][j] for s in mine) for r in range(ranks)]))
    return {op: float(t.max()) / a for op, (a, t) in sums.items() if a > 0}


def _fit_residual(kernel, nbytes, measured):
    """Non-negative (fixed, per_byte) for measured - kernel = fixed + per_byte * nbytes, least squares on relative
    error, and the median |relative error| of kernel + fixed + per_byte * nbytes."""
    from scipy.optimize import nnls
    a = np.stack([np.ones_like(nbytes), nbytes], axis=1)
    scale = a.max(axis=0)
    coef, _ = nnls(a / scale / measured[:, None], (measured - kernel) / measured)
    coef = coef / scale
    return float(coef[0]), float(coef[1]), float(np.median(np.abs((kernel + a @ coef) / measured - 1.0)))


def fit_layer_calls(samples, source):
    """{kind: {direction: {"fixed", "per_byte"}}} of the kinds with at least MIN_SAMPLES layers in `samples` (from
    `measure_layers_in_context`): what a layer in context takes beyond the kernel models, each term citing `source`,
    with its fit's median |relative error| and sample count. Layers slower than the fit by 2.5 times and a
    millisecond are left out and the fit redone (a descheduled call: whole scheduler time slices)."""
    kinds = {}
    alone = [s for s in samples if math.prod(s.grid) == 1]
    for kind in sorted({s.kind for s in alone}):
        mine = [s for s in alone if s.kind == kind]
        if len(mine) < MIN_SAMPLES:
            continue
        terms = {}
        for j, direction in enumerate(("forward", "backward")):
            kernel = np.array([s.kernel[j] for s in mine])
            nbytes = np.array([float(s.nbytes) for s in mine])
            measured = np.array([s.measured[j] for s in mine])
            ok = measured > 0
            if ok.sum() < MIN_SAMPLES:
                break
            keep = ok.copy()
            for _ in range(4):
                fixed, per_byte, med = _fit_residual(kernel[keep], nbytes[keep], measured[keep])
                fitted = kernel + fixed + per_byte * nbytes
                # slower by `perfmodel.fit`'s margins of a descheduled call
                slow = (measured > math.exp(OUTLIER_FLOOR) * fitted) & (measured - fitted > OUTLIER_SECONDS)
                if (ok & ~slow).sum() < MIN_SAMPLES or ((ok & ~slow) == keep).all():
                    break
                keep = ok & ~slow
            terms[direction] = {"fixed": {"value": fixed, "source": source},
                                "per_byte": {"value": per_byte, "source": source},
                                "fit": {"source": source, "samples": int(ok.sum()), "rejected": int(ok.sum() - keep.sum()),
                                        "median_abs_relative": med}}
        if len(terms) == 2:
            kinds[kind] = terms
    return kinds


def context_section(samples, machine, source):
    """The "layers_in_context" section of a profile (`perfmodel.context`): per kind, every measured leaf's place,
    the logs of its measured over `machine`'s predicted forward and backward times, messages and waits included,
    and of the predicted times (`machine`: the profile with its layer-call terms, without this section), citing
    `source`."""
    kinds = {}
    for kind, _, _, measured, spec, grid, *_ in samples:
        predicted = layer_cost(spec, grid, machine).directions()
        if min(measured) <= 0 or min(predicted) <= 0:
            continue
        ratios = [math.log(m / p) for m, p in zip(measured, predicted)]
        kinds.setdefault(kind, {"source": source, "rows": []})["rows"].append(
            [round(v, 5) for v in layer_point(spec, grid)] + [round(v, 5) for v in ratios]
            + [round(math.log(p), 5) for p in predicted])
    return {"source": source, "kinds": kinds}
