"""The CHAOS engine: sequential equality, accuracy with two workers, failing workers, bounded staleness."""
import threading
import time

import numpy as np
import pytest

from hpcnn import chaos, models, nn
from hpcnn.data.digits import Digits
from hpcnn.train import SGD, CosineLR, StepLR


@pytest.fixture(scope="module")
def digits():
    return Digits("train").arrays(), Digits("val").arrays()


def _sequential_sgd(model, loss, x, y, *, epochs, batch, schedule, momentum, weight_decay, seed):
    """The plain loop the deterministic mode must reproduce: forward, backward, SGD.step()."""
    opt = SGD(model, lr=schedule.lr_at(0), momentum=momentum, weight_decay=weight_decay)
    step = 0
    for epoch in range(epochs):
        order = chaos.epoch_order(len(x), epoch, seed)
        for lo in range(0, len(order), batch):
            idx = order[lo:lo + batch]
            out = model.forward(x[idx])
            loss.forward(out, y[idx])
            model.backward(loss.backward())
            opt.step(lr=schedule.lr_at(step))
            step += 1


def _run_with_timeout(fn, seconds):
    """Run fn() on a thread; fail (instead of hanging the suite) when it has not returned in time."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the engine did not return within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.parametrize("batch", [1, 3])
def test_one_deterministic_worker_equals_sequential_sgd_bit_for_bit(digits, batch):
    (x, y), _ = digits
    x, y = x[:150], y[:150]
    schedule = StepLR(0.05, step_size=40, gamma=0.5)
    kwargs = dict(epochs=2, batch=batch, schedule=schedule, momentum=0.5, weight_decay=1e-4, seed=3)
    engine_model = models.build("lenet", seed=1)
    reference = models.build("lenet", seed=1)
    history = chaos.fit(engine_model, nn.CrossEntropyLoss(), (x, y), deterministic=True, **kwargs)
    _sequential_sgd(reference, nn.CrossEntropyLoss(), x, y, **kwargs)
    assert [m["step"] for m in history] == ["layers", "layers"]
    for (name, p, _), (_, q, _) in zip(engine_model.parameters(), reference.parameters()):
        assert np.array_equal(p, q), f"{name} differs from sequential SGD"
    untrained = models.build("lenet", seed=1)
    assert not np.array_equal(engine_model[0].params["weight"], untrained[0].params["weight"])


def _odd_net(dtype):
    """Every layer the fused step knows, with strides, dilation, asymmetric padding and average pooling."""
    rng = np.random.default_rng(5)
    return nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=((1, 2), (0, 1)), rng=rng, dtype=dtype), nn.LeakyReLU(0.1),
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.Sequential(nn.Conv2d(5, 6, 3, stride=2, dilation=2, padding=2, bias=False, rng=rng, dtype=dtype),
                      nn.ReLU()),
        nn.AvgPool2d(2, padding=1), nn.Conv2d(6, 7, 1, rng=rng, dtype=dtype), nn.GlobalAvgPool(),
        nn.Linear(7, 9, rng=rng, dtype=dtype), nn.ReLU(), nn.Linear(9, 4, bias=False, rng=rng, dtype=dtype))


@pytest.mark.parametrize("optimizer", [dict(momentum=0.9, weight_decay=1e-3), dict(momentum=0.0, weight_decay=0.0)],
                         ids=["momentum-decay", "plain"])
@pytest.mark.parametrize("build", [lambda dt: models.build("lenet", dtype=dt, seed=2), _odd_net],
                         ids=["lenet", "odd"])
def test_fused_step_equals_layer_by_layer_step_float64(build, optimizer, digits):
    """Also plain SGD, whose fused update leaves rows with an all-zero gradient unwritten."""
    dtype = np.float64
    rng = np.random.default_rng(0)
    model = build(dtype)
    if isinstance(model[0], nn.Conv2d) and model[0].in_channels == 2:
        x = rng.standard_normal((40, 2, 11, 9))
        y = rng.integers(0, 4, 40)
    else:
        (x, y), _ = digits
        x, y = x[:40].astype(dtype), y[:40]
    kwargs = dict(epochs=2, threads=1, batch=2, lr=0.05, seed=1, **optimizer)
    fused, layers = build(dtype), build(dtype)
    hf = chaos.fit(fused, nn.CrossEntropyLoss(), (x, y), step="fused", **kwargs)
    hl = chaos.fit(layers, nn.CrossEntropyLoss(), (x, y), step="layers", **kwargs)
    assert hf[0]["step"] == "fused" and hl[0]["step"] == "layers"
    for (name, p, _), (_, q, _) in zip(fused.parameters(), layers.parameters()):
        err = np.max(np.abs(p - q)) / np.max(np.abs(q))
        assert err < 1e-10, f"{name}: fused and layer-by-layer steps differ by {err:.2e}"
    for a, b in zip(hf, hl):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10)
        assert a["train_accuracy"] == b["train_accuracy"]


@pytest.mark.parametrize("step", ["fused", "layers"])
def test_two_workers_reach_95_percent_on_digits(digits, step):
    train, val = digits
    epochs = 4 if step == "fused" else 2
    model = models.build("lenet", seed=0)
    seen = []
    schedule = CosineLR(0.05, epochs * len(train[1]))     # a decaying rate: Hogwild's last epoch is stable
    history = chaos.fit(model, nn.CrossEntropyLoss(), train, val, epochs=epochs, threads=2, schedule=schedule,
                        step=step, on_epoch=lambda e, m: seen.append((e, threading.current_thread() is threading.main_thread())))
    assert seen == [(e + 1, True) for e in range(epochs)]
    last = history[-1]
    assert last["threads"] == 2 and last["step"] == step
    assert sum(last["updates_per_worker"]) == len(train[1])
    assert min(last["updates_per_worker"]) > 0, "one worker did all the work"
    # the layer-by-layer step is ~20x slower per sample: fewer epochs, a looser bar (the fused step has the 95%)
    assert last["val_accuracy"] >= (0.95 if step == "fused" else 0.90), [m["val_accuracy"] for m in history]
    # the metrics describe the model the engine leaves behind
    loss, accuracy = chaos.ChaosEngine(model, nn.CrossEntropyLoss()).evaluate(*val)
    assert accuracy == last["val_accuracy"] and loss == pytest.approx(last["val_loss"])


class _Probe(nn.Module):
    """A layer without parameters that runs a callback in forward (on the worker's thread) and counts backwards."""

    def __init__(self, on_forward=None, on_backward=None):
        super().__init__()
        self.on_forward, self.on_backward = on_forward, on_backward

    def forward(self, x):
        if self.on_forward is not None:
            self.on_forward()
        return x

    def backward(self, dy):
        if self.on_backward is not None:
            self.on_backward()
        return dy


def _worker_index():
    name = threading.current_thread().name
    return int(name.rsplit("-", 1)[1]) if name.startswith("chaos-worker-") else 0


@pytest.mark.parametrize("staleness", [None, 1])
def test_a_failing_worker_stops_the_engine_with_its_message(digits, staleness):
    (x, y), _ = digits
    calls = []

    def explode():
        calls.append(1)
        if _worker_index() == 1 and len(calls) > 20:
            raise FloatingPointError("boom in the probe layer")

    model = nn.Sequential(_Probe(on_forward=explode), models.build("lenet"))
    t0 = time.perf_counter()
    with pytest.raises(chaos.ChaosWorkerError, match="worker 1 of 2 failed: FloatingPointError: boom in the probe"):
        _run_with_timeout(lambda: chaos.fit(model, nn.CrossEntropyLoss(), (x, y), epochs=3, threads=2,
                                            staleness=staleness), 60)
    assert time.perf_counter() - t0 < 30
    assert len(calls) < 3 * len(y), "the other worker went on training after the failure"


@pytest.mark.parametrize("staleness", [0, 2, None])
def test_bounded_staleness_keeps_workers_within_s_updates(digits, staleness):
    """An independent probe, first in the model: a worker's update k starts at its forward and is complete
    after the probe's backward (the last one). Worker 0 is slowed down; with a bound the fast worker
    must wait."""
    (x, y), _ = digits
    x, y = x[:120], y[:120]
    lock = threading.Lock()
    completed = [0, 0]
    leads = []

    def on_forward():
        me = _worker_index()
        if me == 0:
            time.sleep(0.002)
        with lock:
            leads.append(completed[me] - completed[1 - me])

    def on_backward():
        with lock:
            completed[_worker_index()] += 1

    model = nn.Sequential(_Probe(on_forward, on_backward), models.build("lenet"))
    engine = chaos.ChaosEngine(model, nn.CrossEntropyLoss(), threads=2, staleness=staleness)
    history = _run_with_timeout(lambda: engine.fit((x, y), epochs=1), 60)
    updates = history[0]["updates_per_worker"]
    assert sum(updates) == len(y)
    if staleness is None:
        assert max(leads) > 3, "the slowed worker did not fall behind; the test shows nothing"
    else:
        # the slow worker is not bounded from below; the fast one never starts more than s ahead
        assert max(leads) <= staleness, max(leads)
        assert history[0]["max_lead"] <= staleness
        assert history[0]["staleness_waits"] > 0
        assert min(updates) >= len(y) // 2 - staleness - 1


def test_the_clock_refuses_bad_bounds_and_wakes_waiters_on_abort():
    with pytest.raises(ValueError, match="staleness"):
        chaos.StalenessClock(2, -1)
    clock = chaos.StalenessClock(2, 0)
    clock.acquire(0, 1)
    clock.advance(0, 1)
    woke = []

    def wait():
        try:
            clock.acquire(0, 1)      # worker 1 has completed nothing: must wait
        except RuntimeError as exc:
            woke.append(str(exc))

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    assert t.is_alive()
    clock.abort()
    t.join(5)
    assert woke == ["another worker failed"]


def test_options_are_checked(digits):
    (x, y), _ = digits
    lenet = models.build("lenet")
    with pytest.raises(ValueError, match="deterministic mode runs one worker"):
        chaos.fit(lenet, nn.CrossEntropyLoss(), (x, y), epochs=1, threads=2, deterministic=True)
    with pytest.raises(ValueError, match="threads"):
        chaos.fit(lenet, nn.CrossEntropyLoss(), (x, y), epochs=1, threads=0)
    with pytest.raises(ValueError, match="step must be one of"):
        chaos.fit(lenet, nn.CrossEntropyLoss(), (x, y), epochs=1, step="fast")
    with pytest.raises(ValueError, match="4 inputs but 3 targets"):
        chaos.fit(lenet, nn.CrossEntropyLoss(), (x[:4], y[:3]), epochs=1)
    with pytest.raises(ValueError, match="label 10 is outside"):
        chaos.fit(lenet, nn.CrossEntropyLoss(), (x[:4], np.array([0, 1, 10, 2])), epochs=1)
    for bad in ({"lr": -1.0}, {"momentum": -0.5}):
        with pytest.raises(ValueError, match="non-negative"):
            chaos.fit(lenet, nn.CrossEntropyLoss(), (x, y), epochs=1, **bad)
    ignored = chaos.ChaosEngine(lenet, nn.CrossEntropyLoss(), threads=1)
    ignored.fit((x[:4], np.array([0, -100, 3, 2])), epochs=1)
    assert ignored.step == "layers" and "ignore_index" in ignored.fused_reason
    residual = nn.Sequential(nn.Flatten(), nn.Residual(nn.Linear(64, 64)), nn.Linear(64, 10))
    with pytest.raises(chaos.NotFusable, match="Residual"):
        chaos.fit(residual, nn.CrossEntropyLoss(), (x, y), epochs=1, step="fused")
    engine = chaos.ChaosEngine(residual, nn.CrossEntropyLoss(), threads=1)
    engine.fit((x[:10], y[:10]), epochs=1)
    assert engine.step == "layers" and "Residual" in engine.fused_reason


def test_mse_regression_runs_layer_by_layer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    w = np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
    y = x @ w
    model = nn.Linear(3, 1, rng=np.random.default_rng(1))
    history = chaos.fit(model, nn.MSELoss(), (x, y), (x, y), epochs=6, threads=2, lr=0.05)
    assert history[-1]["step"] == "layers" and history[-1]["train_accuracy"] is None
    assert history[-1]["val_loss"] < 1e-3
    np.testing.assert_allclose(model.params["weight"], w.T, atol=0.05)
