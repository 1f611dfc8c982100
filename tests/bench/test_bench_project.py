"""`hpcnn bench project`: the CSV schema, the plots, impossible and non-fitting points, and agreement with perfmodel."""
import csv
import json
import math

import pytest

from hpcnn.bench.project import parse_ranks
from hpcnn.cli import main
from perfmodel.grids import candidate_grids
from perfmodel.layers import model_chain
from perfmodel.machine import load_profile
from perfmodel.planner import parse_grid, plan_chain, uniform_plan, uniform_time
from perfmodel.splits import SPLITS, best_uniform

COLUMNS = ["model", "mode", "split", "ranks", "global_batch", "grid", "distinct_grids", "iteration_s",
           "samples_per_s", "speedup", "efficiency", "comm_share", "allreduce_share", "memory_gib", "fits", "reason",
           "cf_layers", "layers", "without_cf_s"]
MEMORY_COLUMNS = ["model", "split", "ranks", "batch", "largest_side", "sample_shape", "grid", "memory_gib",
                  "capped", "reason"]
SHAPE = (18, 2048, 2048)      # meshnet's real input: its chain has 13 layers, so the real shape is fast
RANKS = [1, 2, 4, 8, 16, 32]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("project")
    code = main(["bench", "project", "--models", "meshnet", "--ranks", ",".join(map(str, RANKS)),
                 "--strong-batch", "meshnet=16", "--weak-batch", "meshnet=1/2", "--memory-ranks", "1,4",
                 "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "project.json").read_text())
    return out, doc


@pytest.fixture(scope="module")
def machine():
    return load_profile("v100-nvlink-edr")


def _rows(doc, **match):
    return [r for r in doc["rows"] if all(r[k] == v for k, v in match.items())]


def test_csv_schema_and_one_row_per_point(run):
    out, doc = run
    with open(out / "project.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == COLUMNS
        body = list(reader)
    assert len(body) == 2 * len(RANKS) * 4 == len(doc["rows"])
    keys = {(r["mode"], r["split"], r["ranks"]) for r in doc["rows"]}
    assert len(keys) == len(body)
    assert {r["split"] for r in doc["rows"]} == set(SPLITS) == {"sample", "spatial", "hybrid", "plan"}
    # the CSV holds the JSON's rows, floats to 6 significant figures
    for line, r in zip(body, doc["rows"]):
        cells = dict(zip(COLUMNS, line))
        assert (cells["mode"], cells["split"], int(cells["ranks"]), cells["reason"]) == \
            (r["mode"], r["split"], r["ranks"], r["reason"])
        if r["iteration_s"] != "":
            assert float(cells["iteration_s"]) == pytest.approx(r["iteration_s"], rel=1e-5)
    with open(out / "project_memory.csv", newline="") as f:
        assert next(csv.reader(f)) == MEMORY_COLUMNS
        assert len(list(csv.reader(f))) == len(doc["memory_rows"]) == len(SPLITS) * 2
    assert doc["profile"] == "v100-nvlink-edr"
    assert doc["batches"] == {"strong_global": {"meshnet": 16}, "weak_per_rank": {"meshnet": "1/2"}}


def test_sources_are_the_ones_the_profile_cites(run, machine):
    _, doc = run
    assert doc["sources"] == machine.cited_sources()
    # the published profile's link and GPU rates are among them, with their citations
    for path in (("links", "inter_node", "beta"), ("ranks_per_node",)):
        assert machine.source_of(*path) in doc["sources"].values()


def test_plots_are_png_files(run):
    out, _ = run
    for name in ("project_strong.png", "project_weak.png", "project_efficiency.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000


def test_sample_parallelism_beyond_the_batch_is_impossible(run):
    _, doc = run
    for r in _rows(doc, mode="strong", split="sample"):
        if r["ranks"] > 16:
            assert not r["fits"] and r["iteration_s"] == "" and "> global batch 16" in r["reason"]
        else:
            assert r["iteration_s"] != ""
    # 1/2 sample per rank: P = 1 has no whole batch; above it one sample per two ranks is fewer samples than ranks
    assert "not a whole batch" in _rows(doc, mode="weak", split="sample", ranks=1)[0]["reason"]
    for r in _rows(doc, mode="weak", split="sample")[1:]:
        assert not r["fits"] and f"> global batch {r['ranks'] // 2}" in r["reason"]


def test_points_over_the_memory_per_rank_do_not_fit(run, machine):
    _, doc = run
    limit = machine.memory_per_rank / 2**30
    # 16 samples of 18x2048x2048 on one rank: over the 16 GiB of a V100
    r = _rows(doc, mode="strong", split="sample", ranks=1)[0]
    assert r["memory_gib"] > limit and not r["fits"] and "over the 16 GiB" in r["reason"]
    assert r["speedup"] == "" and r["efficiency"] == ""
    plan = _rows(doc, mode="strong", split="plan", ranks=1)[0]
    assert not plan["fits"] and plan["reason"].startswith("no plan fits")
    for r in doc["rows"]:
        assert r["fits"] == (r["memory_gib"] != "" and r["memory_gib"] <= limit and r["reason"] == "")
        if r["fits"]:
            assert r["samples_per_s"] * r["iteration_s"] == pytest.approx(r["global_batch"], rel=1e-12)
            # the exposed gradient allreduce is part of the communication
            assert 0 <= r["allreduce_share"] <= r["comm_share"] <= 1


def test_spatial_memory_per_rank_falls_with_ranks(run):
    _, doc = run
    memory = [r["memory_gib"] for r in _rows(doc, mode="strong", split="spatial")]
    assert all(b < a for a, b in zip(memory, memory[1:]))


def test_times_agree_with_perfmodel(run, machine):
    _, doc = run
    _, chain = model_chain("meshnet", SHAPE, 16)
    for r in _rows(doc, mode="strong", ranks=8):
        if r["split"] == "plan":
            assert math.isclose(r["iteration_s"], plan_chain(chain, 8, machine).totals()["iteration"], rel_tol=1e-12)
        else:
            grid = parse_grid(r["grid"])
            assert math.isclose(r["iteration_s"], uniform_time(chain, grid, machine)[0], rel_tol=1e-12)
            assert math.isclose(r["memory_gib"] * 2**30, uniform_plan(chain, grid, machine).memory, rel_tol=1e-12)
    # pure spatial is best_uniform's grid wherever that grid fits; hybrid is the fastest fitting Pn > 1 grid
    for r in _rows(doc, mode="strong", split="spatial"):
        grid, _ = best_uniform(chain, r["ranks"], machine, sample=False)
        if uniform_plan(chain, grid, machine).memory <= machine.memory_per_rank:
            assert r["fits"] and parse_grid(r["grid"]) == grid
    hybrid = [g for g in candidate_grids(16, 2) if 1 < g[0] < 16]           # Pn > 1 and a spatial split
    fitting = [uniform_time(chain, g, machine)[0] for g in hybrid
               if uniform_plan(chain, g, machine).memory <= machine.memory_per_rank]
    r = _rows(doc, mode="strong", split="hybrid", ranks=16)[0]
    assert r["fits"] and math.isclose(r["iteration_s"], min(fitting), rel_tol=1e-12)


def test_speedup_is_over_the_best_split_at_the_first_rank_count_that_fits(run):
    _, doc = run
    strong = _rows(doc, mode="strong")
    p0 = min(r["ranks"] for r in strong if r["fits"])
    assert doc["p0"]["meshnet/strong"] == p0
    base = max(r["samples_per_s"] for r in strong if r["fits"] and r["ranks"] == p0)
    for r in strong:
        if r["fits"]:
            assert math.isclose(r["speedup"], r["samples_per_s"] / base)
            assert math.isclose(r["efficiency"], r["speedup"] * p0 / r["ranks"])


def test_findings_name_where_sample_parallelism_stops(run):
    _, doc = run
    text = " ".join(doc["findings"]["meshnet"])
    assert "stops at P = 16, the global batch" in text
    assert "From P = 32 on, a split with spatial parallelism is the fastest" in text
    assert "Largest sample that fits" in text


def test_largest_sample_fits_and_a_larger_one_does_not(run, machine):
    _, doc = run
    rows = {(r["split"], r["ranks"]): r for r in doc["memory_rows"]}
    assert rows[("hybrid", 1)]["largest_side"] == ""          # one rank cannot split batch and sample
    sample = [rows[("sample", p)]["largest_side"] for p in (1, 4)]
    assert sample[0] == sample[1] > 0                         # one sample per rank, whatever P
    assert rows[("spatial", 4)]["largest_side"] > rows[("spatial", 1)]["largest_side"]
    for r in doc["memory_rows"]:
        if r["largest_side"] != "":
            assert r["sample_shape"] == f"18x{r['largest_side']}x{r['largest_side']}"
            assert r["memory_gib"] * 2**30 <= machine.memory_per_rank and r["reason"] == ""
    assert rows[("plan", 4)]["largest_side"] >= rows[("spatial", 4)]["largest_side"]
    side = rows[("sample", 1)]["largest_side"]
    fits = uniform_plan(model_chain("meshnet", (18, side, side), 1)[1], (1, 1, 1), machine).memory
    bigger = int(side * 1.02) + 1                             # the search stops within 1%
    over = uniform_plan(model_chain("meshnet", (18, bigger, bigger), 1)[1], (1, 1, 1), machine).memory
    assert fits <= machine.memory_per_rank < over


@pytest.mark.parametrize("text, ranks", [("1..4096", [2 ** k for k in range(13)]), ("2..64", [2, 4, 8, 16, 32, 64]),
                                         ("8,1,3,8", [1, 3, 8])])
def test_parse_ranks(text, ranks):
    assert parse_ranks(text) == ranks


@pytest.mark.parametrize("text", ["", "0,2", "1..x"])
def test_parse_ranks_refuses_bad_text(text):
    with pytest.raises(SystemExit):
        parse_ranks(text)


def test_channel_filter_columns_count_the_plans_layers_on_them(run):
    _, doc = run
    for r in doc["rows"]:
        if r["iteration_s"] == "":
            continue
        assert 0 <= r["cf_layers"] <= r["layers"]
        if r["split"] != "plan":
            assert r["cf_layers"] == 0 and r["without_cf_s"] == ""    # sample, spatial, hybrid: short grids
        elif r["cf_layers"] == 0:
            assert r["without_cf_s"] == r["iteration_s"]
    assert all(any(s.startswith("Channel/filter splits (predicted)") for s in doc["findings"][m]) for m in doc["findings"])


def test_channel_filter_splits_pay_off_for_resnet50_at_256_ranks(machine):
    """ResNet-50 at batch 256 on 256 ranks (one sample per rank): the plan runs most layers on channel/filter grids,
    predicted faster than the best plan without them, which is what the row records."""
    from fractions import Fraction
    from hpcnn.bench.project import project
    result = project(machine, {"resnet50": (3, 224, 224)}, [256], {"resnet50": 256}, {"resnet50": Fraction(1)})
    row = next(r for r in result["rows"] if r["mode"] == "strong" and r["split"] == "plan")
    assert row["fits"] and row["cf_layers"] > row["layers"] // 2
    _, chain = model_chain("resnet50", (3, 224, 224), 256)
    without = plan_chain(chain, 256, machine, channel_splits=False)
    assert row["without_cf_s"] == pytest.approx(without.totals()["iteration"], rel=1e-12)
    assert row["without_cf_s"] > row["iteration_s"]
