"""Machine profiles: schema, provenance of every number, round trip, collective models."""
import json
import math

import pytest

from perfmodel.machine import MachineProfile, ProfileError, load_profile, operation_features, shipped_profiles


def test_shipped_profiles_validate_and_cite_sources():
    shipped = shipped_profiles()
    assert "v100-nvlink-edr" in shipped
    for name, path in shipped.items():
        m = load_profile(name)
        assert m.ranks_per_node >= 1 and m.memory_per_rank > 0
        # every link number carries a citation text
        assert m.source_of("links", "inter_node", "beta")


def test_v100_profile_numbers():
    m = load_profile("v100-nvlink-edr")
    assert m.ranks_per_node == 4
    assert m.memory_per_rank == 16 * 2**30
    # per_flop is the datasheet peak times the stated efficiency
    assert m.kernels["conv_forward"].coef["per_flop"] == pytest.approx(1 / (15.7e12 * 0.6))
    assert "15.7" in m.doc["sources"]["v100-datasheet"]


def test_a_number_without_source_is_refused(tmp_path):
    doc = MachineProfile.synthetic().doc
    doc["links"]["intra_node"]["alpha"] = {"value": 1e-6}
    with pytest.raises(ProfileError, match="links.intra_node.alpha.value: the number .* has no source"):
        MachineProfile(doc)
    doc = MachineProfile.synthetic().doc
    doc["links"]["intra_node"]["alpha"]["source"] = "nowhere"
    with pytest.raises(ProfileError, match="'nowhere' is not a key of 'sources'"):
        MachineProfile(doc)


def test_missing_operation_and_bad_file(tmp_path):
    doc = MachineProfile.synthetic().doc
    del doc["compute"]["pool_forward"]
    with pytest.raises(ProfileError, match="compute: no model for pool_forward"):
        MachineProfile(doc)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        MachineProfile.load(bad)
    with pytest.raises(ProfileError, match="no such file"):
        MachineProfile.load(tmp_path / "missing.json")


def test_round_trip(tmp_path):
    m = MachineProfile.synthetic(alpha=2e-6, beta=3e-9)
    path = tmp_path / "p.json"
    m.save(path)
    again = MachineProfile.load(path)
    assert again.doc == json.loads(json.dumps(m.doc))
    assert again.link(False) == (2e-6, 3e-9)


def test_linear_kernel_model_by_hand():
    m = MachineProfile.synthetic(per_flop=1e-9, per_byte=2e-9, fixed=1e-6)
    f = operation_features("conv_forward", n=2, c=3, k=4, in_spatial=(5, 5), kernel=(3, 3), out_spatial=(3, 3))
    assert f["flops"] == 2 * 2 * 4 * 3 * 9 * 9
    assert f["bytes"] == 4 * (2 * 3 * 25 + 2 * 4 * 9 + 4 * 3 * 9)
    t = m.kernel_time("conv_forward", n=2, c=3, k=4, in_spatial=(5, 5), kernel=(3, 3), out_spatial=(3, 3))
    assert t == pytest.approx(1e-6 + f["flops"] * 1e-9 + f["bytes"] * 2e-9)


def test_measured_table_corrects_the_fit():
    doc = MachineProfile.synthetic(per_flop=1e-9, per_byte=0.0).doc
    shape = dict(n=1, c=8, in_spatial=(16, 16))
    f = operation_features("elementwise", **shape)
    # a measured sample twice the fitted value: at that shape the prediction follows the table
    doc["compute"]["elementwise"]["table"] = {"source": "stated", "rows": [
        {"dims": list(f["dims"]), "flops": f["flops"], "bytes": f["bytes"], "seconds": 2 * f["flops"] * 1e-9}]}
    m = MachineProfile(doc)
    assert m.kernel_time("elementwise", **shape) == pytest.approx(2 * f["flops"] * 1e-9, rel=1e-6)
    # far away the correction fades back to the fit
    far = dict(n=64, c=512, in_spatial=(256, 256))
    ff = operation_features("elementwise", **far)
    assert m.kernel_time("elementwise", **far) == pytest.approx(ff["flops"] * 1e-9, rel=1e-3)


def test_table_rows_use_the_thin_term_and_skip_outliers():
    doc = MachineProfile.synthetic(per_flop=1e-12, per_byte=0.0).doc
    doc["compute"]["conv_forward"]["coef"]["thin"] = {"value": 1e-11, "source": "stated"}
    shape = dict(n=1, c=2, k=64, in_spatial=(16, 16), kernel=(3, 3), out_spatial=(14, 14))
    f = operation_features("conv_forward", **shape)
    fitted = f["flops"] * 1e-12 + f["thin"] * 1e-11
    # a row measured exactly at the fit, stored without its "thin" term (older profiles): no correction
    row = {"dims": list(f["dims"]), "flops": f["flops"], "bytes": f["bytes"], "lowered": f["lowered"],
           "seconds": fitted}
    doc["compute"]["conv_forward"]["table"] = {"source": "stated", "rows": [row]}
    assert MachineProfile(doc).kernel_time("conv_forward", **shape) == pytest.approx(fitted, rel=1e-9)
    # a row 100x slow marked as an outlier takes no part in the correction either
    doc["compute"]["conv_forward"]["table"]["rows"] = [dict(row, seconds=100 * fitted, outlier=True)]
    assert MachineProfile(doc).kernel_time("conv_forward", **shape) == pytest.approx(fitted, rel=1e-9)


def test_allreduce_algorithms_by_size():
    a, b, g = 1e-6, 1e-9, 1e-10
    m = MachineProfile.synthetic(alpha=a, beta=b, gamma=g, small_bytes=2048, ring_bytes=1 << 20)
    p = 8
    n = 1024.0
    assert m.allreduce_algorithm(n, p) == "recursive_doubling"
    assert m.allreduce(n, p) == pytest.approx(3 * (a + n * b + n * g))
    n = 65536.0
    assert m.allreduce_algorithm(n, p) == "rabenseifner"
    assert m.allreduce(n, p) == pytest.approx(2 * 3 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g)
    n = float(1 << 24)
    ring = 2 * 7 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g
    rab = 2 * 3 * a + 2 * 7 / 8 * n * b + 7 / 8 * n * g
    assert m.allreduce(n, p) == pytest.approx(min(ring, rab))
    assert m.allreduce(n, 1) == 0.0


def test_alltoall_bruck_and_pairwise():
    a, b = 1e-6, 1e-9
    m = MachineProfile.synthetic(alpha=a, beta=b)
    assert m.alltoall(8 * 100, 8) == pytest.approx(3 * a + 800 / 2 * 3 * b)       # Bruck: 100 B per partner
    assert m.alltoall(8 * 1000, 8) == pytest.approx(7 * a + 8000 * b)            # pairwise
    assert m.alltoall(8 * 1000, 8, partners=2) == pytest.approx(2 * a + 8000 * b)


def test_measured_collective_table_is_interpolated():
    doc = MachineProfile.synthetic().doc
    doc["collectives"]["allreduce"]["measured"] = {"source": "stated", "ranks": {"2": [[8, 1e-6], [8000, 1e-3]]}}
    m = MachineProfile(doc)
    assert m.allreduce(8, 2) == pytest.approx(1e-6)
    assert m.allreduce(8000, 2) == pytest.approx(1e-3)
    mid = math.sqrt(8 * 8000)
    assert m.allreduce(mid, 2) == pytest.approx(math.sqrt(1e-6 * 1e-3))
    assert m.allreduce(16000, 2) > 1e-3


def test_cited_sources_are_those_the_numbers_name():
    doc = MachineProfile.synthetic().doc
    doc["sources"]["unused"] = "a citation no number names"
    profile = MachineProfile(doc)
    cited = profile.cited_sources()
    assert "unused" not in cited and cited
    assert profile.source_of("links", "intra_node", "beta") in cited.values()
