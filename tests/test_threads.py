"""Threads per rank: explicit counts win, then the environment, then the node's cores divided by its ranks."""
import pytest

from hpcnn.threads import THREAD_VARIABLES, choose_threads, thread_environment


def test_cores_are_divided_over_the_ranks_of_the_node():
    c = choose_threads(ranks_on_node=3, environ={}, cores=8)
    assert c.threads == 2 and not c.oversubscribed and "8 cores / 3 ranks" in c.reason


def test_more_ranks_than_cores_get_one_thread_and_say_so():
    c = choose_threads(ranks_on_node=4, environ={}, cores=2)
    assert c.threads == 1 and c.oversubscribed and "oversubscribed" in c.describe()


def test_the_environment_wins_over_the_default():
    c = choose_threads(ranks_on_node=1, environ={"OPENBLAS_NUM_THREADS": "3"}, cores=8)
    assert c.threads == 3 and "OPENBLAS_NUM_THREADS=3" in c.reason


def test_an_explicit_count_wins_over_the_environment():
    c = choose_threads(ranks_on_node=2, requested=5, requested_by="training.threads",
                       environ={"OMP_NUM_THREADS": "1"}, cores=4)
    assert c.threads == 5 and c.reason == "training.threads = 5" and not c.oversubscribed


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_environment_value_is_refused_by_name(value):
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS={value!r}"):
        choose_threads(environ={"OMP_NUM_THREADS": value}, cores=2)


def test_child_environments_carry_every_variable():
    env = thread_environment(3, environ={"PATH": "/bin"})
    assert env["PATH"] == "/bin" and all(env[v] == "3" for v in THREAD_VARIABLES)
