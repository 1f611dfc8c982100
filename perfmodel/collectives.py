"""Communication models of a machine profile: alpha-beta links, point-to-point messages, allreduce, allgather and
all-to-all.

Collectives are alpha-beta-gamma models per algorithm (recursive doubling for small messages,
Rabenseifner's reduce-scatter + allgather for medium, ring for large; Bruck or pairwise for
all-to-all), and, where the profile holds measured sweeps for the same rank count, log-log
interpolation in the measured table instead.

A profile's ``links`` hold (alpha seconds, beta seconds per byte) for intra-node and inter-node
messages; its ``collectives`` hold gamma (seconds per reduced byte), the algorithms' size
thresholds and optional measured sweeps ``{"ranks": {P: [[bytes, seconds], ...]}}``.
"""
import math

import numpy as np

from .profile_format import read_quantity

__all__ = ["LINK_CLASSES", "CollectiveModels"]

LINK_CLASSES = ("intra_node", "inter_node")


class CollectiveModels:
    """The communication half of `perfmodel.machine.MachineProfile` (its base class): times of messages
    and collectives from the links and collectives read by `_read_communication`, and
    `ranks_per_node`, which the profile sets first."""

    def _read_communication(self, doc):
        """Read the document's "links" and "collectives" sections."""
        self.links = {cls: (read_quantity(doc["links"][cls]["alpha"], f"links.{cls}.alpha"),
                            read_quantity(doc["links"][cls]["beta"], f"links.{cls}.beta"))
                      for cls in LINK_CLASSES}
        coll = doc["collectives"]
        ar = coll["allreduce"]
        self.gamma = read_quantity(ar["gamma"], "collectives.allreduce.gamma")
        self.allreduce_small = read_quantity(ar["small_bytes"], "collectives.allreduce.small_bytes")
        self.allreduce_ring = read_quantity(ar["ring_bytes"], "collectives.allreduce.ring_bytes")
        self.alltoall_small = read_quantity(coll["alltoall"]["small_bytes"], "collectives.alltoall.small_bytes")
        self._measured = {name: {int(p): np.array(rows, float) for p, rows in
                                 coll[name].get("measured", {}).get("ranks", {}).items() if rows}
                          for name in ("allreduce", "alltoall")}

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

    def allgather(self, nbytes, ranks, inter_node=None):
        """Seconds for an allgather (ring) whose gathered result has `nbytes` (0 for one rank): the allgather half
        of the ring allreduce, without the reduction."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        alpha, beta = self.link(self.spans_nodes(ranks) if inter_node is None else inter_node)
        return (ranks - 1) * alpha + (ranks - 1) / ranks * nbytes * beta

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
