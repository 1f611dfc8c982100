"""Calibration: shape sampling, the relative-error fit, and (under MPI, 2 ranks) a tiny end-to-end run."""
import numpy as np
import pytest

from perfmodel.calibrate import fit_linear, fit_robust, sample_shapes
from perfmodel.machine import MachineProfile, OPERATIONS, operation_features


def test_fit_recovers_coefficients_from_exact_data():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        f = {"flops": float(rng.uniform(1e5, 1e9)), "bytes": float(rng.uniform(1e3, 1e8))}
        rows.append((f, 2e-6 + 3e-11 * f["flops"] + 5e-10 * f["bytes"]))
    coef, rms, med = fit_linear(rows, ("fixed", "flops", "bytes"))
    assert coef["fixed"] == pytest.approx(2e-6, rel=1e-6)
    assert coef["flops"] == pytest.approx(3e-11, rel=1e-6)
    assert coef["bytes"] == pytest.approx(5e-10, rel=1e-6)
    assert rms < 1e-9 and med < 1e-9


def test_robust_fit_rejects_descheduled_samples():
    # exact data plus a few samples inflated by whole scheduler time slices (8 ms, 16 ms)
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(40):
        f = {"flops": float(rng.uniform(1e5, 1e8)), "bytes": float(rng.uniform(1e3, 1e6))}
        rows.append((f, 2e-6 + 3e-11 * f["flops"] + 5e-10 * f["bytes"]))
    bad = [3, 11, 25]
    for i, extra in zip(bad, (8e-3, 16e-3, 8e-3)):
        rows[i] = (rows[i][0], rows[i][1] + extra)
    coef, rms, med, outlier = fit_robust(rows, ("fixed", "flops", "bytes"))
    assert [i for i, o in enumerate(outlier) if o] == bad
    assert coef["flops"] == pytest.approx(3e-11, rel=1e-6)
    assert coef["bytes"] == pytest.approx(5e-10, rel=1e-6)
    # the plain fit is dragged off by the same samples
    assert fit_linear(rows, ("fixed", "flops", "bytes"))[1] > 0.1


def test_robust_fit_keeps_fast_samples_that_fit_badly():
    # a 4x-slow but fast kernel (a 50 us excess cannot be a lost time slice) is kept
    rows = [({"flops": float(x)}, 1e-6 + 1e-12 * x) for x in np.geomspace(1e4, 1e8, 30)]
    rows[5] = (rows[5][0], 4 * rows[5][1] + 5e-5)
    *_, outlier = fit_robust(rows, ("fixed", "flops"))
    assert not any(outlier)


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
    from hpcnn.dist import comm as _comm
    from perfmodel.calibrate import calibrate
    comm = _comm.world()
    profile = calibrate(comm, budget=2.0, quick=True, progress=False)
    ok = True
    if comm.Get_rank() == 0:
        path = tmp_path_factory.mktemp("cal") / "p.json"
        profile.save(path)
        again = MachineProfile.load(path)
        ok = (str(comm.Get_size()) in again.doc["collectives"]["allreduce"]["measured"]["ranks"]
              and again.link(False)[0] > 0 and again.kernel_time("elementwise", n=1, c=4, in_spatial=(8, 8)) > 0)
    assert _comm.all_true(comm, ok)


def test_fresh_memory_is_measured_with_its_threshold_and_a_valid_source():
    from perfmodel.calibrate import FRESH_MEMORY_THRESHOLD, measure_fresh_memory
    section = measure_fresh_memory("measured", reps=3)
    assert section["threshold_bytes"] == {"value": FRESH_MEMORY_THRESHOLD, "source": "glibc-mmap-threshold"}
    # page faults cost something, and far less than a second per GiB
    assert 0 < section["per_byte"]["value"] < 1.0 / 2**30
    from perfmodel.machine import load_profile
    shipped = load_profile("vm-cpu")
    assert shipped.fresh_memory[1] == FRESH_MEMORY_THRESHOLD and shipped.fresh_memory[0] > 0
