"""A profile says where it was measured, and using it elsewhere (or days later) is said in one line."""
from datetime import datetime, timedelta, timezone

from perfmodel import provenance
from perfmodel.machine import MachineProfile, load_profile

HERE = {"host": "node7", "cpu": "Some CPU 9000", "cores": 8}


def _profile(host="node7", cpu="Some CPU 9000", cores=8, date="2026-12-01T10:00:00+0000"):
    doc = MachineProfile.synthetic().doc
    doc["sources"]["m"] = "measured here"
    doc["measured_on"] = provenance.measured_on(2, 4, "m", date)
    doc["measured_on"].update(host=host, cpu=cpu)
    doc["measured_on"]["cores"]["value"] = cores
    return MachineProfile(doc)


NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def test_the_same_machine_the_same_day_is_fine():
    ok, line = provenance.check(_profile(), HERE, NOW)
    assert ok and "this machine" in line and "4 thread(s) per rank" in line


def test_another_machine_is_said_with_what_differs_and_the_fix():
    ok, line = provenance.check(_profile(cpu="Other CPU", cores=2), HERE, NOW)
    assert not ok and "CPU, cores" in line and "hpcnn calibrate" in line


def test_a_profile_measured_with_other_blas_kernels_is_said():
    profile = _profile()
    profile.doc["measured_on"]["blas"] = "Haswell"
    ok, line = provenance.check(profile, dict(HERE, blas="SkylakeX"), NOW)
    assert not ok and "Haswell BLAS kernels" in line and "SkylakeX" in line and "hpcnn calibrate" in line
    ok, _ = provenance.check(profile, dict(HERE, blas="Haswell"), NOW)
    assert ok


def test_an_old_profile_of_this_machine_is_called_stale():
    ok, line = provenance.check(_profile(), HERE, NOW + timedelta(days=5))
    assert ok and "days ago" in line and "hpcnn calibrate" in line


def test_a_profile_without_provenance_and_a_published_one():
    ok, line = provenance.check(MachineProfile.synthetic(), HERE, NOW)
    assert not ok and "does not say which machine" in line
    ok, line = provenance.check(load_profile("v100-nvlink-edr"), HERE, NOW)
    assert ok and "published" in line


def test_measured_on_is_a_valid_profile_section():
    doc = MachineProfile.synthetic().doc
    doc["sources"]["m"] = "measured"
    doc["measured_on"] = provenance.measured_on(3, 1, "m")
    MachineProfile(doc)   # validates: every number has a source
    assert doc["measured_on"]["cores"]["value"] == provenance.this_machine()["cores"]


def test_hpcnn_as_built_keeps_the_cluster_and_takes_the_measured_kernels():
    from perfmodel.as_built import as_built, prices
    cluster = load_profile("v100-nvlink-edr")
    assert "cuDNN-level" in prices(cluster) and "CUDA-aware" in prices(cluster)
    doc = MachineProfile.synthetic(per_flop=1e-12).doc
    doc["backend"] = "gpu"
    doc["sources"]["m"] = "measured on a GPU"
    doc["measured_on"] = provenance.measured_on(1, 1, "m")
    measured = MachineProfile(doc)
    built = as_built(cluster, measured)
    assert built.doc["compute"] == measured.doc["compute"] and built.doc["links"] == cluster.doc["links"]
    assert built.ranks_per_node == cluster.ranks_per_node and built.memory_per_rank == cluster.memory_per_rank
    shape = dict(n=1, c=64, k=64, in_spatial=(56, 56), kernel=(3, 3), out_spatial=(56, 56))
    assert built.kernel_time("conv_forward", **shape) == measured.kernel_time("conv_forward", **shape)
    assert "measured by hpcnn calibrate" in prices(built)


def test_a_run_with_other_threads_per_rank_is_said_and_the_same_count_is_not():
    profile = _profile()                     # measured with 4 threads per rank
    assert profile.threads_per_rank == 4
    assert provenance.threads_note(profile, 4) is None
    line = provenance.threads_note(profile, 1)
    assert "1 thread(s) per rank" in line and "measured with 4" in line and "--threads 1" in line
    assert provenance.threads_note(MachineProfile.synthetic(), 1) is None     # a stated profile does not say


def _with_thread_speedup(profile, most=2, conv=1.8):
    doc = profile.doc
    doc["measured_on"]["threads_per_rank"]["value"] = 1
    doc["thread_speedup"] = {"threads": {"value": most, "source": "m"},
                             "by_op": {"conv_forward": {"value": conv, "source": "m"},
                                       "copy": {"value": 1.0, "source": "m"}}}
    return MachineProfile(doc)


def test_a_measured_thread_speedup_prices_other_threads_per_rank():
    profile = _with_thread_speedup(_profile())
    shape = dict(n=2, c=32, k=32, in_spatial=(64, 64), kernel=(3, 3), out_spatial=(64, 64))
    one = profile.kernel_time("conv_forward", **shape)
    assert profile.for_threads(1).kernel_time("conv_forward", **shape) == one
    assert abs(profile.for_threads(2).kernel_time("conv_forward", **shape) - one / 1.8) < 1e-12 * one
    # Amdahl through (2 threads, 1.8x): p = (1 - 1/1.8) / (1 - 1/2) = 8/9; 4 threads: (1/9 + 2/9) of the time
    assert abs(profile.for_threads(4).kernel_time("conv_forward", **shape) - one / 3) < 1e-9 * one
    copy = dict(nbytes=1 << 20, runs=1)
    assert profile.for_threads(2).kernel_time("copy", **copy) == profile.kernel_time("copy", **copy)
    assert profile.prices_threads(2) and not _profile().prices_threads(2)
    assert "scaled by its measured thread speedup" in provenance.threads_note(profile, 2)


def test_held_out_errors_recorded_in_a_profile_are_quoted():
    profile = _profile()
    assert "not measured" in provenance.held_out_line(profile) and "--record" in provenance.held_out_line(profile)
    e = {"median": 0.061, "largest": 0.19, "bias": -0.012, "count": 17}
    section, text = provenance.held_out_section(e, dict(e, median=0.18), ["unet2d", "meshnet"], "hpcnn bench model",
                                                "measured by a test")
    doc = profile.doc
    doc["held_out_error"] = section
    doc["sources"]["held-out"] = text
    line = provenance.held_out_line(MachineProfile(doc))      # validates: every number has a source
    assert "per iteration median 6.1%, largest 19.0%, mean signed -1.2% over 17 configurations" in line
    assert "unet2d, meshnet" in line and "per layer median 18.0%" in line
    assert "published" in provenance.held_out_line(load_profile("v100-nvlink-edr"))


def test_likeness_ranks_host_then_cpu_then_cores_then_blas():
    here = dict(HERE, blas="SkylakeX")
    same = _profile().doc
    same["measured_on"]["blas"] = "SkylakeX"
    other_cpu = _profile(cpu="Other CPU").doc
    other_host = _profile(host="node8").doc
    assert provenance.likeness(same, here) == (True, True, True, True)
    assert provenance.likeness(same, here) > provenance.likeness(other_cpu, here) > provenance.likeness(other_host, here)
    assert provenance.likeness(MachineProfile.synthetic().doc, here) == (False, False, False, False)


def test_the_default_bench_profile_is_the_shipped_one_measured_on_this_kind_of_machine(tmp_path, monkeypatch):
    import json
    import os
    import socket

    import perfmodel.machine
    from hpcnn.bench import host_profile
    here = dict(HERE, blas="SkylakeX")
    paths = {}
    for name, cpu, age in (("node7-cpu", "Other CPU", 0), ("node7-cpu-b", "Some CPU 9000", 100),
                           ("x-cpu", "Some CPU 9000", 50)):
        doc = _profile(host="node7" if name.startswith("node7") else "x", cpu=cpu).doc
        doc["measured_on"]["blas"] = "SkylakeX"
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
        os.utime(paths[name], (1e9 - age, 1e9 - age))
    monkeypatch.setattr(perfmodel.machine, "shipped_profiles", lambda: {n: str(p) for n, p in paths.items()})
    monkeypatch.setattr(socket, "gethostname", lambda: "node7")
    # this host's profiles first; among them the one of this CPU, although the other one is newer
    assert host_profile._default_profile(here) == str(paths["node7-cpu-b"])
    # no profile named after this host: the same choice among all CPU profiles (this CPU's, the newer of two)
    monkeypatch.setattr(socket, "gethostname", lambda: "elsewhere")
    assert host_profile._default_profile(dict(here, host="elsewhere")) == str(paths["x-cpu"])
