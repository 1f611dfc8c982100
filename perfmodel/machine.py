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
      "layers_in_context": {"source": "KEY", "kinds": {KIND: {"source": "KEY", "rows": [[...], ...]}}},
      "fresh_memory": {"per_byte": Q, "threshold_bytes": Q}
    }

where Q is ``{"value": number, "source": KEY}``. The rule checked by ``validate``: every number in
the document sits inside an object that carries a ``source`` naming an entry of ``sources``.

Kernel time models ("compute") are in `perfmodel.kernel_models`, links and collectives in
`perfmodel.collectives` (the base class `CollectiveModels` of `MachineProfile`), the format's name,
version, sourced numbers and provenance rule in `perfmodel.profile_format`.

Layer calls (optional "layer_calls"; absent = zero): what one forward or backward call of a
layer costs on top of its kernels, as the distributed layer path runs it (Python, input checks,
the halo bookkeeping, allocating its outputs, data not in cache)::

    t_call(kind, direction) = fixed + per_byte * (local input + output + parameter bytes)

per layer kind (``perfmodel.layers.KINDS``) and direction. `hpcnn calibrate` fits both terms to the
leaves of random networks trained on one rank (``hpcnn.calibrate.context``): what a layer in a network
takes beyond its kernels' models; kinds too rare in those networks keep the terms of their distributed
layer timed alone on a tiny and a large shape (``hpcnn.calibrate.layers.measure_layer_calls``).

Layers in context (optional "layers_in_context"; absent = no correction): the local correction of a
layer's predicted time by the measured layers of random networks near it (``perfmodel.context``).

Fresh memory (optional "fresh_memory"; absent = zero, as on GPUs, whose allocations come from
a pool): an array at least `threshold_bytes` large is mapped from the operating system on every
allocation (glibc's malloc serves requests above its largest mmap threshold, 32 MiB, with mmap,
and returns them on free), so the first write to each page faults. A layer pays it for its output
in forward and for its input gradient in backward::

    "fresh_memory": {"per_byte": Q, "threshold_bytes": Q}

`hpcnn calibrate` measures per_byte as the time to allocate and fill a 48 and a 96 MiB array less
the time to fill one allocated before (``hpcnn.calibrate.layers.measure_fresh_memory``).

Concurrency (optional "concurrency_slowdown"; absent = 1): how much slower a kernel runs when every rank of
the node runs one at once (they share the memory bandwidth and caches) than alone; `kernel_time` multiplies
by it whenever more than one rank of a node is busy. `hpcnn calibrate` measures it as the median ratio of a
kernel's time on every rank at once to its time alone, over sampled kernels; the optional
"concurrency_slowdown_by_op" ({op: quantity}) is that median per operation, which `kernel_time` uses where
present (compute-bound convolutions slow down less than memory-bound copies).

Synchronisation wait (optional "sync_wait"; absent = 0): the fraction of a layer's own compute that a rank
waits, on average, for the slowest rank of its group in the small allreduce that ends a normalization layer's
statistics (ranks finish the same work at different times). The batch-norm and group-norm pricing adds it to
their collectives. `hpcnn calibrate` measures it by running batch-norm kernels on every rank, each followed by
that allreduce (``hpcnn.calibrate.network.sync_wait``).

Threads per rank (in "measured_on"): the BLAS/numba threads each rank ran during the calibration; the kernel
models hold for that count (`threads_per_rank`). The optional "thread_speedup" ({"threads": Q, "by_op": {op: Q}},
written by `hpcnn calibrate` on a node of several cores) is how much faster each operation's sampled calls ran on
that many threads than on one; `for_threads(t)` prices a run of t threads per rank through it, and without it
`perfmodel.provenance.threads_note` says the predictions hold for the calibration's count only.

Staging (optional "staging", written by `hpcnn calibrate --device gpu`): the device-to-host and
host-to-device copies a GPU rank's messages go through when MPI is not CUDA-aware, each as
``{"alpha": Q, "beta": Q}`` with the measured rows. It is recorded for the model; the model does
not price it yet (its links are the ping-pong measured with device buffers, staging included).
"""
import copy
import itertools
import json
import os

import numpy as np

from .collectives import LINK_CLASSES, CollectiveModels
from .context import ContextCorrection
from .kernel_models import OPERATIONS, KernelModel, operation_features, row_features
from .profile_format import FORMAT, VERSION, ProfileError, check_provenance, read_fields, read_quantity

__all__ = [
    "FORMAT", "VERSION", "OPERATIONS", "ProfileError", "MachineProfile", "KernelModel", "operation_features",
    "row_features", "load_profile", "shipped_profiles",
]


_CACHE_KEYS = itertools.count()


class MachineProfile(CollectiveModels):
    """A validated machine profile; see the module docstring for the JSON layout.

    Kernel times come from its `KernelModel`s (`kernel_time`), message and collective times from
    the base class `CollectiveModels` (`link`, `point_to_point`, `allreduce`, `alltoall`, ...).
    """

    def __init__(self, doc, path=None):
        self.doc = doc
        self.path = path
        # what per-profile caches key on (`perfmodel.costs`): unique for the process's life, where id() is
        # reused once a profile is freed
        self.cache_key = next(_CACHE_KEYS)
        read_fields(doc, self._read)

    def _read(self, doc):
        """Read every field of `doc` (a profile_format.Fields, so that a missing or bad field is named)."""
        self.validate()
        self.name = doc["name"]
        self.backend = doc["backend"]
        self.itemsize = np.dtype(doc.get("dtype", "float32")).itemsize
        self.ranks_per_node = int(read_quantity(doc["ranks_per_node"], "ranks_per_node"))
        self.memory_per_rank = read_quantity(doc["memory_per_rank"], "memory_per_rank")
        self.kernels = {op: KernelModel(op, doc["compute"][op]) for op in OPERATIONS}
        self._read_communication(doc)
        overlap = doc.get("overlap", {})
        self.overlap = {key: read_quantity(overlap[key], f"overlap.{key}") if key in overlap else 0.0
                        for key in ("gradient_allreduce", "halo")}
        calls = doc.get("layer_calls", {}).get("kinds", {})
        self.layer_calls = {(kind, direction): (read_quantity(terms["fixed"], f"layer_calls.{kind}.{direction}.fixed"),
                                                read_quantity(terms["per_byte"],
                                                              f"layer_calls.{kind}.{direction}.per_byte"))
                            for kind, spec in calls.items() for direction, terms in spec.items()}
        self.context = ContextCorrection(doc.get("layers_in_context"))
        fresh = doc.get("fresh_memory")
        self.fresh_memory = ((read_quantity(fresh["per_byte"], "fresh_memory.per_byte"),
                              read_quantity(fresh["threshold_bytes"], "fresh_memory.threshold_bytes"))
                             if fresh else (0.0, float("inf")))
        self.concurrency_slowdown = (read_quantity(doc["concurrency_slowdown"], "concurrency_slowdown")
                                     if "concurrency_slowdown" in doc else 1.0)
        self.concurrency_by_op = {op: read_quantity(q, f"concurrency_slowdown_by_op.{op}")
                                  for op, q in doc.get("concurrency_slowdown_by_op", {}).items()}
        self.sync_wait = read_quantity(doc["sync_wait"], "sync_wait") if "sync_wait" in doc else 0.0
        measured = doc.get("measured_on")
        self.threads_per_rank = (int(read_quantity(measured["threads_per_rank"], "measured_on.threads_per_rank"))
                                 if measured else None)
        scaling = doc.get("thread_speedup")
        self.thread_speedup = ((int(read_quantity(scaling["threads"], "thread_speedup.threads")),
                                {op: read_quantity(q, f"thread_speedup.by_op.{op}") for op, q in scaling["by_op"].items()})
                               if scaling else None)
        self.run_threads = self.threads_per_rank

    def for_threads(self, threads):
        """This profile pricing a run of `threads` BLAS/numba threads per rank: where that differs from the
        calibration's count and the profile measured its thread speedup ("thread_speedup": the speedup s of T
        threads over 1 per operation), each kernel time is scaled by a(t0) / a(t), Amdahl's a(t) = 1 / ((1 - p) +
        p / t) through (T, s); without that measurement the profile is returned as it is (`prices_threads` False)."""
        out = copy.copy(self)
        out.run_threads = int(threads)
        out.cache_key = next(_CACHE_KEYS)
        return out

    def prices_threads(self, threads):
        """Whether kernel times are right for `threads` per rank: the calibration's count, or a measured speedup."""
        return int(threads) == self.threads_per_rank or self.thread_speedup is not None

    def _thread_factor(self, op):
        t, t0 = self.run_threads, self.threads_per_rank
        if t is None or t0 is None or t == t0 or self.thread_speedup is None:
            return 1.0
        most, by_op = self.thread_speedup
        s = by_op.get(op)
        if s is None or most < 2:
            return 1.0
        p = min(max((1.0 - 1.0 / s) / (1.0 - 1.0 / most), 0.0), 1.0)
        return ((1.0 - p) + p / t) / ((1.0 - p) + p / t0)

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
        for cls in LINK_CLASSES:
            if cls not in doc["links"]:
                raise ProfileError(f"links.{cls}: missing")
        for name in ("allreduce", "alltoall"):
            if name not in doc["collectives"]:
                raise ProfileError(f"collectives.{name}: missing")
        if read_quantity(doc["ranks_per_node"], "ranks_per_node") < 1:
            raise ProfileError("ranks_per_node: must be at least 1")
        body = {k: v for k, v in doc.items() if k not in ("format", "version")}
        check_provenance(body, "", None, sources)

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

    def cited_sources(self):
        """{key: citation} of every source that some number of the profile names."""
        used = set()

        def visit(node):
            if isinstance(node, dict):
                if isinstance(node.get("source"), str):
                    used.add(node["source"])
                for key, value in node.items():
                    if key != "sources":
                        visit(value)
            elif isinstance(node, list):
                for value in node:
                    visit(value)
        visit(self.doc)
        return {k: v for k, v in self.doc["sources"].items() if k in used}

    # --- compute ------------------------------------------------------------------------
    def kernel_time(self, op, busy_ranks_per_node=1, **shape):
        """Seconds for one kernel call on local shapes (keywords of `operation_features`)."""
        t = self.kernels[op].predict(operation_features(op, itemsize=self.itemsize, **shape)) * self._thread_factor(op)
        if busy_ranks_per_node > 1:
            t *= self.concurrency_by_op.get(op, self.concurrency_slowdown)
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
