"""perfmodel.splits: each split's rule against brute force over the candidate grids, the memory limit, and the
reasons a split cannot serve a rank count."""
import math

import pytest

from perfmodel.grids import candidate_grids
from perfmodel.layers import model_chain
from perfmodel.machine import load_profile
from perfmodel.planner import uniform_plan, uniform_time
from perfmodel.splits import SPLITS, best_uniform, fastest_grid, first_refusal, split_grids, split_plan

SHAPE = (4, 32, 32)
OPTIONS = {"widths": [4, 4], "dilations": [1, 2]}


@pytest.fixture(scope="module")
def machine():
    return load_profile("vm-cpu")


def _chain(batch):
    return model_chain("meshnet", SHAPE, batch, **OPTIONS)[1]


def _times(chain, grids, machine):
    """{grid: predicted iteration seconds} of the grids no layer refuses."""
    out = {}
    for g in grids:
        u = uniform_time(chain, g, machine)
        if u is not None:
            out[g] = u[0]
    return out


def _grid(result):
    grids = {g for node, g, _, _ in result.layers if node is not None}
    assert len(grids) == 1, grids
    return grids.pop()


def test_the_splits_are_named_once():
    assert SPLITS == ("sample", "spatial", "hybrid", "plan")


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_sample_is_the_whole_batch_split_over_the_ranks(machine, ranks):
    result, reason = split_plan(_chain(4), "sample", ranks, machine)
    assert reason == "" and _grid(result) == (ranks, 1, 1)
    assert result.totals()["iteration"] == pytest.approx(uniform_time(_chain(4), (ranks, 1, 1), machine)[0],
                                                         rel=1e-12)


def test_sample_beyond_the_batch_says_why(machine):
    result, reason = split_plan(_chain(2), "sample", 4, machine)
    assert result is None and reason == "4 ranks > global batch 2: some ranks would hold no sample"


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_spatial_is_the_cheapest_grid_with_one_sample_block(machine, ranks):
    chain = _chain(2)
    times = _times(chain, [g for g in candidate_grids(ranks, 2) if g[0] == 1], machine)
    cheapest = min(times, key=times.get)
    result, reason = split_plan(chain, "spatial", ranks, machine)
    assert reason == "" and _grid(result) == cheapest
    assert result.totals()["iteration"] == pytest.approx(times[cheapest], rel=1e-12)
    assert best_uniform(chain, ranks, machine, sample=False) == (cheapest, pytest.approx(times[cheapest], rel=1e-12))


@pytest.mark.parametrize("ranks, batch", [(4, 4), (8, 4), (8, 2), (16, 8)])
def test_hybrid_splits_batch_and_sample_and_the_three_cover_every_grid(machine, ranks, batch):
    chain = _chain(batch)
    result, reason = split_plan(chain, "hybrid", ranks, machine)
    grid = _grid(result)
    assert reason == "" and 1 < grid[0] <= batch and math.prod(grid[1:]) > 1
    hybrid = _times(chain, [g for g in candidate_grids(ranks, 2) if 1 < g[0] <= batch and g[0] < ranks], machine)
    assert result.totals()["iteration"] == pytest.approx(min(hybrid.values()), rel=1e-12)
    # sample, spatial and hybrid split every grid the batch allows between them: the best of the three is
    # the fastest single grid there is, and no split is faster than it
    every = _times(chain, [g for g in candidate_grids(ranks, 2) if g[0] <= batch], machine)
    splits = [split_plan(chain, s, ranks, machine)[0] for s in ("sample", "spatial", "hybrid")]
    seconds = [r.totals()["iteration"] for r in splits if r is not None]
    assert min(seconds) == pytest.approx(min(every.values()), rel=1e-12)


@pytest.mark.parametrize("ranks", [4, 8])
def test_the_plan_is_no_slower_on_its_path_than_any_single_grid(machine, ranks):
    chain = _chain(4)
    plan, reason = split_plan(chain, "plan", ranks, machine)
    assert reason == ""
    for g in candidate_grids(ranks, 2):
        single = uniform_plan(chain, g, machine)
        if single is not None:
            assert plan.path_time <= single.path_time * (1 + 1e-12), g


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_hybrid_without_such_a_grid_says_why(machine, ranks):
    result, reason = split_plan(_chain(4), "hybrid", ranks, machine)
    assert split_grids("hybrid", ranks, 2, 4) == []
    assert result is None and reason == (f"no grid of {ranks} ranks has Pn > 1 (at most the batch, 4) and a "
                                         f"spatial split")


def test_spatial_when_every_grid_is_refused_names_a_refusing_layer(machine):
    chain = _chain(1)
    grids = split_grids("spatial", 1024, 2, 1)
    assert all(uniform_time(chain, g, machine) is None for g in grids)
    result, reason = split_plan(chain, "spatial", 1024, machine)
    assert result is None
    assert reason == (f"every one of the {len(grids)} grids is refused (e.g. 1x1x1024: "
                      f"{first_refusal(chain, (1, 1, 1024))})")
    assert first_refusal(chain, (1, 1, 1024)).startswith("layer 'block1.conv': 1024 blocks along spatial dim 1")
    grid, why = best_uniform(chain, 1024, machine, sample=False)
    assert grid is None and why == first_refusal(chain, grids[0])


def test_a_memory_limit_takes_the_fastest_grid_that_fits(machine):
    chain = _chain(2)
    grids = [g for g in candidate_grids(4, 2) if g[0] <= 2]
    plans = sorted((uniform_plan(chain, g, machine) for g in grids), key=lambda p: p.totals()["iteration"])
    fastest, smallest = plans[0], min(plans, key=lambda p: p.memory)
    assert fastest.memory > smallest.memory     # else the limit below could not choose
    result, reason = fastest_grid(chain, grids, machine, memory_limit=smallest.memory)
    assert reason == "" and result.memory <= smallest.memory
    fitting = [p for p in plans if p.memory <= smallest.memory]
    assert result.grids == fitting[0].grids
    # by time alone, or when nothing fits: the fastest, and with a limit the reason it does not fit
    assert fastest_grid(chain, grids, machine)[0].grids == fastest.grids
    result, reason = fastest_grid(chain, grids, machine, memory_limit=smallest.memory / 2)
    assert result.grids == fastest.grids
    assert reason.startswith(f"needs {fastest.memory / 2**30:.3g} GiB per rank (fastest grid ")


def test_the_plan_held_to_a_memory_limit_it_cannot_meet_says_why(machine):
    result, reason = split_plan(_chain(4), "plan", 4, machine, memory_limit=1024)
    assert result is None and reason.startswith("no plan fits")


def test_an_unknown_split_is_refused():
    for split in ("plan", "diagonal"):
        with pytest.raises(ValueError, match="not a single-grid split"):
            split_grids(split, 4, 2, 4)
