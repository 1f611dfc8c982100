"""`hpcnn bench scaling`: a 1-vs-2-rank run end to end (it starts mpiexec itself), the CSV schema, the plots,
the predictions beside the measurements, and how splits are resolved."""
import csv
import json
import statistics

import pytest

from hpcnn.bench import scaling
from hpcnn.bench.scaling_setup import distinct_splits, grid_text
from hpcnn.cli import main
from tests.bench import ROUNDED_RATIO

TINY = ["--model", "meshnet", "--input", "4x32x32", "--batch", "2", "--set", "widths=[4,4]",
        "--set", "dilations=[1,2]", "--iterations", "2"]
LEAVES = ["block1.conv", "block1.bn", "block1.relu", "block2.conv", "block2.bn", "block2.relu", "classifier"]
PNG = b"\x89PNG\r\n\x1a\n"


def _read(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def strong_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    assert main(["bench", "scaling", *TINY, "--ranks", "1,2", "--threads", "2", "--out", str(out)]) == 0
    return out


def test_strong_run_writes_the_csv_schema_and_every_point(strong_run):
    from perfmodel.machine import load_profile
    machine = load_profile(json.loads((strong_run / "scaling.json").read_text())["points"][0]["machine"])
    columns, rows = _read(strong_run / "scaling.csv")
    assert columns == scaling.CSV_COLUMNS
    points = {(int(r["ranks"]), int(r["threads"]), r["split"]) for r in rows}
    # 1 rank: one measurement stands for all three splits; 2 ranks: sample (2x1x1) and spatial differ
    assert points == {(1, 1, s) for s in ("sample", "spatial", "plan")} | \
        {(1, 2, s) for s in ("sample", "spatial", "plan")} | {(2, 1, s) for s in ("sample", "spatial", "plan")}
    assert {r["role"] for r in rows if r["threads"] == "2"} == {"threads"}
    assert {r["role"] for r in rows if r["threads"] == "1"} == {"sweep"}
    one = [r for r in rows if r["ranks"] == "1" and r["threads"] == "1"]
    assert {r["measured_as"] for r in one} == {"sample"}
    assert all(float(r["speedup"]) == 1.0 and float(r["efficiency"]) == 1.0 for r in one)
    by = {(int(r["ranks"]), int(r["threads"]), r["split"]): r for r in rows}
    assert by[(2, 1, "sample")]["grid"] == "2x1x1"
    assert by[(2, 1, "spatial")]["grid"] in ("1x2x1", "1x1x2")
    # the reference: the fastest 1-rank configuration of the sweep; speedups are over it
    ref = min((r for r in rows if r["ranks"] == "1" and r["role"] == "sweep"), key=lambda r: float(r["iteration_s"]))
    for r in rows:
        t, rate = float(r["iteration_s"]), float(r["samples_per_s"])
        assert 0 < float(r["best_s"]) <= t
        assert rate == pytest.approx(int(r["batch"]) / t, rel=ROUNDED_RATIO)
        assert float(r["speedup"]) == pytest.approx(rate / float(ref["samples_per_s"]), rel=ROUNDED_RATIO)
        assert float(r["efficiency"]) == pytest.approx(float(r["speedup"]) / int(r["cores"]), rel=ROUNDED_RATIO)
        assert float(r["comm_share"]) == pytest.approx(float(r["comm_s"]) / t, rel=ROUNDED_RATIO)
        assert float(r["comm_s"]) <= t
        assert float(r["peak_rss_mib"]) > float(r["peak_arrays_mib"]) > 0
        assert r["cores"] == str(int(r["ranks"]) * int(r["threads"]))
        # a 2-thread row is priced where the profile measured its thread speedup, and left nan otherwise
        if r["threads"] == "1" or machine.prices_threads(int(r["threads"])):
            predicted = float(r["predicted_iteration_s"])
            # six significant figures of each time: their rounding moves the error by up to about 1e-5
            assert float(r["error"]) == pytest.approx((predicted - t) / t, rel=1e-4, abs=2e-5)
            assert float(r["predicted_speedup"]) == pytest.approx(
                float(r["predicted_samples_per_s"]) / float(ref["predicted_samples_per_s"]), rel=ROUNDED_RATIO)
        else:
            assert r["error"] == "nan" and r["predicted_iteration_s"] == "nan"


def test_predictions_are_the_models_for_the_same_grid(strong_run):
    from perfmodel.layers import model_chain
    from perfmodel.machine import load_profile
    from perfmodel.planner import uniform_plan, uniform_time
    data = json.loads((strong_run / "scaling.json").read_text())
    point = next(p for p in data["points"] if p["ranks"] == 2 and p["label"] == "sample")
    machine = load_profile(point["machine"])
    _, chain = model_chain("meshnet", (4, 32, 32), 2, widths=[4, 4], dilations=[1, 2])
    predicted, _ = uniform_time(chain, (2, 1, 1), machine)
    assert point["predicted"]["iteration_s"] == pytest.approx(predicted, rel=1e-9)
    assert point["predicted"]["memory_bytes"] == pytest.approx(uniform_plan(chain, (2, 1, 1), machine).memory,
                                                               rel=1e-12)
    # the summary: median and largest |error| over the sweep's rows that are not oversubscribed
    errors = [abs(r["error"]) for r in data["rows"] if r["role"] == "sweep" and not r["oversubscribed"]]
    assert errors and data["summary"]["median_abs_error"] == pytest.approx(statistics.median(errors), rel=1e-12)
    assert data["summary"]["max_abs_error"] == max(errors)
    for r in data["rows"]:
        # a row of 2 threads is priced when the profile measured its thread speedup, and left nan otherwise
        if r["role"] == "sweep" or machine.prices_threads(r["threads"]):
            # the rows keep six significant figures: their rounding moves the error by up to about 1e-5
            assert r["error"] == pytest.approx(r["predicted_iteration_s"] / r["iteration_s"] - 1, rel=1e-4, abs=2e-5)
        else:
            assert r["error"] != r["error"]     # nan


def test_per_layer_breakdown_covers_every_leaf(strong_run):
    columns, rows = _read(strong_run / "scaling_layers.csv")
    assert columns == scaling.LAYER_COLUMNS
    measured = {(r["ranks"], r["threads"], r["split"]) for r in rows}
    # 1 rank, 1 rank x 2 threads, 2 ranks sample, 2 ranks spatial, and the 2-rank plan where it is neither
    _, points = _read(strong_run / "scaling.csv")
    plan_apart = any(r["ranks"] == "2" and r["split"] == "plan" and r["measured_as"] == "plan" for r in points)
    assert len(measured) == 4 + plan_apart
    for key in measured:
        assert [r["layer"] for r in rows if (r["ranks"], r["threads"], r["split"]) == key] == LEAVES
    spatial = [r for r in rows if r["ranks"] == "2" and r["split"] == "spatial"]
    conv = next(r for r in spatial if r["layer"] == "block2.conv")
    # a spatially split dilated convolution exchanges halos; batch-norm reduces its statistics
    assert float(conv["halo_s"]) > 0 and float(conv["predicted_halo_s"]) > 0
    assert float(next(r for r in spatial if r["layer"] == "block1.bn")["collective_s"]) > 0
    # the predicted columns are perfmodel's breakdown of the same grid
    from perfmodel.layers import model_chain
    from perfmodel.machine import load_profile
    from perfmodel.planner import uniform_plan
    from perfmodel.report import breakdown
    data = json.loads((strong_run / "scaling.json").read_text())
    machine = load_profile(data["points"][0]["machine"])
    _, chain = model_chain("meshnet", (4, 32, 32), 2, widths=[4, 4], dilations=[1, 2])
    expected = breakdown(uniform_plan(chain, (2, 1, 1), machine))["layers"]
    sample = [r for r in rows if r["ranks"] == "2" and r["split"] == "sample"]
    assert [r["layer"] for r in sample] == list(expected)
    for r in sample:
        for k in ("compute", "halo", "collective", "shuffle"):
            assert float(r[f"predicted_{k}_s"]) == pytest.approx(expected[r["layer"]][f"{k}_s"], rel=1e-5, abs=1e-12)


def test_plots_are_written(strong_run):
    for name in ("scaling_strong.png", "breakdown_strong.png"):
        assert (strong_run / name).read_bytes()[:8] == PNG


def test_merge_rebuilds_the_tables_from_the_points(strong_run, capsys):
    before = (strong_run / "scaling.csv").read_text()
    (strong_run / "scaling.csv").unlink()
    assert main(["bench", "scaling", "--merge", "--out", str(strong_run)]) == 0
    assert (strong_run / "scaling.csv").read_text() == before
    assert "prediction error per iteration" in capsys.readouterr().out


def test_weak_run_grows_the_batch_with_the_ranks(tmp_path):
    assert main(["bench", "scaling", *TINY, "--iterations", "1", "--ranks", "1,2", "--mode", "weak",
                 "--grids", "sample,1x1x2", "--out", str(tmp_path)]) == 0
    _, rows = _read(tmp_path / "scaling.csv")
    assert {(r["ranks"], r["split"], r["batch"], r["grid"]) for r in rows} == {
        ("1", "sample", "2", "1x1x1"), ("2", "sample", "4", "2x1x1"), ("2", "1x1x2", "4", "1x1x2")}
    assert all(r["mode"] == "weak" for r in rows)
    assert (tmp_path / "scaling_weak.png").read_bytes()[:8] == PNG


def test_channel_and_filter_grids_are_measured_beside_their_prediction(tmp_path):
    """Long grids in --grids: a channel split and a filter split at 2 ranks, each timed and predicted on its grid."""
    from perfmodel.layers import model_chain
    from perfmodel.machine import load_profile
    from perfmodel.planner import uniform_time
    long = ("1x1x1x2x1", "1x1x1x1x2")
    assert main(["bench", "scaling", *TINY, "--iterations", "1", "--ranks", "1,2", "--grids", "sample," + ",".join(long),
                 "--threads", "", "--out", str(tmp_path)]) == 0
    _, rows = _read(tmp_path / "scaling.csv")
    by = {(r["ranks"], r["split"]): r for r in rows}
    assert set(by) == {("1", "sample"), ("2", "sample")} | {("2", g) for g in long}
    data = json.loads((tmp_path / "scaling.json").read_text())
    machine = load_profile(data["points"][0]["machine"])
    _, chain = model_chain("meshnet", (4, 32, 32), 2, widths=[4, 4], dilations=[1, 2])
    for grid in long:
        r = by[("2", grid)]
        assert r["grid"] == grid and float(r["iteration_s"]) > 0
        point = next(p for p in data["points"] if p["label"] == grid)
        predicted, _ = uniform_time(chain, tuple(int(v) for v in grid.split("x")), machine)
        assert point["predicted"]["iteration_s"] == pytest.approx(predicted, rel=1e-9)
        assert float(r["error"]) == pytest.approx(predicted / float(r["iteration_s"]) - 1, rel=1e-4, abs=1e-6)
    _, layers = _read(tmp_path / "scaling_layers.csv")
    # a channel-split convolution sums its partial outputs over the C ranks: measured and predicted collectives
    conv = next(r for r in layers if r["split"] == "1x1x1x2x1" and r["layer"] == "block2.conv")
    assert float(conv["collective_s"]) > 0 and float(conv["predicted_collective_s"]) > 0


def test_resolve_splits_names_what_is_impossible_and_merges_equal_configurations():
    from perfmodel.layers import model_chain
    from perfmodel.machine import load_profile
    machine = load_profile("vm-cpu")
    _, chain = model_chain("meshnet", (4, 32, 32), 2, widths=[4, 4], dilations=[1, 2])
    resolved = scaling.resolve_splits(chain, 4, machine, ["sample", "spatial", "hybrid", "plan", "1x2x1", "1x4x1"])
    by = {label: (result, note) for label, result, note in resolved}
    assert by["sample"][0] is None and by["sample"][1] == "4 ranks > global batch 2: some ranks would hold no sample"
    assert by["1x2x1"][0] is None and by["1x2x1"][1] == "another rank count"
    assert by["1x4x1"][0] is not None and by["hybrid"][0] is not None
    hybrid_grid = grid_text(by["hybrid"][0])
    assert hybrid_grid.startswith("2x")
    _, one = model_chain("meshnet", (4, 32, 32), 2, widths=[4, 4], dilations=[1, 2])
    groups = distinct_splits(scaling.resolve_splits(one, 1, machine, ["sample", "spatial", "plan"]))
    assert groups == {"sample": ["sample", "spatial", "plan"]}


def test_bad_split_and_weak_batch_are_refused():
    with pytest.raises(SystemExit, match="--grids takes"):
        main(["bench", "scaling", *TINY, "--grids", "diagonal", "--list-splits", "2"])
    with pytest.raises(SystemExit, match=r"grid 1x1x2x1 needs 3 entries \(N, \*S\) or 5 \(N, \*S, C, F\)"):
        main(["bench", "scaling", *TINY, "--grids", "1x1x2x1", "--list-splits", "2"])
    with pytest.raises(SystemExit, match="weak scaling needs"):
        main(["bench", "scaling", *TINY, "--batch", "3", "--ranks", "2,3", "--mode", "weak", "--list-splits", "3"])


def test_list_splits_prints_the_distinct_splits(capsys):
    assert main(["bench", "scaling", *TINY, "--list-splits", "1"]) == 0
    assert capsys.readouterr().out.split() == ["sample"]
    assert main(["bench", "scaling", *TINY, "--list-splits", "2"]) == 0
    # the plan is listed apart where the profile's planner picks neither uniform split
    out = capsys.readouterr().out.split()
    assert out[:2] == ["sample", "spatial"] and out[2:] in ([], ["plan"])


def _profile_without_thread_speedup(tmp_path):
    """The shipped profile, measured on one thread per rank, without any measured thread speedup."""
    from perfmodel.machine import shipped_profiles
    with open(shipped_profiles()["vm-cpu"]) as f:
        data = json.load(f)
    data.pop("thread_speedup", None)
    path = tmp_path / "one-thread.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_threads_per_rank_sets_the_sweep_and_the_threads_rows_compare_with_it(tmp_path):
    profile = _profile_without_thread_speedup(tmp_path)
    assert main(["bench", "scaling", *TINY, "--iterations", "1", "--ranks", "1", "--grids", "sample",
                 "--threads-per-rank", "2", "--threads", "1", "--machine", profile, "--out", str(tmp_path)]) == 0
    _, rows = _read(tmp_path / "scaling.csv")
    by = {r["role"]: r for r in rows}
    assert set(by) == {"sweep", "threads"}
    assert (by["sweep"]["threads"], by["threads"]["threads"]) == ("2", "1")
    assert float(by["sweep"]["speedup"]) == 1.0 and by["sweep"]["error"] != "nan"
    # one thread against the 2-thread reference: efficiency per core is the speedup times 2
    assert float(by["threads"]["efficiency"]) == pytest.approx(2 * float(by["threads"]["speedup"]), rel=1e-4)
    # the 1-thread row runs the profile's own thread count, so it is priced as calibrated
    assert float(by["threads"]["predicted_iteration_s"]) > 0
    names = sorted(p.name for p in (tmp_path / "points").iterdir())
    assert names == ["strong-sweep-r1-t2-sample.json", "strong-threads-r1-t1-sample.json"]


def test_threads_rows_the_profile_cannot_price_are_not_predicted(tmp_path):
    """A profile measured on 1 thread with no thread speedup does not price a 2-thread row: nan, not a guess."""
    profile = _profile_without_thread_speedup(tmp_path)
    assert main(["bench", "scaling", *TINY, "--iterations", "1", "--ranks", "1", "--grids", "sample",
                 "--threads-per-rank", "1", "--threads", "2", "--machine", profile, "--out", str(tmp_path)]) == 0
    _, rows = _read(tmp_path / "scaling.csv")
    by = {r["role"]: r for r in rows}
    assert (by["sweep"]["threads"], by["threads"]["threads"]) == ("1", "2")
    assert float(by["sweep"]["predicted_iteration_s"]) > 0
    assert by["threads"]["predicted_iteration_s"] == "nan"
