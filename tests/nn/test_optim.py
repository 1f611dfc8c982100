"""SGD against torch.optim.SGD over several steps; LR schedules against torch's schedulers and hand values."""
import math

import numpy as np
import pytest
import torch

from hpcnn import models
from hpcnn.train import SGD, ConstantLR, CosineLR, StepLR, WarmupLR, build_schedule

from tests.oracle import assert_close, seeded, to_torch

SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(lr=0.02, momentum=0.5, dampening=0.3, weight_decay=1e-3),
]


def _triples(rng, dtype):
    shapes = {"a.weight": (3, 4), "a.bias": (3,), "b.weight": (2, 3, 3, 3)}
    return [(name, rng.standard_normal(s).astype(dtype), np.zeros(s, dtype)) for name, s in shapes.items()]


@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_sgd_matches_torch(settings, dtype):
    rng = seeded(0)
    triples = _triples(rng, dtype)
    tparams = [torch.nn.Parameter(to_torch(p.copy())) for _, p, _ in triples]
    opt = SGD(triples, **settings)
    topt = torch.optim.SGD(tparams, **settings)
    for step in range(4):
        lr = settings["lr"] * (0.5 if step == 3 else 1.0)  # the last step uses a schedule's override
        for (_, _, g), tp in zip(triples, tparams):
            g[...] = rng.standard_normal(g.shape)
            tp.grad = to_torch(g.copy())
        opt.step(lr=lr if step == 3 else None)
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        for (name, p, _), tp in zip(triples, tparams):
            assert_close(p, tp.detach().numpy(), dtype, f"{name} after step {step}")


def test_step_param_updates_one_parameter_like_step():
    a = models.build("lenet", dtype=np.float64)
    b = models.build("lenet", dtype=np.float64)
    for model in (a, b):
        for _, _, g in model.parameters():
            g[...] = 0.25
    opt_a, opt_b = SGD(a, lr=0.1, momentum=0.9, weight_decay=1e-3), SGD(b, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        opt_a.step()
        for name, _, _ in reversed(list(b.parameters())):  # the CHAOS engine's order: last layer first
            opt_b.step_param(name)
    for (name, pa, _), (_, pb, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    untouched = models.build("lenet", dtype=np.float64)
    opt = SGD(untouched, lr=0.1)
    for _, _, g in untouched.parameters():
        g[...] = 1.0
    before = {n: p.copy() for n, p, _ in untouched.parameters()}
    opt.step_param("fc1.bias")
    changed = [n for n, p, _ in untouched.parameters() if not np.array_equal(p, before[n])]
    assert changed == ["fc1.bias"]
    with pytest.raises(ValueError, match="no parameter named 'nope'"):
        opt.step_param("nope")


def test_sgd_reads_module_parameters_afresh():
    model = models.build("lenet")
    opt = SGD(model, lr=0.1)
    model.astype(np.float64)  # rebinds every array
    for _, _, g in model.parameters():
        g[...] = 1.0
    before = model[0].params["bias"].copy()
    opt.step()
    np.testing.assert_allclose(model[0].params["bias"], before - 0.1)


def test_sgd_state_dict_round_trip():
    rng = seeded(2)
    t1, t2 = _triples(rng, np.float64), None
    t2 = [(n, p.copy(), g.copy()) for n, p, g in t1]
    opt1, opt2 = SGD(t1, lr=0.1, momentum=0.9), SGD(t2, lr=0.1, momentum=0.9)
    assert opt1.state_dict() == {}
    for _, _, g in t1:
        g[...] = 1.0
    opt1.step()
    state = opt1.state_dict()
    assert sorted(state) == ["momentum_buffer.a.bias", "momentum_buffer.a.weight", "momentum_buffer.b.weight"]
    assert all(type(v) is np.ndarray for v in state.values())
    opt2.load_state_dict(state)
    for (_, p, _), (_, q, g) in zip(t1, t2):
        q[...] = p
        g[...] = 1.0
    opt1.step()
    opt2.step()
    for (n, p, _), (_, q, _) in zip(t1, t2):
        np.testing.assert_array_equal(p, q, err_msg=n)
    with pytest.raises(ValueError, match="names no parameter"):
        opt2.load_state_dict({"momentum_buffer.zzz": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        opt2.load_state_dict({"momentum_buffer.a.bias": np.zeros(4)})


def test_sgd_refuses_bad_settings():
    with pytest.raises(ValueError, match="nesterov"):
        SGD([], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        SGD([], lr=-1)


# --- schedules -------------------------------------------------------------------------------------------------

def _torch_lrs(make_scheduler, steps, base_lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_lr_matches_torch():
    ours = StepLR(0.1, step_size=3, gamma=0.5)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose([ours.lr_at(s) for s in range(10)], theirs, rtol=1e-12)
    assert ours(7) == pytest.approx(0.1 * 0.25)


def test_cosine_lr_matches_torch_and_hand_values():
    ours = CosineLR(0.1, total_steps=8, min_lr=0.01)
    theirs = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=0.01), 9)
    np.testing.assert_allclose([ours.lr_at(s) for s in range(9)], theirs, rtol=1e-10)
    assert ours.lr_at(0) == pytest.approx(0.1)
    assert ours.lr_at(4) == pytest.approx(0.055)
    assert ours.lr_at(8) == ours.lr_at(100) == pytest.approx(0.01)


def test_warmup_matches_torch_linear_then_schedule():
    ours = WarmupLR(CosineLR(0.1, total_steps=6), warmup_steps=4, start_factor=0.25)

    def make(o):
        warm = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6)
        return torch.optim.lr_scheduler.SequentialLR(o, [warm, cos], milestones=[4])

    theirs = _torch_lrs(make, 10)
    np.testing.assert_allclose([ours.lr_at(s) for s in range(10)], theirs, rtol=1e-10, atol=1e-15)
    zero_start = WarmupLR(ConstantLR(0.2), warmup_steps=4)
    assert [zero_start(s) for s in range(6)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])


def test_build_schedule():
    s = build_schedule({"name": "cosine", "base_lr": 0.1, "total_steps": 10, "warmup_steps": 2})
    assert isinstance(s, WarmupLR) and s(1) == pytest.approx(0.05) and s(2) == pytest.approx(0.1)
    assert s(12) == pytest.approx(0.0)
    s = build_schedule({"name": "step", "base_lr": 1.0, "step_size": 2})
    assert [s(i) for i in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert build_schedule({"name": "constant", "base_lr": 0.3})(99) == 0.3
    with pytest.raises(ValueError, match="'name' must be one of constant, step, cosine"):
        build_schedule({"name": "linear", "base_lr": 0.1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) gama.*valid keys: base_lr, step_size, gamma"):
        build_schedule({"name": "step", "base_lr": 0.1, "step_size": 2, "gama": 0.5})
    with pytest.raises(ValueError, match=r"missing key\(s\) total_steps"):
        build_schedule({"name": "cosine", "base_lr": 0.1})
    with pytest.raises(ValueError, match="step must be non-negative"):
        StepLR(0.1, 2).lr_at(-1)
    assert math.isclose(CosineLR(1.0, 4).lr_at(2), 0.5)


ADAM_SETTINGS = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("adam", dict(lr=0.01, weight_decay=1e-3, amsgrad=True)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.03, betas=(0.5, 0.9), eps=1e-7, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=5e-2, amsgrad=True)),
]


@pytest.mark.parametrize("name,settings", ADAM_SETTINGS,
                         ids=lambda s: s if isinstance(s, str) else ",".join(f"{k}={v}" for k, v in s.items()))
def test_adam_matches_torch(name, settings, dtype):
    from hpcnn.train import Adam, AdamW
    rng = seeded(1)
    triples = _triples(rng, dtype)
    tparams = [torch.nn.Parameter(to_torch(p.copy())) for _, p, _ in triples]
    ours, theirs = {"adam": (Adam, torch.optim.Adam), "adamw": (AdamW, torch.optim.AdamW)}[name]
    opt = ours(triples, **settings)
    topt = theirs(tparams, foreach=False, **settings)
    for step in range(6):
        lr = settings["lr"] * (0.3 if step >= 4 else 1.0)  # later steps use a schedule's override
        for (_, _, g), tp in zip(triples, tparams):
            g[...] = rng.standard_normal(g.shape) * (3.0 if step % 2 else 0.2)
            tp.grad = to_torch(g.copy())
        opt.step(lr=lr if step >= 4 else None)
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        for (pname, p, _), tp in zip(triples, tparams):
            assert_close(p, tp.detach().numpy(), dtype, f"{name} {pname} after step {step}")
    # the state has torch's names and values
    tstate = {pname: topt.state[tp] for (pname, _, _), tp in zip(triples, tparams)}
    sd = opt.state_dict()
    for pname, st in tstate.items():
        assert int(sd[f"step.{pname}"]) == int(st["step"])
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if settings.get("amsgrad") else ()):
            assert_close(sd[f"{key}.{pname}"], st[key].numpy(), dtype, f"{key}.{pname}")


def test_adam_state_round_trip_continues_exactly():
    from hpcnn.train import AdamW
    rng = seeded(2)
    a, b = _triples(rng, np.float64), None
    b = [(n, p.copy(), g.copy()) for n, p, g in a]
    oa, ob = AdamW(a, lr=0.01, amsgrad=True), AdamW(b, lr=0.01, amsgrad=True)
    grads = [[rng.standard_normal(p.shape) for _, p, _ in a] for _ in range(4)]
    for k in range(4):
        for (_, _, g), new in zip(a, grads[k]):
            g[...] = new
        oa.step()
    for k in range(4):
        for (_, _, g), new in zip(b, grads[k]):
            g[...] = new
        if k == 2:  # a fresh optimizer from the saved state continues the same run
            state = ob.state_dict()
            ob = AdamW(b, lr=0.01, amsgrad=True)
            ob.load_state_dict(state)
        ob.step()
    for (n, pa, _), (_, pb, _) in zip(a, b):
        np.testing.assert_array_equal(pa, pb, err_msg=n)


def test_optimizer_state_refuses_what_does_not_fit():
    from hpcnn.train import Adam
    rng = seeded(3)
    triples = _triples(rng, np.float64)
    opt = Adam(triples, lr=0.01)
    for _, _, g in triples:
        g[...] = 1.0
    opt.step()
    good = opt.state_dict()
    with pytest.raises(ValueError, match="'momentum_buffer.a.bias' is not state of Adam"):
        Adam(triples).load_state_dict({**good, "momentum_buffer.a.bias": np.zeros(3)})
    with pytest.raises(ValueError, match="'exp_avg.nope' names no parameter"):
        Adam(triples).load_state_dict({**good, "exp_avg.nope": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'exp_avg.a.bias' has shape \(4,\), the parameter has \(3,\)"):
        Adam(triples).load_state_dict({**good, "exp_avg.a.bias": np.zeros(4)})
    partial = {k: v for k, v in good.items() if k != "exp_avg_sq.a.weight"}
    with pytest.raises(ValueError, match="the state of 'a.weight' lacks exp_avg_sq"):
        Adam(triples).load_state_dict(partial)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        Adam(triples, betas=(0.9, 1.0))


def test_adam_on_the_emulated_gpu_equals_the_host():
    from hpcnn.backend import open_device, to_host
    from hpcnn.train import AdamW
    dev = open_device("emulated-gpu")
    rng = seeded(4)
    host = _triples(rng, np.float64)
    for _, _, g in host:
        g[...] = rng.standard_normal(g.shape)
    device = [(n, dev.put(p), dev.put(g)) for n, p, g in host]
    oh, od = AdamW(host, lr=0.01, amsgrad=True), AdamW(device, lr=0.01, amsgrad=True)
    for _ in range(3):
        oh.step()
        od.step()
    for (n, ph, _), (_, pd, _) in zip(host, device):
        np.testing.assert_allclose(to_host(pd), ph, rtol=1e-12, err_msg=n)
    state = od.state_dict()
    assert all(type(v).__module__ != "numpy" for k, v in state.items() if not k.startswith("step."))
