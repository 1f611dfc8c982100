"""The kernel-model fit: non-negative least squares on relative error, and the rejection of inflated samples."""
import numpy as np
import pytest

from perfmodel.fit import fit_linear, fit_robust


def test_fit_recovers_coefficients_from_exact_data():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        f = {"flops": float(rng.uniform(1e5, 1e9)), "bytes": float(rng.uniform(1e3, 1e8))}
        rows.append((f, 2e-6 + 3e-11 * f["flops"] + 5e-10 * f["bytes"]))
    coef, rms, med = fit_linear(rows, ("fixed", "flops", "bytes"))
    assert coef["fixed"] == pytest.approx(2e-6, rel=1e-6)
    assert coef["flops"] == pytest.approx(3e-11, rel=1e-6)
    assert coef["bytes"] == pytest.approx(5e-10, rel=1e-6)
    assert rms < 1e-9 and med < 1e-9


def test_robust_fit_rejects_descheduled_samples():
    # exact data plus a few samples inflated by whole scheduler time slices (8 ms, 16 ms)
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(40):
        f = {"flops": float(rng.uniform(1e5, 1e8)), "bytes": float(rng.uniform(1e3, 1e6))}
        rows.append((f, 2e-6 + 3e-11 * f["flops"] + 5e-10 * f["bytes"]))
    bad = [3, 11, 25]
    for i, extra in zip(bad, (8e-3, 16e-3, 8e-3)):
        rows[i] = (rows[i][0], rows[i][1] + extra)
    coef, rms, med, outlier = fit_robust(rows, ("fixed", "flops", "bytes"))
    assert [i for i, o in enumerate(outlier) if o] == bad
    assert coef["flops"] == pytest.approx(3e-11, rel=1e-6)
    assert coef["bytes"] == pytest.approx(5e-10, rel=1e-6)
    # the plain fit is dragged off by the same samples
    assert fit_linear(rows, ("fixed", "flops", "bytes"))[1] > 0.1


def test_robust_fit_keeps_fast_samples_that_fit_badly():
    # a 4x-slow but fast kernel (a 50 us excess cannot be a lost time slice) is kept
    rows = [({"flops": float(x)}, 1e-6 + 1e-12 * x) for x in np.geomspace(1e4, 1e8, 30)]
    rows[5] = (rows[5][0], 4 * rows[5][1] + 5e-5)
    *_, outlier = fit_robust(rows, ("fixed", "flops"))
    assert not any(outlier)


def test_fit_to_scattered_data_is_as_often_above_as_below():
    """Least squares on relative error alone under-predicts scattered data; the fit is rescaled to a median
    log ratio of zero, so its scale is that of the measurements."""
    rng = np.random.default_rng(4)
    rows = []
    for _ in range(201):
        f = {"flops": float(rng.uniform(1e6, 1e9))}
        rows.append((f, 3e-11 * f["flops"] * float(np.exp(rng.normal(0.0, 0.4)))))
    coef, _, _ = fit_linear(rows, ("flops",))
    ratios = [t / (coef["flops"] * f["flops"]) for f, t in rows]
    assert float(np.median(np.log(ratios))) == pytest.approx(0.0, abs=1e-9)
    assert coef["flops"] == pytest.approx(3e-11, rel=0.1)
