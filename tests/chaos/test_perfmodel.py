"""perfmodel.chaos: the CHAOS time model's formula, its limits, and its inputs from engine metrics."""
import pytest

from perfmodel import chaos as model


def _costs(**kw):
    base = dict(samples=1000, sample_seconds=40e-6, gil_seconds=1e-6, serial_seconds=0.01, cores=2,
                batch=1, thread_seconds=1e-4, contention=0.0)
    base.update(kw)
    return model.ChaosCosts(**base)


def test_one_worker_is_samples_times_cost():
    c = _costs()
    assert model.train_seconds(c, 1) == pytest.approx(1000 * 40e-6)
    assert model.epoch_seconds(c, 1) == pytest.approx(1000 * 40e-6 + 0.01)
    assert model.predict(c, 1)["speedup"] == pytest.approx(1.0)


def test_two_workers_pay_the_tail_and_the_thread_start():
    c = _costs()
    expected = 1000 * 20e-6 + 40e-6 / 2 + 2 * 1e-4
    assert model.train_seconds(c, 2) == pytest.approx(expected)
    assert model.predict(c, 2)["speedup"] == pytest.approx(0.04 / expected)


def test_the_gil_caps_the_speedup_at_c_over_g():
    c = _costs(gil_seconds=30e-6, thread_seconds=0.0)
    assert model.predict(c, 2)["speedup"] == pytest.approx((1000 * 40e-6) / (1000 * 30e-6 + 20e-6))


def test_more_threads_than_cores_gain_nothing_and_contention_slows_each_worker():
    c = _costs(thread_seconds=0.0)
    assert model.train_seconds(c, 4) == pytest.approx(model.train_seconds(c, 2))
    assert model.train_seconds(_costs(), 4) > model.train_seconds(_costs(), 2)   # only more threads to start
    slow = _costs(thread_seconds=0.0, contention=0.1)
    assert model.train_seconds(slow, 2) == pytest.approx(1000 * 40e-6 * 1.1 / 2 + 40e-6 * 1.1 / 2)
    with pytest.raises(ValueError):
        model.train_seconds(c, 0)


def test_costs_come_from_one_worker_metrics():
    epochs = [dict(threads=1, samples=1000, busy_seconds=b, kernel_seconds=b - 0.002, seconds=b + 0.01 + 0.001,
                   train_seconds=b + 0.001) for b in (0.041, 0.040, 0.060)]
    c = model.costs_from_metrics(epochs, cores=2)
    assert c.sample_seconds == pytest.approx(41e-6)
    assert c.gil_seconds == pytest.approx(2e-6)
    assert c.serial_seconds == pytest.approx(0.01)
    assert model.costs_from_metrics(epochs, cores=2, gil_seconds=5e-6).gil_seconds == 5e-6
    with pytest.raises(ValueError, match="one-worker"):
        model.costs_from_metrics([dict(epochs[0], threads=2)], cores=2)
