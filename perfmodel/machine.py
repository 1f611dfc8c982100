"""A machine profile: kernel time models, alpha-beta links, collective models, memory; every number with its source.

The profile is a JSON document (``MachineProfile.load`` / ``save`` / ``validate``)::

    {
      "format": "hpcnn-machine-profile", "version": 1,
      "name": "...", "description": "...", "backend": "cpu" | "gpu", "dtype": "float32",
      "sources": {"KEY": "full citation or 'measured on HOST at TIME by hpcnn calibrate ...'"},
      "ranks_per_node":  {"value": 4, "source": "KEY"},
      "memory_per_rank": {"value": BYTES, "source": "KEY"},
      "compute": {OP: KERNEL_MODEL, ...},
      "links": {"intra_node": {"alpha": Q, "beta": Q}, "inter_node": {"alpha": Q, "beta": Q}},
      "collectives": {
        "allreduce": {"gamma": Q, "small_bytes": Q, "ring_bytes": Q,
                      "measured": {"source": "KEY", "ranks": {"2": [[bytes, seconds], ...]}}},
        "alltoall":  {"small_bytes": Q, "measured": {...}}
      },
      "overlap": {"gradient_allreduce": Q, "halo": Q},
      "layer_calls": {"source": "KEY", "kinds": {KIND: {"forward": {"fixed": Q, "per_byte": Q},
                                                        "backward": {"fixed": Q, "per_byte": Q}}}},
      "fresh_memory": {"per_byte": Q, "threshold_bytes": Q}
    }

where Q is ``{"value": number, "source": KEY}``. The rule checked by ``validate``: every number in
the document sits inside an object that carries a ``source`` naming an entry of ``sources``.

Compute model of one operation (OP is one of ``OPERATIONS``) ::

    t = fixed + sum_i coef_i * feature_i                       ("linear")
    t = fixed + max(flops * per_flop, bytes * per_byte)         ("roofline", for published GPUs)

with the features of ``operation_features`` (FLOPs, bytes moved, and for convolutions the
lowered-matrix bytes, the "thin" term for GEMMs with a small dimension and the filter bytes
"weights" that every call walks whatever its block size). A measured profile
also keeps its samples ("table": feature dicts with measured seconds); the prediction for an
unseen shape is then the linear fit times a local correction: the geometric mean of
measured/fitted ratios of the nearest samples in log(GEMM dimensions) space, damped towards 1
with distance. Near measured shapes this is table interpolation; far from them it is the
fitted efficiency curve. The ratios of the table use the same features as the prediction (a
row's "thin" and "weights" terms are rebuilt from its "dims" where the row does not store them), and rows marked
``"outlier": true`` by the fit (samples inflated by a descheduled process, see
``perfmodel.calibrate.fit_linear``) are kept for the record but take no part in the correction.

Layer calls (optional "layer_calls"; absent = zero): what one forward or backward call of a
layer costs on top of its kernels, as the distributed layer path runs it (Python, input checks,
the halo bookkeeping, allocating its outputs, data not in cache)::

    t_call(kind, direction) = fixed + per_byte * (local input + output + parameter bytes)

per layer kind (``perfmodel.layers.KINDS``) and direction. `hpcnn calibrate` measures it by timing
each kind's distributed layer on one rank on a tiny and a large shape and subtracting the kernel
models' prediction for the same shapes (``perfmodel.calibrate.measure_layer_calls``).

Fresh memory (optional "fresh_memory"; absent = zero, as on GPUs, whose allocations come from
a pool): an array at least `threshold_bytes` large is mapped from the operating system on every
allocation (glibc's malloc serves requests above its largest mmap threshold, 32 MiB, with mmap,
and returns them on free), so the first write to each page faults. A layer pays it for its output
in forward and for its input gradient in backward::

    "fresh_memory": {"per_byte": Q, "threshold_bytes": Q}

`hpcnn calibrate` measures per_byte as the time to allocate and fill a 48 and a 96 MiB array less
the time to fill one allocated before (``perfmodel.calibrate.measure_fresh_memory``).

Collectives: alpha-beta-gamma models per algorithm (recursive doubling for small messages,
Rabenseifner's reduce-scatter + allgather for medium, ring for large; Bruck or pairwise for
all-to-all), and, where the profile holds measured sweeps for the same rank count, log-log
interpolation in the measured table instead.
"""
import json
import math
import os

import numpy as np

__all__ = [
    "OPERATIONS", "ProfileError", "MachineProfile", "KernelModel", "operation_features", "row_features",
    "load_profile", "shipped_profiles",
]

FORMAT = "hpcnn-machine-profile"
VERSION = 1

# Operations a profile models; a profile must model all of them.
OPERATIONS = (
    "conv_forward", "conv_backward_data", "conv_backward_filter",
    "pool_forward", "pool_backward",
    "batchnorm_forward", "batchnorm_backward",
    "elementwise",      # relu / leaky relu / residual add / upsample, one pass over the data
    "copy",             # packing halos and shuffle blocks, concatenation
    "gemm",             # linear layers
)

_LINK_CLASSES = ("intra_node", "inter_node")


class ProfileError(ValueError):
    """A machine profile that cannot be used; the message names the field."""


def operation_features(op, *, n=1, c=1, k=1, in_spatial=(), kernel=(), out_spatial=(), itemsize=4,
                       m=0, gemm_k=0, gemm_n=0, nbytes=0):
    """The features the time models use for one kernel call on local shapes.

    conv_*: x (n, c, *in_spatial), w (k, c, *kernel), y (n, k, *out_spatial)
    pool_*: x (n, c, *in_spatial) -> y (n, c, *out_spatial) with window `kernel`
    batchnorm_*, elementwise: x (n, c, *in_spatial)
    gemm: (m, gemm_k) @ (gemm_k, gemm_n);  copy: `nbytes`
    Returns a dict with "flops", "bytes", "lowered" (conv only) and the log-size coordinates
    "dims" used by the local correction.
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
        return {"flops": flops, "bytes": float(x_b + y_b + w_b), "lowered": lowered,
                "thin": flops / max(min(k, c * taps), 1), "weights": float(w_b),
                "dims": (n * s_out, k, c * taps, taps)}
    if op.startswith("pool_"):
        return {"flops": float(n * c * s_out * taps), "bytes": float(n * c * (s_in + s_out) * itemsize),
                "dims": (n * c * s_out, taps, n * c * s_in)}
    if op.startswith("batchnorm_"):
        e = n * c * s_in
        return {"flops": 4.0 * e, "bytes": 2.0 * e * itemsize, "dims": (e, c)}
    if op == "elementwise":
        e = n * c * s_in
        return {"flops": float(e), "bytes": 2.0 * e * itemsize, "dims": (e,)}
    if op == "copy":
        return {"flops": 0.0, "bytes": float(nbytes), "dims": (max(nbytes, 1),)}
    if op == "gemm":
        flops = 2.0 * m * gemm_k * gemm_n
        return {"flops": flops, "thin": flops / max(min(m, gemm_k, gemm_n), 1),
                "bytes": float((m * gemm_k + gemm_k * gemm_n + m * gemm_n) * itemsize),
                "dims": (max(m, 1), max(gemm_k, 1), max(gemm_n, 1))}
    raise ProfileError(f"unknown operation {op!r}: expected one of {', '.join(OPERATIONS)}")


def row_features(op, row, itemsize=4):
    """The features of a stored table row (a profile's "table" of measured samples), with the
    "thin" term of convolutions and GEMMs and the "weights" term of convolutions rebuilt from the
    row's "dims" where the row lacks them."""
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


def _value(q, where):
    if not isinstance(q, dict) or "value" not in q:
        raise ProfileError(f"{where}: expected {{'value': number, 'source': KEY}}, received {q!r}")
    v = q["value"]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise ProfileError(f"{where}.value: expected a finite non-negative number, received {v!r}")
    return float(v)


class KernelModel:
    """Time of one operation from its features (see the module docstring for the forms)."""

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
        self.coef = {name: _value(q, f"{where}.coef.{name}") for name, q in coef.items()}
        if self.form == "roofline" and not {"per_flop", "per_byte"} <= set(self.coef):
            raise ProfileError(f"{where}.coef: the roofline form needs 'per_flop' and 'per_byte'")
        self._table = None
        table = spec.get("table")
        rows = [row for row in table["rows"] if not row.get("outlier")] if table else []
        if rows:
            dims = np.array([np.log(np.maximum(np.asarray(row["dims"], float), 1.0)) for row in rows])
            base = np.array([self._base(row_features(op, row)) for row in rows])
            measured = np.array([float(row["seconds"]) for row in rows])
            self._table = (dims, np.log(np.maximum(measured, 1e-9) / np.maximum(base, 1e-9)))

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
        point = np.log(np.maximum(np.asarray(features["dims"], float), 1.0))
        if point.shape[0] != dims.shape[1]:
            return t
        dist = np.sqrt(((dims - point) ** 2).sum(axis=1))
        nearest = np.argsort(dist)[: self._CORRECTION_NEIGHBOURS]
        w = 1.0 / (dist[nearest] + 0.05)
        local = float((w * log_ratio[nearest]).sum() / w.sum())
        damping = math.exp(-(float(dist[nearest].min()) / self._CORRECTION_RADIUS) ** 2)
        return t * math.exp(local * damping)


class MachineProfile:
    """A validated machine profile; see the module docstring for the JSON layout."""

    def __init__(self, doc, path=None):
        self.doc = doc
        self.path = path
        self.validate()
        self.name = doc["name"]
        self.backend = doc["backend"]
        self.itemsize = np.dtype(doc.get("dtype", "float32")).itemsize
        self.ranks_per_node = int(_value(doc["ranks_per_node"], "ranks_per_node"))
        self.memory_per_rank = _value(doc["memory_per_rank"], "memory_per_rank")
        self.kernels = {op: KernelModel(op, doc["compute"][op]) for op in OPERATIONS}
        self.links = {cls: (_value(doc["links"][cls]["alpha"], f"links.{cls}.alpha"),
                            _value(doc["links"][cls]["beta"], f"links.{cls}.beta")) for cls in _LINK_CLASSES}
        coll = doc["collectives"]
        ar = coll["allreduce"]
        self.gamma = _value(ar["gamma"], "collectives.allreduce.gamma")
        self.allreduce_small = _value(ar["small_bytes"], "collectives.allreduce.small_bytes")
        self.allreduce_ring = _value(ar["ring_bytes"], "collectives.allreduce.ring_bytes")
        self.alltoall_small = _value(coll["alltoall"]["small_bytes"], "collectives.alltoall.small_bytes")
        self._measured = {name: {int(p): np.array(rows, float) for p, rows in
                                 coll[name].get("measured", {}).get("ranks", {}).items() if rows}
                          for name in ("allreduce", "alltoall")}
        overlap = doc.get("overlap", {})
        self.overlap = {key: _value(overlap[key], f"overlap.{key}") if key in overlap else 0.0
                        for key in ("gradient_allreduce", "halo")}
        calls = doc.get("layer_calls", {}).get("kinds", {})
        self.layer_calls = {(kind, direction): (_value(terms["fixed"], f"layer_calls.{kind}.{direction}.fixed"),
                                                _value(terms["per_byte"], f"layer_calls.{kind}.{direction}.per_byte"))
                            for kind, spec in calls.items() for direction, terms in spec.items()}
        fresh = doc.get("fresh_memory")
        self.fresh_memory = ((_value(fresh["per_byte"], "fresh_memory.per_byte"),
                              _value(fresh["threshold_bytes"], "fresh_memory.threshold_bytes"))
                             if fresh else (0.0, float("inf")))
        self.concurrency_slowdown = (_value(doc["concurrency_slowdown"], "concurrency_slowdown")
                                     if "concurrency_slowdown" in doc else 1.0)

    # --- JSON ---------------------------------------------------------------------------
    @classmethod
    def synthetic(cls, name="synthetic", *, per_flop=1e-9, per_byte=1e-9, fixed=0.0, alpha=1e-6, beta=1e-9,
                  inter_alpha=None, inter_beta=None, ranks_per_node=1 << 20, memory_per_rank=float(1 << 40),
                  gamma=0.0, small_bytes=2048, ring_bytes=1 << 20, overlap_gradient=0.0, overlap_halo=0.0,
                  backend="cpu"):
        """A profile from stated constants (what-if studies and tests): every operation costs
        fixed + flops * per_flop + bytes * per_byte, every message alpha + bytes * beta."""
        src = "stated"

        def q(v):
            return {"value": v, "source": src}
        model = {"form": "linear", "coef": {"fixed": q(fixed), "flops": q(per_flop), "bytes": q(per_byte)}}
        doc = {
            "format": FORMAT, "version": VERSION, "name": name, "backend": backend, "dtype": "float32",
            "description": "constants stated by the caller", "sources": {src: "constants stated by the caller"},
            "ranks_per_node": q(ranks_per_node), "memory_per_rank": q(memory_per_rank),
            "compute": {op: json.loads(json.dumps(model)) for op in OPERATIONS},
            "links": {"intra_node": {"alpha": q(alpha), "beta": q(beta)},
                      "inter_node": {"alpha": q(alpha if inter_alpha is None else inter_alpha),
                                     "beta": q(beta if inter_beta is None else inter_beta)}},
            "collectives": {"allreduce": {"gamma": q(gamma), "small_bytes": q(small_bytes), "ring_bytes": q(ring_bytes)},
                            "alltoall": {"small_bytes": q(256)}},
            "overlap": {"gradient_allreduce": q(overlap_gradient), "halo": q(overlap_halo)},
        }
        return cls(doc)

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise ProfileError(f"machine profile {path}: no such file (shipped profiles: "
                               f"{', '.join(sorted(shipped_profiles()))})") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"machine profile {path}: not valid JSON ({e})") from None
        try:
            return cls(doc, path=str(path))
        except ProfileError as e:
            raise ProfileError(f"machine profile {path}: {e}") from None

    def save(self, path):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)

    def validate(self):
        """Refuse a document that lacks a field or has a number without a source."""
        doc = self.doc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ProfileError(f"format: expected {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise ProfileError(f"version: expected {VERSION}, received {doc.get('version')!r}")
        for key in ("name", "backend", "sources", "ranks_per_node", "memory_per_rank", "compute", "links",
                    "collectives"):
            if key not in doc:
                raise ProfileError(f"{key}: missing")
        if doc["backend"] not in ("cpu", "gpu"):
            raise ProfileError(f"backend: expected 'cpu' or 'gpu', received {doc['backend']!r}")
        sources = doc["sources"]
        if not isinstance(sources, dict) or not all(isinstance(v, str) and v for v in sources.values()):
            raise ProfileError("sources: expected a mapping from key to a citation text")
        missing = [op for op in OPERATIONS if op not in doc["compute"]]
        if missing:
            raise ProfileError(f"compute: no model for {', '.join(missing)}")
        for cls in _LINK_CLASSES:
            if cls not in doc["links"]:
                raise ProfileError(f"links.{cls}: missing")
        for name in ("allreduce", "alltoall"):
            if name not in doc["collectives"]:
                raise ProfileError(f"collectives.{name}: missing")
        if _value(doc["ranks_per_node"], "ranks_per_node") < 1:
            raise ProfileError("ranks_per_node: must be at least 1")
        body = {k: v for k, v in doc.items() if k not in ("format", "version")}
        self._check_provenance(body, "", None, sources)

    @classmethod
    def _check_provenance(cls, node, where, source, sources):
        if isinstance(node, dict):
            if "source" in node:
                source = node["source"]
                if source not in sources:
                    raise ProfileError(f"{where or 'profile'}.source: {source!r} is not a key of 'sources'")
            for key, value in node.items():
                if key not in ("source", "sources"):
                    cls._check_provenance(value, f"{where}.{key}" if where else key, source, sources)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                cls._check_provenance(value, f"{where}[{i}]", source, sources)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            if source is None:
                raise ProfileError(f"{where}: the number {node!r} has no source")

    def source_of(self, *path):
        """The citation text of the number at `path` (e.g. 'links', 'inter_node', 'beta')."""
        node, source = self.doc, None
        for key in path:
            if isinstance(node, dict) and "source" in node:
                source = node["source"]
            node = node[key]
        if isinstance(node, dict) and "source" in node:
            source = node["source"]
        return self.doc["sources"].get(source, source)

    # --- compute ------------------------------------------------------------------------
    def kernel_time(self, op, busy_ranks_per_node=1, **shape):
        """Seconds for one kernel call on local shapes (keywords of `operation_features`)."""
        t = self.kernels[op].predict(operation_features(op, itemsize=self.itemsize, **shape))
        if busy_ranks_per_node > 1:
            t *= self.concurrency_slowdown
        return t

    def layer_call(self, kind, direction, nbytes):
        """Seconds one `direction` ("forward" / "backward") call of a `kind` layer costs beyond its
        kernels, for `nbytes` of local input + output + parameters (0 where the profile has no term)."""
        fixed, per_byte = self.layer_calls.get((kind, direction), (0.0, 0.0))
        return fixed + per_byte * nbytes

    def fresh_memory_time(self, nbytes):
        """Seconds of page faults when one array of `nbytes` is allocated and written (see "fresh_memory")."""
        per_byte, threshold = self.fresh_memory
        return per_byte * nbytes if nbytes >= threshold else 0.0

    # --- communication ------------------------------------------------------------------
    def link(self, inter_node):
        """(alpha seconds, beta seconds per byte) of a link class."""
        return self.links["inter_node" if inter_node else "intra_node"]

    def point_to_point(self, nbytes, inter_node=False):
        if nbytes <= 0:
            return 0.0
        alpha, beta = self.link(inter_node)
        return alpha + nbytes * beta

    def spans_nodes(self, ranks):
        return ranks > self.ranks_per_node

    def allreduce_algorithm(self, nbytes, ranks, inter_node=None):
        """The algorithm picked by size: recursive doubling up to `small_bytes`, Rabenseifner below
        `ring_bytes`, and above it the ring where the ring is cheaper (few ranks, bandwidth-bound)."""
        if nbytes <= self.allreduce_small:
            return "recursive_doubling"
        if nbytes < self.allreduce_ring:
            return "rabenseifner"
        alpha, beta = self.link(self.spans_nodes(ranks) if inter_node is None else inter_node)
        t = self._allreduce_by_algorithm(float(nbytes), float(ranks), math.ceil(math.log2(ranks)), alpha, beta,
                                         self.gamma)
        return "ring" if t["ring"] <= t["rabenseifner"] else "rabenseifner"

    def allreduce(self, nbytes, ranks, inter_node=None):
        """Seconds for an allreduce of `nbytes` over `ranks` ranks (0 for one rank)."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        table = self._measured["allreduce"].get(ranks)
        if table is not None and len(table) >= 2:
            return _loglog(table, nbytes)
        if inter_node is None:
            inter_node = self.spans_nodes(ranks)
        alpha, beta = self.link(inter_node)
        n, p, g = float(nbytes), float(ranks), self.gamma
        lg = math.ceil(math.log2(ranks))
        return self._allreduce_by_algorithm(n, p, lg, alpha, beta, g)[self.allreduce_algorithm(nbytes, ranks,
                                                                                               inter_node)]

    @staticmethod
    def _allreduce_by_algorithm(n, p, lg, alpha, beta, g):
        return {
            "recursive_doubling": lg * (alpha + n * beta + n * g),
            "rabenseifner": 2 * lg * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * g,
            "ring": 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta + (p - 1) / p * n * g,
        }

    def alltoall(self, nbytes_per_rank, ranks, inter_node=None, partners=None):
        """Seconds for an all-to-all in which each rank sends `nbytes_per_rank` in total.

        `partners`: how many ranks each rank really exchanges with (an Alltoallv with empty
        counts skips the others); defaults to all.
        """
        return float(self.alltoall_array(np.array([float(nbytes_per_rank)]), ranks, inter_node,
                                         None if partners is None else np.array([partners]))[0])

    def alltoall_array(self, nbytes_per_rank, ranks, inter_node=None, partners=None):
        """`alltoall` over an array of sizes (and partner counts); 0 where nothing is sent."""
        n = np.asarray(nbytes_per_rank, dtype=float)
        if ranks <= 1:
            return np.zeros_like(n)
        table = self._measured["alltoall"].get(ranks)
        if table is not None and len(table) >= 2:
            return np.where(n > 0, _loglog(table, n), 0.0)
        if inter_node is None:
            inter_node = self.spans_nodes(ranks)
        alpha, beta = self.link(inter_node)
        full = ranks - 1
        partners = np.full_like(n, full) if partners is None else np.minimum(np.asarray(partners, float), full)
        lg = math.ceil(math.log2(ranks))
        bruck = lg * alpha + n / 2 * lg * beta
        pairwise = partners * alpha + n * beta
        use_bruck = (n / np.maximum(partners, 1) <= self.alltoall_small) & (partners == full)
        return np.where(n > 0, np.where(use_bruck, bruck, pairwise), 0.0)


def _loglog(table, x):
    """Interpolation in log-log space of a (bytes, seconds) table (x: a number or an array).

    Below the sweep: the smallest measured time; beyond it: the last segment's per-byte slope
    (bandwidth-bound).
    """
    xs, ys = table[:, 0], table[:, 1]
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    x = np.asarray(x, dtype=float)
    inside = np.exp(np.interp(np.log(np.clip(x, xs[0], xs[-1])), np.log(xs), np.log(ys)))
    slope = max((ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1.0), 0.0)
    out = np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), inside)
    return float(out) if out.ndim == 0 else out


def _profiles_dir():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")


def shipped_profiles():
    """{name: path} of the profiles in perfmodel/profiles/."""
    folder = _profiles_dir()
    if not os.path.isdir(folder):
        return {}
    return {f[:-5]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".json")}


def load_profile(name_or_path):
    """A profile from a path, or by the name of a shipped profile (e.g. 'v100-nvlink-edr')."""
    shipped = shipped_profiles()
    if not os.path.exists(name_or_path) and name_or_path in shipped:
        name_or_path = shipped[name_or_path]
    return MachineProfile.load(name_or_path)
