"""Calibration: shape sampling, the measured sections, and (under MPI, 2 ranks) a tiny end-to-end run."""
import numpy as np
import pytest

from hpcnn.calibrate import sample_shapes
from perfmodel.machine import MachineProfile, OPERATIONS, operation_features


@pytest.mark.parametrize("op", OPERATIONS)
def test_sampled_shapes_are_valid(op):
    shapes = sample_shapes(op, np.random.default_rng(1), 20)
    assert len(shapes) == 20
    for s in shapes:
        keys = {k: s[k] for k in ("n", "c", "k", "in_spatial", "kernel", "out_spatial", "m", "gemm_k", "gemm_n",
                                  "nbytes") if k in s}
        f = operation_features(op, **keys)
        assert f["bytes"] > 0
        if op.startswith("conv_") or op.startswith("pool_"):
            assert all(o >= 1 for o in s["out_spatial"])


@pytest.mark.mpi(min_size=2)
def test_calibrate_smoke_two_ranks(tmp_path_factory):
    from hpcnn.calibrate import calibrate
    from hpcnn.parallel import Communicator
    comm = Communicator.world()
    profile = calibrate(comm, budget=2.0, quick=True, progress=False)
    ok = True
    if comm.rank == 0:
        path = tmp_path_factory.mktemp("cal") / "p.json"
        profile.save(path)
        again = MachineProfile.load(path)
        ok = (str(comm.size) in again.doc["collectives"]["allreduce"]["measured"]["ranks"]
              and "sync_wait" in again.doc and "runs" in again.kernels["copy"].coef
              and again.link(False)[0] > 0 and again.kernel_time("elementwise", n=1, c=4, in_spatial=(8, 8)) > 0
              and "layers_in_context" in again.doc)
        # the random networks ran on one rank and split over all of them
        rows = [r for kind in again.doc["layers_in_context"]["kinds"].values() for r in kind["rows"]]
        ok = ok and {r[8] > 0 for r in rows} == {True, False}
    assert comm.all_true(ok)


def test_fresh_memory_is_measured_with_its_threshold_and_a_valid_source():
    from hpcnn.calibrate.layers import measure_fresh_memory
    from hpcnn.kernels.cpu._memory import mmap_threshold
    section = measure_fresh_memory("measured", reps=3)
    assert section["threshold_bytes"] == {"value": mmap_threshold(), "source": "glibc-mmap-threshold"}
    # page faults cost something, and far less than a second per GiB
    assert 0 < section["per_byte"]["value"] < 1.0 / 2**30
    from perfmodel.machine import load_profile
    shipped = load_profile("vm-cpu")
    # measured before or after hpcnn raised malloc's threshold (glibc's 32 MiB bound, or hpcnn's 1 GiB)
    assert shipped.fresh_memory[1] in (32 << 20, 1 << 30) and shipped.fresh_memory[0] > 0


def test_a_split_convolution_samples_the_calls_its_block_makes():
    """Rows 0-3 of a 3x3 'same' convolution on 8 rows split in two: the owned block (halo row as zero padding)
    and the one-row halo piece that reaches the last output row, as hpcnn.parallel.conv.DistConv runs them."""
    from hpcnn.calibrate.shapes import block_calls
    from hpcnn.geometry import WindowGeometry
    layer = dict(nd=2, n=2, c=3, k=5, spatial=(8, 6), geometry=WindowGeometry(2, 3, 1, 1), kind=None)
    own, piece = block_calls(layer, 1, (2, 1), (0, 0, 0))
    assert own["in_spatial"] == (4, 6) and own["out_spatial"] == (4, 6) and own["padding"] == ((1, 1), (1, 1))
    assert piece["in_spatial"] == (1, 6) and piece["out_spatial"] == (1, 6)
    # the piece is convolved with the one kernel row that reaches it (hpcnn.geometry.piece_taps)
    assert piece["kernel"] == (1, 3) and piece["padding"] == ((0, 0), (1, 1))
    # split along W (the contiguous axis) as often: the same calls with the axes swapped
    own_w, piece_w = block_calls(dict(layer, spatial=(6, 8)), 1, (1, 2), (0, 0, 1))
    assert own_w["in_spatial"] == (6, 4) and piece_w["in_spatial"] == (6, 1)
    # two split dimensions: the owned block, the halo row along H spanning W's halo too (the corner), and the
    # halo column along W spanning only the owned rows
    own, row, column = block_calls(dict(layer, spatial=(8, 8)), 1, (2, 2), (0, 0, 0))
    assert own["in_spatial"] == (4, 4) and own["out_spatial"] == (4, 4) and own["padding"] == ((1, 1), (1, 1))
    assert row["in_spatial"] == (1, 5) and row["out_spatial"] == (1, 4) and row["padding"] == ((0, 0), (1, 0))
    assert column["in_spatial"] == (4, 1) and column["out_spatial"] == (4, 1) and column["padding"] == ((1, 1), (0, 0))
    assert row["kernel"] == (1, 3) and column["kernel"] == (3, 1)
    # a strided layer whose blocks skip an own edge row: one call on the extended block
    (ext,) = block_calls(dict(layer, spatial=(10, 10), geometry=WindowGeometry(2, 1, 2, 0)), 1, (2, 2), (0, 1, 1))
    assert ext["in_spatial"] == (3, 3) and ext["out_spatial"] == (2, 2)


def test_samples_cover_blocks_pieces_and_every_axis():
    shapes = sample_shapes("conv_forward", np.random.default_rng(3), 300)
    nd2 = [s for s in shapes if len(s["in_spatial"]) == 2]
    assert any(s["in_spatial"][0] <= 3 < s["in_spatial"][1] for s in nd2)       # thin along H
    assert any(s["in_spatial"][1] <= 3 < s["in_spatial"][0] for s in nd2)       # thin along W
    assert any(len(s["in_spatial"]) == 3 for s in shapes)
    assert any(lo != hi for s in shapes for lo, hi in s["padding"])            # edge blocks pad one side
    assert len({s["n"] for s in shapes}) > 2


def test_staging_bandwidth_is_measured_each_way_with_sources():
    """What `hpcnn calibrate --device gpu` adds to a profile, measured here through the emulated GPU's staging."""
    from hpcnn.backend import open_device
    from hpcnn.calibrate.staging import measure_staging, staging_section
    from perfmodel.profile_format import check_provenance
    rows = measure_staging(open_device("emulated-gpu"), [8, 1 << 20, 1 << 22], reps=3)
    assert [r[0] for r in rows] == [8, 1 << 20, 1 << 22] and all(r[1] > 0 and r[2] > 0 for r in rows)
    section = staging_section(rows, "measured")
    check_provenance(section, "staging", None, {"measured": "here"})
    assert section["device_to_host"]["beta"]["value"] > 0 and section["host_to_device"]["alpha"]["value"] > 0


def test_copies_are_sampled_whole_and_as_halo_slabs_along_every_axis():
    shapes = sample_shapes("copy", np.random.default_rng(3), 200)
    slabs = [s for s in shapes if s["axis"] is not None and s["rows"] < s["shape"][2 + s["axis"]]]
    assert any(s["axis"] is None and s["runs"] == 1 for s in shapes)
    last = [s for s in slabs if s["axis"] == len(s["shape"]) - 3]
    first = [s for s in slabs if s["axis"] == 0]
    assert last and first
    # a slab along the contiguous axis walks a run per row of the outer dimensions
    s = last[0]
    assert s["runs"] == int(np.prod(s["shape"][:-1])) and s["nbytes"] == 4 * s["runs"] * s["rows"]


def test_the_kernel_calls_copy_what_their_features_say():
    from hpcnn.backend import open_device
    from hpcnn.calibrate.kernels import kernel_call
    call = dict(shape=(2, 3, 5, 7), axis=1, rows=2, nbytes=4 * 2 * 3 * 5 * 2, runs=30)
    kernel_call("copy", call, np.random.default_rng(0), open_device("cpu"))()     # runs without shape errors


def test_one_rank_waits_for_nobody():
    from types import SimpleNamespace

    from hpcnn.calibrate.network import sync_wait
    assert sync_wait(SimpleNamespace(size=1), [lambda: None]) == 0.0


def test_thread_speedup_is_measured_per_operation_on_two_threads():
    """On 2 threads (numba allowed 2: a child process without the test's thread variables), every operation's
    sampled calls get a speedup; a profile built with it prices 2 threads per rank."""
    import json
    import os
    import subprocess
    import sys
    code = ("import json, numpy as np\n"
            "from hpcnn.backend import open_device\n"
            "from hpcnn.calibrate.thread_scaling import measure_thread_speedup\n"
            "from hpcnn.parallel.mpi import Communicator\n"
            "print(json.dumps(measure_thread_speedup(Communicator.local(), np.random.default_rng(1), "
            "open_device('cpu'), 2, calls=1)))\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    speedup = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(speedup) == set(OPERATIONS) and all(v > 0 for v in speedup.values())
    from hpcnn.calibrate.thread_scaling import measure_thread_speedup
    from hpcnn.backend import open_device
    from hpcnn.parallel.mpi import Communicator
    assert measure_thread_speedup(Communicator.local(), np.random.default_rng(1), open_device("cpu"), 1) == {}
