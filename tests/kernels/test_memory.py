"""malloc keeps large arrays for reuse (hpcnn.kernels.cpu._memory): a step's arrays fault in no pages again."""
import resource

import numpy as np
import pytest

from hpcnn.kernels.cpu import _memory


def _faults_of_second_allocation(nbytes, release=False):
    """Minor page faults of allocating and filling an array of `nbytes` right after one the same size was freed
    (and, with `release`, malloc's free pages handed back)."""
    a = np.empty(nbytes // 4, np.float32)
    a.fill(1.0)
    del a
    if release:
        assert _memory.release_free_pages()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.empty(nbytes // 4, np.float32)
    b.fill(1.0)
    del b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_freed_large_array_is_reused_without_page_faults_until_its_pages_are_released():
    said = _memory.keep_freed_arrays({})              # as hpcnn's entry points do, in a plain environment
    if _memory.mmap_threshold() == _memory.GLIBC_MMAP_THRESHOLD_MAX:
        pytest.skip(f"no mallopt here: {said}")
    size = 64 << 20                                   # above glibc's 32 MiB bound: mapped afresh by default
    assert _faults_of_second_allocation(size) < 16    # a 64 MiB array has 16384 pages of 4 KiB
    assert _faults_of_second_allocation(size, release=True) > 16
    assert said == _memory.policy() and "1 GiB" in said and "HPCNN_MALLOC=system" in said
    assert _memory.mmap_threshold() == 1 << 30


@pytest.mark.parametrize("environ, said", [({"HPCNN_MALLOC": "system"}, "HPCNN_MALLOC=system"),
                                           ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
                                           ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES")])
def test_the_users_malloc_settings_are_left_alone(environ, said):
    threshold, policy = _memory._apply(environ)
    assert threshold == _memory.GLIBC_MMAP_THRESHOLD_MAX and said in policy and "as configured" in policy


def test_the_hpcnn_command_sets_it_at_start_up(monkeypatch, capsys):
    from hpcnn.cli import main
    calls = []
    monkeypatch.setattr(_memory, "keep_freed_arrays", lambda environ=None: calls.append(environ) or "said")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert calls == [None]
