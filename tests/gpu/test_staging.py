"""MPI buffers for device arrays: CUDA-aware detection, no-ops for host arrays, staging on a GPU."""
import numpy as np
import pytest

from hpcnn.parallel import staging as db


class _FakeMPI:
    def __init__(self, answer):
        self.answer = answer

    def Query_cuda_support(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False), ("true", True), ("off", False)])
def test_override_wins(value, expected):
    env = {"HPCNN_CUDA_AWARE": value, "MPICH_GPU_SUPPORT_ENABLED": "1"}
    assert db.cuda_aware(env, mpi=_FakeMPI(not expected)) is expected


def test_bad_override_is_refused():
    with pytest.raises(ValueError, match="HPCNN_CUDA_AWARE"):
        db.cuda_aware({"HPCNN_CUDA_AWARE": "maybe"}, mpi=_FakeMPI(True))


def test_mpi_query_comes_before_launcher_switches():
    assert db.cuda_aware({"OMPI_MCA_opal_cuda_support": "true"}, mpi=_FakeMPI(False)) is False
    assert db.cuda_aware({}, mpi=_FakeMPI(True)) is True


@pytest.mark.parametrize("env, expected", [({"MPICH_GPU_SUPPORT_ENABLED": "1"}, True),
                                           ({"OMPI_MCA_opal_cuda_support": "true"}, True),
                                           ({"OMPI_MCA_opal_cuda_support": "0"}, False), ({}, False)])
def test_launcher_switches_when_mpi_cannot_say(env, expected):
    assert db.cuda_aware(env, mpi=_FakeMPI(NotImplementedError())) is expected
    assert db.cuda_aware(env, mpi=object()) is expected


def test_host_arrays_pass_through():
    a = np.arange(6.0).reshape(2, 3)
    assert db.prepare_sends([a])[0] is a
    assert db.prepare_recvs([a])[0] is a
    assert db.prepare_inout(a) is a
    assert db.finish_recv(a, a) is a
    db.finish_send(a)
    db.synchronize([a])
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("aware", ["0", "1"])
def test_gpu_round_trip(monkeypatch, aware):
    """Staged or not, what is sent is the array's content and what is received lands in the array."""
    import cupy
    monkeypatch.setenv("HPCNN_CUDA_AWARE", aware)
    monkeypatch.setattr(db, "_decided", None)
    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4) * 2
    send, = db.prepare_sends([a])
    assert (send is a) == (aware == "1")
    np.testing.assert_array_equal(cupy.asnumpy(cupy.asarray(send)), np.arange(12).reshape(3, 4) * 2)
    db.finish_send(send)
    b = cupy.zeros((3, 4), cupy.float32)
    recv, = db.prepare_recvs([b])
    recv[...] = 7 if aware == "0" else cupy.full((3, 4), 7, cupy.float32)
    db.finish_recv(b, recv)
    np.testing.assert_array_equal(b.get(), np.full((3, 4), 7, np.float32))
    inout = db.prepare_inout(a)
    np.testing.assert_array_equal(cupy.asnumpy(cupy.asarray(inout)), a.get())
    db.finish_recv(a, inout)
    monkeypatch.setattr(db, "_decided", None)
