"""The planner against brute force on small graphs, the memory limit, speed, and its errors."""
import itertools
import math
import time

import pytest

from hpcnn import nn
from perfmodel.costs import block_extra_cost, layer_cost
from perfmodel.grids import grid_refusal, planner_grids
from perfmodel.shuffle import shuffle_time
from perfmodel.layers import Block, walk, model_chain, iter_layers
from perfmodel.machine import MachineProfile, load_profile
from perfmodel.planner import PlanError, plan_chain

MACHINES = {
    "balanced": dict(per_flop=1e-9, per_byte=1e-9, alpha=1e-6, beta=1e-9),
    "latency-bound": dict(per_flop=1e-9, per_byte=1e-10, alpha=1e-4, beta=1e-12, fixed=1e-6),
    "cheap-network": dict(per_flop=1e-8, per_byte=1e-9, alpha=1e-8, beta=1e-11, fixed=1e-5),
}


def residual_net():
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.BatchNorm2d(4))
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1),
                         nn.Residual(body, nn.Sequential(nn.Conv2d(4, 4, 1, stride=2))))


def unet_net():
    inner2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    inner1 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.SkipConcat(inner2), nn.Upsample(2))
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SkipConcat(inner1), nn.Conv2d(12, 2, 1))


def anisotropic_net():
    """A wide 1x7 convolution (halo only along W) to one channel, then a wide 7x1 one (halo only along H)."""
    return nn.Sequential(nn.Conv2d(16, 1, (1, 7), padding=(0, 3)), nn.Conv2d(1, 16, 1),
                         nn.Conv2d(16, 16, (7, 1), padding=(3, 0)))


def _slots(chain):
    """Every node of every chain (assignments that break the block rules evaluate to infinity)."""
    for node in chain:
        yield node
        if isinstance(node, Block):
            yield from _slots(node.body)
            yield from _slots(node.shortcut or [])


class _Brute:
    """Evaluates one full assignment of grids, the way hpcnn.parallel runs it (see perfmodel.planner)."""

    def __init__(self, machine):
        self.m = machine
        self._shuffles = {}

    def shuffle(self, shape, a, b):
        key = (shape, a, b)
        if key not in self._shuffles:
            self._shuffles[key] = 2 * shuffle_time(shape, a, b, self.m)
        return self._shuffles[key]

    def leaf(self, node, g):
        if grid_refusal(node, g):
            return None
        return layer_cost(node, g, self.m)

    def chain(self, chain, grid_of, prev):
        """(time, activation bytes, workspace, output grid) of a chain whose input is in grid `prev`."""
        t = mem = work = 0.0
        for node in chain:
            if isinstance(node, Block):
                g = grid_of[node.name] if prev is None else prev
                if grid_of[node.name] != g:
                    return math.inf, 0, 0, None
                bt, bm, bw, h = self.chain(node.body, grid_of, g)
                st, sm, sw, _ = self.chain(node.shortcut or [], grid_of, g)
                if h is None or not math.isfinite(st) or any(grid_of[leaf.name] != g for leaf in node.shortcut or []):
                    return math.inf, 0, 0, None
                if node.kind == "residual":
                    out = h
                    if h != g:
                        bt += self.shuffle(node.out_shape, g, h)
                else:
                    out = g
                    if h != g:
                        bt += self.shuffle(node.body[-1].out_shape, h, g)
                c = block_extra_cost(node, out, self.m)
                t += c.time + bt + st
                mem += c.activation_bytes + bm + sm
                work = max(work, bw, sw)
                prev = out
            else:
                g = grid_of[node.name]
                if prev is not None and prev != g:
                    t += self.shuffle(node.in_shape, prev, g)
                c = self.leaf(node, g)
                if c is None:
                    return math.inf, 0, 0, None
                t += c.time
                mem += c.activation_bytes
                work = max(work, c.workspace_bytes)
                prev = g
        return t, mem, work, prev


def brute_force(chain, ranks, machine, memory_limit=math.inf):
    slots = list(_slots(chain))
    # the planner's own candidates: short grids and the channel and filter splits
    grids = planner_grids(chain, ranks)
    brute = _Brute(machine)
    constant = sum(layer.params for layer in iter_layers(chain)) * 4 * 4
    best = math.inf
    for combo in itertools.product(grids, repeat=len(slots)):
        grid_of = {node.name: g for node, g in zip(slots, combo)}
        t, mem, work, _ = brute.chain(chain, grid_of, None)
        if constant + mem + work <= memory_limit:
            best = min(best, t)
    return best


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_residual_chain_matches_brute_force(name):
    machine = MachineProfile.synthetic(**MACHINES[name])
    chain = walk(residual_net(), (4, 2, 8, 8))
    result = plan_chain(chain, 4, machine)
    assert result.path_time == pytest.approx(brute_force(chain, 4, machine), rel=1e-9)


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_nested_skips_match_brute_force(name):
    machine = MachineProfile.synthetic(**MACHINES[name])
    chain = walk(unet_net(), (2, 1, 8, 8))
    result = plan_chain(chain, 2, machine)
    assert result.path_time == pytest.approx(brute_force(chain, 2, machine), rel=1e-9)


def test_the_planner_changes_grids_where_it_pays():
    machine = MachineProfile.synthetic(**MACHINES["cheap-network"])
    chain = walk(anisotropic_net(), (1, 16, 64, 64))
    result = plan_chain(chain, 2, machine)
    grids = [g for _, g, _, _ in result.layers]
    assert grids[0] == (1, 2, 1) and grids[2] == (1, 1, 2)
    assert result.path_time == pytest.approx(brute_force(chain, 2, machine), rel=1e-9)
    # when compute is free and messages are dear, the cheapest plan has the fewest bytes on the wire
    slow = MachineProfile.synthetic(per_flop=0.0, per_byte=0.0, alpha=0.0, beta=1e-6)
    result = plan_chain(chain, 2, slow)
    assert result.path_time == pytest.approx(brute_force(chain, 2, slow), rel=1e-9)


def test_memory_limit_is_honoured():
    # Messages are dear and compute free: the fastest plan keeps one grid and exchanges a thin halo,
    # but keeps the extended input of one convolution; the plan that shuffles to avoid every halo is
    # slower and smaller.
    net = nn.Sequential(nn.Conv2d(16, 16, (1, 7), padding=(0, 3)), nn.Conv2d(16, 16, (7, 1), padding=(3, 0)))
    chain = walk(net, (1, 16, 64, 64))
    machine = MachineProfile.synthetic(per_flop=0.0, per_byte=0.0, alpha=0.0, beta=1e-6)
    free = plan_chain(chain, 2, machine, memory_limit=1 << 40)
    assert len({g for _, g, _, _ in free.layers}) == 1
    assert free.path_time == pytest.approx(brute_force(chain, 2, machine), rel=1e-9)
    limit = free.memory - 1000
    tight = plan_chain(chain, 2, machine, memory_limit=limit)
    assert tight.memory <= limit
    assert [g for _, g, _, _ in tight.layers] == [(1, 2, 1), (1, 1, 2)]
    assert tight.path_time == pytest.approx(brute_force(chain, 2, machine, memory_limit=limit), rel=1e-9)
    assert tight.path_time > free.path_time
    with pytest.raises(PlanError, match="no plan fits"):
        plan_chain(chain, 2, machine, memory_limit=tight.memory - 1000)
    with pytest.raises(PlanError, match="no plan fits .* the parameters, gradients and optimizer state alone"):
        plan_chain(chain, 2, machine, memory_limit=1000)


def test_more_ranks_than_work_replicates():
    """One 4x4 image with 2 filters on 8 ranks: no block split serves it; the filter split over F = 8 computes the
    convolution on the ranks holding its 2 filters and the others keep copies, priced with the gather."""
    chain = walk(nn.Sequential(nn.Conv2d(1, 2, 5, padding=2)), (1, 1, 4, 4))
    machine = MachineProfile.synthetic()
    result = plan_chain(chain, 8, machine)
    (grid,) = set(result.grid_of.values())
    assert len(grid) == 5 and grid[-1] > 1 and grid[-2] == 1
    assert result.layers[0][2].collective_forward > 0
    with pytest.raises(PlanError, match="no plan fits"):
        plan_chain(chain, 8, machine, memory_limit=1)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*resnet50"):
        model_chain("resnet5", (3, 32, 32), 2)


def test_resnet50_on_1024_ranks_plans():
    """Batch 1024 on 1024 ranks plans (its planning time is printed by `hpcnn plan`; speed is not a test)."""
    machine = load_profile("v100-nvlink-edr")
    _, chain = model_chain("resnet50", (3, 224, 224), 1024)
    t0 = time.perf_counter()
    result = plan_chain(chain, 1024, machine)
    assert time.perf_counter() - t0 < 60, "planning hung"
    assert result.totals()["iteration"] > 0


def test_optimizer_state_in_the_memory():
    """Adam's two moments (three with amsgrad) take one and two more parameter-sized arrays than SGD's momentum;
    `hpcnn plan --optimizer` offers exactly the optimizers the model knows."""
    from hpcnn.cli import build_parser
    from perfmodel.costs import OPTIMIZER_STATES
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    chain = walk(net, (2, 8, 16, 16))
    machine = load_profile("vm-cpu")
    params = sum(layer.params for layer in iter_layers(chain))
    memory = {name: plan_chain(chain, 1, machine, optimizer=name).memory for name in OPTIMIZER_STATES}
    for name, state in OPTIMIZER_STATES.items():
        assert memory[name] - memory["sgd"] == pytest.approx((state - 1) * params * machine.itemsize)
    assert memory["adam"] == memory["adamw"] and memory["adam-amsgrad"] > memory["adam"]
    with pytest.raises(PlanError, match="unknown optimizer 'lamb'"):
        plan_chain(chain, 1, machine, optimizer="lamb")
    plan = build_parser()._subparsers._group_actions[0].choices["plan"]
    choices = next(a.choices for a in plan._actions if a.dest == "optimizer")
    assert set(choices) == set(OPTIMIZER_STATES)


def test_axis_meets_counts_the_new_blocks_an_old_one_meets():
    """The vectorized count (shuffle pricing) against the block-by-block walk of hpcnn.geometry's blocks,
    uneven splits and more blocks than items included."""
    import random

    from hpcnn.geometry import block_index, block_range
    from perfmodel.shuffle import _axis_meets

    def walk(size, a, b):
        meets = 1
        for i in range(a):
            lo, hi = block_range(size, a, i)
            if hi > lo:
                meets = max(meets, block_index(size, b, hi - 1) - block_index(size, b, lo) + 1)
        return meets
    rng = random.Random(3)
    for _ in range(3000):
        size, a, b = rng.randint(1, 200), rng.randint(1, 300), rng.randint(1, 300)
        assert _axis_meets(size, a, b) == walk(size, a, b), (size, a, b)
