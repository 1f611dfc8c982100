"""Fixtures of the kernel tests."""
import pytest

from hpcnn.kernels.cpu import _workers


@pytest.fixture
def three_threads(monkeypatch):
    """Every call split into up to 3 parts (uneven: odd run and row counts), however small."""
    calls = []
    real = _workers.in_parallel

    def counted(work, chunks, flops, footprint=None):
        calls.append(chunks)
        return real(work, chunks, flops, footprint)
    monkeypatch.setattr(_workers, "thread_count", lambda: 3)
    monkeypatch.setattr(_workers, "_PARALLEL_FLOPS", 1)
    monkeypatch.setattr(_workers, "_RUN", 1000)
    monkeypatch.setattr(_workers, "in_parallel", counted)
    from hpcnn.kernels.cpu import norm
    monkeypatch.setattr(norm, "in_parallel", counted)
    return calls
