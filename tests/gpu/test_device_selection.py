"""Which GPU a rank picks: the node-local rank from the launcher's environment, modulo the device count."""
import pytest

from hpcnn.backend import LOCAL_RANK_VARIABLES, node_local_rank, select_gpu_for_rank


@pytest.mark.parametrize("name", LOCAL_RANK_VARIABLES)
def test_each_launcher_variable_is_read(name):
    assert node_local_rank({name: "3"}) == 3


def test_no_variable_means_rank_zero():
    assert node_local_rank({"PMI_RANK": "5", "OMPI_COMM_WORLD_RANK": "5"}) == 0


def test_slurm_wins_over_the_mpi_launchers():
    env = {"SLURM_LOCALID": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "2", "MPI_LOCALRANKID": "3", "PMI_LOCAL_RANK": "4"}
    assert node_local_rank(env) == 1
    del env["SLURM_LOCALID"]
    assert node_local_rank(env) == 2
    del env["OMPI_COMM_WORLD_LOCAL_RANK"]
    assert node_local_rank(env) == 3


def test_empty_values_are_skipped():
    assert node_local_rank({"SLURM_LOCALID": "", "PMI_LOCAL_RANK": "2"}) == 2


@pytest.mark.parametrize("value", ["x", "-1", "1.5"])
def test_a_bad_value_names_the_variable(value):
    with pytest.raises(ValueError, match="OMPI_COMM_WORLD_LOCAL_RANK"):
        node_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": value})


@pytest.mark.parametrize("local, count, expected", [(0, 1, 0), (3, 1, 0), (5, 4, 1), (2, 8, 2), (7, 2, 1)])
def test_ranks_share_gpus_round_robin(local, count, expected):
    assert select_gpu_for_rank(device_count=count, environ={"SLURM_LOCALID": str(local)}) == expected


def test_no_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_gpu_for_rank(device_count=0, environ={})


@pytest.mark.gpu
def test_select_makes_the_device_current(monkeypatch):
    import cupy
    monkeypatch.setenv("SLURM_LOCALID", "0")
    index = select_gpu_for_rank()
    assert cupy.cuda.runtime.getDevice() == index == 0
