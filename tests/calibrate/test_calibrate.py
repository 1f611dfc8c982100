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
              and again.link(False)[0] > 0 and again.kernel_time("elementwise", n=1, c=4, in_spatial=(8, 8)) > 0)
    assert comm.all_true(ok)


def test_fresh_memory_is_measured_with_its_threshold_and_a_valid_source():
    from hpcnn.calibrate.layers import FRESH_MEMORY_THRESHOLD, measure_fresh_memory
    section = measure_fresh_memory("measured", reps=3)
    assert section["threshold_bytes"] == {"value": FRESH_MEMORY_THRESHOLD, "source": "glibc-mmap-threshold"}
    # page faults cost something, and far less than a second per GiB
    assert 0 < section["per_byte"]["value"] < 1.0 / 2**30
    from perfmodel.machine import load_profile
    shipped = load_profile("vm-cpu")
    assert shipped.fresh_memory[1] == FRESH_MEMORY_THRESHOLD and shipped.fresh_memory[0] > 0
