"""Kernel time models of a machine profile: the operations, their features, the fits and their local correction.

The model of one operation (OP, one of ``OPERATIONS``), a profile's ``compute.OP``::

    t = fixed + sum_i coef_i * feature_i                       ("linear")
    t = fixed + max(flops * per_flop, bytes * per_byte)         ("roofline", for published GPUs)

with the features of ``operation_features`` (FLOPs, bytes moved, and for convolutions the
lowered-matrix bytes, the "thin" term for GEMMs with a small dimension and the filter bytes
"weights" that every call walks whatever its block size; the layout terms: "rows" of convolutions
and pooling, the rows along the contiguous last axis each call walks, and "runs" of copies, the
contiguous pieces a halo slab is made of: a split along the last axis makes many short ones). A measured profile
also keeps its samples ("table": feature dicts with measured seconds); the prediction for an
unseen shape is then the linear fit times a local correction: the geometric mean of
measured/fitted ratios of the nearest samples in log(GEMM dimensions) space (and, for convolutions
whose samples record their "rows", log of the row length along the contiguous axis), damped towards 1
with distance. Near measured shapes this is table interpolation; far from them it is the
fitted efficiency curve. The ratios of the table use the same features as the prediction (a
row's "thin" and "weights" terms are rebuilt from its "dims" where the row does not store them), and rows marked
``"outlier": true`` by the fit (samples inflated by a descheduled process, see
``perfmodel.fit.fit_linear``) are kept for the record but take no part in the correction.
"""
import math

import numpy as np

from hpcnn.kernels.cpu.layout import lines_layout

from .profile_format import ProfileError, read_quantity

__all__ = ["OPERATIONS", "operation_features", "row_features", "KernelModel"]

# Operations a profile models; a profile must model all of them.
OPERATIONS = (
    "conv_forward", "conv_backward_data", "conv_backward_filter",
    "pool_forward", "pool_backward",
    "batchnorm_forward", "batchnorm_backward",
    "elementwise",      # relu / leaky relu / residual add / upsample, one pass over the data
    "copy",             # packing halos and shuffle blocks, concatenation (contiguous or in strided runs)
    "gemm",             # linear layers
)


def operation_features(op, *, n=1, c=1, k=1, in_spatial=(), kernel=(), out_spatial=(), itemsize=4,
                       m=0, gemm_k=0, gemm_n=0, nbytes=0, runs=1):
    """The features the time models use for one kernel call on local shapes.

    conv_*: x (n, c, *in_spatial), w (k, c, *kernel), y (n, k, *out_spatial)
    pool_*: x (n, c, *in_spatial) -> y (n, c, *out_spatial) with window `kernel`
    batchnorm_*, elementwise: x (n, c, *in_spatial)
    gemm: (m, gemm_k) @ (gemm_k, gemm_n);  copy: `nbytes` in `runs` contiguous pieces (1: one block; a
    slab of a few rows along the contiguous last axis of (n, c, *S) is n * c * prod(S[:-1]) runs)
    Returns a dict with "flops", "bytes", "lowered" (conv only), "rows" (conv: rows of the lowered matrix;
    pooling: output rows along the contiguous axis, each a separate inner loop), "runs" (copy) and the log-size coordinates "dims" used by
    the local correction.
    """
    s_in = math.prod(in_spatial)
    s_out = math.prod(out_spatial)
    taps = math.prod(kernel)
    if op.startswith("conv_"):
        flops = 2.0 * n * k * c * taps * s_out
        x_b, y_b, w_b = n * c * s_in * itemsize, n * k * s_out * itemsize, k * c * taps * itemsize
        lowered = float(n * c * taps * s_out * itemsize)   # im2col-style column matrix
        # "thin": GEMMs with a small dimension (few channels, or few filters) run far below peak
        # "weights": the filter bytes each call walks (and backward-filter writes) whatever the batch and
        # block: it dominates calls on small blocks with many channels (halo pieces, late layers)
        # "rows": the rows the lowering copies, one per (sample, channel, tap, output line along the outer
        # dims), as the CPU kernels lay the block out (hpcnn.kernels.cpu.layout exchanges a thin last axis
        # with a long one; what stays short along it is many short lines: the layout term)
        return {"flops": flops, "bytes": float(x_b + y_b + w_b), "lowered": lowered,
                "thin": flops / max(min(k, c * taps), 1), "weights": float(w_b),
                "rows": float(n * c * taps * math.prod(lines_layout(out_spatial)[:-1])),
                "dims": (n * s_out, k, c * taps, taps)}
    if op.startswith("pool_"):
        # "rows": the kernels loop over output rows of the last (contiguous) axis; each row pays a start-up
        # (window bounds, loop set-up) that 3-D volumes with short rows feel most
        return {"flops": float(n * c * s_out * taps), "bytes": float(n * c * (s_in + s_out) * itemsize),
                "rows": float(n * c * math.prod(out_spatial[:-1])),
                "dims": (n * c * s_out, taps, n * c * s_in)}
    if op.startswith("batchnorm_"):
        e = n * c * s_in
        return {"flops": 4.0 * e, "bytes": 2.0 * e * itemsize, "dims": (e, c)}
    if op == "elementwise":
        e = n * c * s_in
        return {"flops": float(e), "bytes": 2.0 * e * itemsize, "dims": (e,)}
    if op == "copy":
        # "runs": each contiguous piece costs a start-up (a halo slab along the last axis is many short ones)
        runs = max(int(runs), 1)
        return {"flops": 0.0, "bytes": float(nbytes), "runs": float(runs),
                "dims": (max(nbytes, 1), max(nbytes / runs, 1.0))}
    if op == "gemm":
        flops = 2.0 * m * gemm_k * gemm_n
        return {"flops": flops, "thin": flops / max(min(m, gemm_k, gemm_n), 1),
                "bytes": float((m * gemm_k + gemm_k * gemm_n + m * gemm_n) * itemsize),
                "dims": (max(m, 1), max(gemm_k, 1), max(gemm_n, 1))}
    raise ProfileError(f"unknown operation {op!r}: expected one of {', '.join(OPERATIONS)}")


def row_features(op, row, itemsize=4):
    """The features of a stored table row (a profile's "table" of measured samples), with the
    "thin" term of convolutions and GEMMs and the "weights" term of convolutions rebuilt from the
    row's "dims" where the row lacks them, and the rows of profiles older than the layout terms read as
    what they timed (copies: one contiguous run; pooling: no per-row term)."""
    if op == "copy" and len(row["dims"]) == 1:
        return {**row, "runs": 1.0, "dims": [row["dims"][0], row["dims"][0]]}
    if not (op.startswith("conv_") or op == "gemm"):
        return row
    dims = row["dims"]
    out = dict(row)
    if "thin" not in out:
        small = min(dims[1], dims[2]) if op.startswith("conv_") else min(dims)
        out["thin"] = float(row["flops"]) / max(small, 1)
    if op.startswith("conv_") and "weights" not in out:
        out["weights"] = float(dims[1] * dims[2] * itemsize)
    return out


class KernelModel:
    """Time of one operation from its features (see the module docstring for the forms and the correction)."""

    _CORRECTION_NEIGHBOURS = 4
    _CORRECTION_RADIUS = 1.0     # in natural-log units of the GEMM dimensions

    def __init__(self, op, spec):
        self.op = op
        self.spec = spec
        where = f"compute.{op}"
        self.form = spec.get("form")
        if self.form not in ("linear", "roofline"):
            raise ProfileError(f"{where}.form: expected 'linear' or 'roofline', received {self.form!r}")
        coef = spec.get("coef")
        if not isinstance(coef, dict) or "fixed" not in coef:
            raise ProfileError(f"{where}.coef: expected a dict with at least 'fixed'")
        self.coef = {name: read_quantity(q, f"{where}.coef.{name}") for name, q in coef.items()}
        if self.form == "roofline" and not {"per_flop", "per_byte"} <= set(self.coef):
            raise ProfileError(f"{where}.coef: the roofline form needs 'per_flop' and 'per_byte'")
        self._table = None
        table = spec.get("table")
        rows = [row for row in table["rows"] if not row.get("outlier")] if table else []
        # convolution samples that record their lowered rows are placed by their row length too, so that a thin
        # piece along W is corrected by its like and not by a piece along H of the same size
        self._layout = op.startswith("conv_") and bool(rows) and all("rows" in row for row in rows)
        if rows:
            dims = np.array([self._point(row_features(op, row)) for row in rows])
            base = np.array([self._base(row_features(op, row)) for row in rows])
            measured = np.array([float(row["seconds"]) for row in rows])
            self._table = (dims, np.log(np.maximum(measured, 1e-9) / np.maximum(base, 1e-9)))

    def _point(self, features):
        """The sample's place for the local correction: log of its "dims" (and of its row length)."""
        dims = [float(v) for v in features["dims"]]
        if self._layout:
            dims.append(dims[0] * dims[2] / max(float(features["rows"]), 1.0))   # the line length
        return np.log(np.maximum(np.asarray(dims), 1.0))

    def _base(self, features):
        c = self.coef
        if self.form == "roofline":
            return c["fixed"] + max(features["flops"] * c["per_flop"], features["bytes"] * c["per_byte"])
        t = c["fixed"]
        for name, value in c.items():
            if name != "fixed":
                t += value * features.get(name, 0.0)
        return t

    def predict(self, features):
        """Seconds for one call with these features (from `operation_features`)."""
        t = self._base(features)
        if self._table is None:
            return t
        dims, log_ratio = self._table
        point = self._point(features)
        if point.shape[0] != dims.shape[1]:
            return t
        dist = np.sqrt(((dims - point) ** 2).sum(axis=1))
        nearest = np.argsort(dist)[: self._CORRECTION_NEIGHBOURS]
        w = 1.0 / (dist[nearest] + 0.05)
        local = float((w * log_ratio[nearest]).sum() / w.sum())
        damping = math.exp(-(float(dist[nearest].min()) / self._CORRECTION_RADIUS) ** 2)
        return t * math.exp(local * damping)
