"""Compare hpcnn against PyTorch (the test oracle): forward output and every gradient, explicit tolerances."""
import numpy as np
import torch

__all__ = ["TOL", "assert_close", "to_torch", "seeded", "check_against_torch"]

# What correct means: every output and gradient agrees with PyTorch to a relative tolerance of 1e-4 in float32
# and 1e-10 in float64 (max-abs error over the largest magnitude of the expected array; see assert_close).
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def seeded(seed=0):
    return np.random.default_rng(seed)


def to_torch(a, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a))
    if requires_grad:
        t.requires_grad_(True)
    return t


def assert_close(actual, expected, dtype, what="", scale=None):
    """Max-abs error relative to the largest magnitude of `expected` (or `scale`) within TOL[dtype]."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    ref = scale if scale is not None else max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)), initial=0.0))
    tol = TOL[np.dtype(dtype).type]
    assert err <= tol * ref, f"{what}: max abs error {err:.3e} > {tol:g} * {ref:.3e}"


def check_against_torch(hp_forward, hp_backward, torch_fn, inputs, dtype, what="", grad_names=None,
                        hp_grads=None, torch_params=()):
    """Run one op in hpcnn and in PyTorch on the same data and compare output and all gradients.

    hp_forward(*inputs) -> y; hp_backward(dy) -> dx (gradient w.r.t. inputs[0]);
    torch_fn(*torch_inputs) -> y; hp_grads() -> dict of parameter gradients, compared with
    the .grad of `torch_params` (a dict name -> torch tensor with requires_grad).
    """
    rng = seeded(1)
    y = hp_forward(*inputs)
    t_inputs = [to_torch(a, requires_grad=(i == 0)) for i, a in enumerate(inputs)]
    ty = torch_fn(*t_inputs)
    assert_close(y, ty.detach().numpy(), dtype, f"{what} forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = hp_backward(dy)
    ty.backward(to_torch(dy))
    assert_close(dx, t_inputs[0].grad.numpy(), dtype, f"{what} dx")
    if hp_grads is not None:
        grads = hp_grads()
        for name, tp in dict(torch_params).items():
            assert_close(grads[name], tp.grad.numpy(), dtype, f"{what} d{name}")
    return y, dx
