"""Fitting kernel models to measured times: non-negative least squares on relative error, rejecting inflated samples.

Each kernel model of a machine profile is t = fixed + flops*a + bytes*b [+ lowered*c] [+ thin*d]
[+ weights*e] [+ rows*f for convolutions and pooling] [+ runs*g for copies] (features from `perfmodel.machine.operation_features`). The fit rejects inflated
samples (`fit_robust`): on a machine whose cores are shared, a timed call whose process was
descheduled reads whole scheduler time slices (4, 8, 16 ... ms) instead of its kernel time; such a
sample is marked ``"outlier": true`` in the profile's table and ignored by the fit and the local
correction. `refit_profile` redoes the fits of a stored profile from its tables.
"""
import math
import time

import numpy as np

from .machine import OPERATIONS, row_features

__all__ = ["FEATURES", "fit_linear", "fit_robust", "refit_profile", "OUTLIER_FLOOR", "OUTLIER_SECONDS"]

# The features each operation's model is fitted on.
FEATURES = {op: ("fixed", "flops", "bytes", "lowered", "thin", "weights", "rows") if op.startswith("conv_") else
            ("fixed", "flops", "bytes", "thin") if op == "gemm" else
            ("fixed", "flops", "bytes", "rows") if op.startswith("pool_") else
            ("fixed", "bytes", "runs") if op == "copy" else ("fixed", "flops", "bytes") for op in OPERATIONS}


def fit_linear(rows, names):
    """Non-negative coefficients for t = sum coef_i * feature_i minimizing the relative error, then scaled so that
    the median of log(measured / fitted) is zero.

    rows: [(features dict, seconds)]. Returns ({name: coef}, relative RMS error, median |rel. error|).
    """
    from scipy.optimize import nnls
    a = np.array([[1.0 if n == "fixed" else f.get(n, 0.0) for n in names] for f, _ in rows])
    t = np.array([s for _, s in rows])
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls((a / scale) / t[:, None], np.ones(len(t)))
    coef = coef / scale
    # least squares on relative error shrinks the fit (an under-prediction costs at most 1, an over-prediction
    # without bound): with a scatter of 30% it under-predicts typical samples by about 10%; rescale it so that
    # it is as often above the measurements as below (median log ratio zero)
    fitted = a @ coef
    if (fitted > 0).all():
        coef = coef * math.exp(float(np.median(np.log(t / fitted))))
    rel = a @ coef / t - 1.0
    return dict(zip(names, coef.tolist())), float(np.sqrt(np.mean(rel ** 2))), float(np.median(np.abs(rel)))


# A sample slower than the fit by more than this (in natural-log units) beyond the typical scatter
# is taken as inflated: 2.5x at least, whatever the scatter ...
OUTLIER_FLOOR = math.log(2.5)
# ... and by at least this many seconds: a descheduled process loses a good part of a scheduler time
# slice (4 ms at 250 Hz), so a fast kernel that is merely badly fitted is not rejected.
OUTLIER_SECONDS = 1e-3


def fit_robust(rows, names, rounds=10):
    """`fit_linear` that rejects inflated samples.

    Only slow outliers are rejected (a descheduled process makes a call slower, never faster):
    a sample whose log(measured / fitted) exceeds the median of the kept samples by more than
    max(3 robust standard deviations (1.4826 MAD), log 2.5) and whose excess is at least 1 ms
    is dropped and the fit redone, until nothing changes. Returns (coef, relative RMS, median |rel. error| over the kept samples, a
    boolean list: True where the sample was rejected).
    """
    keep = np.ones(len(rows), bool)
    names = tuple(names)
    a = np.array([[1.0 if n == "fixed" else f.get(n, 0.0) for n in names] for f, _ in rows])
    t = np.array([s for _, s in rows])
    for _ in range(rounds):
        coef, rms, med = fit_linear([r for r, k in zip(rows, keep) if k], names)
        fitted = a @ np.array([coef[n] for n in names])
        r = np.log(np.maximum(t, 1e-12) / np.maximum(fitted, 1e-12))
        centre = float(np.median(r[keep]))
        spread = 1.4826 * float(np.median(np.abs(r[keep] - centre)))
        new = (r <= centre + max(3.0 * spread, OUTLIER_FLOOR)) | (t - fitted < OUTLIER_SECONDS)
        if (new == keep).all() or new.sum() < len(names) + 2:
            break
        keep = new
    return coef, rms, med, (~keep).tolist()


def refit_profile(doc):
    """Redo every kernel fit of a profile document from its stored tables (in place), with outlier
    rejection; the coefficients then cite the source "refit" (which names the measurement they come
    from). Returns {op: (samples, rejected)}."""
    out = {}
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for op in OPERATIONS:
        spec = doc["compute"][op]
        table = spec.get("table")
        if not table or not table.get("rows") or spec.get("form") != "linear":
            continue
        rows = [(row_features(op, row), float(row["seconds"])) for row in table["rows"]]
        measured = spec.get("source", table.get("source"))
        src = f"refit-{measured}"
        doc["sources"][src] = (f"refitted at {when} by perfmodel.fit.refit_profile from the samples stored in "
                               f"this profile (source {measured!r}), rejecting samples inflated by a descheduled "
                               f"process (see fit_robust)")
        coef, rms, med, outlier = fit_robust(rows, FEATURES[op])
        spec["coef"] = {k: {"value": v, "source": src} for k, v in coef.items()}
        spec["fit"] = {"samples": len(rows), "rejected": int(sum(outlier)), "relative_rms": rms,
                       "median_abs_relative": med}
        for row, bad in zip(table["rows"], outlier):
            row.pop("outlier", None)
            if bad:
                row["outlier"] = True
        out[op] = (len(rows), int(sum(outlier)))
    return out
