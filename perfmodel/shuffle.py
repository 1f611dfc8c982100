"""The cost of a shuffle: moving a tensor between two grids with one Alltoallv (hpcnn.parallel.Shuffle).

Each rank sends what it owns and the other grid's rank needs, packs and unpacks; the adjoint in
backward costs the same. Ranks are in C order in both grids; the part of a rank's old block that
its new block also covers stays put.
"""
import math
from functools import lru_cache

import numpy as np

from hpcnn.grids import long_grid

from .costs import busy_ranks

__all__ = ["shuffle_parts", "shuffle_bytes", "shuffle_matrix", "shuffle_time"]


@lru_cache(maxsize=65536)
def _axis_meets(size, a, b):
    """Along one axis split in `a` blocks (old) and `b` blocks (new): the most new blocks an old block meets
    (hpcnn.geometry's block_range and block_index over every non-empty old block at once)."""
    if a == b:
        return 1
    base, extra = divmod(size, a)
    i = np.arange(min(a, size))
    lo = i * base + np.minimum(i, extra)
    hi = lo + base + (i < extra)
    b_base, b_extra = divmod(size, b)
    big = b_extra * (b_base + 1)

    def index(x):
        return np.where(x < big, x // (b_base + 1), b_extra + (x - big) // max(b_base, 1))
    return max(1, int((index(hi - 1) - index(lo)).max(initial=0)) + 1)


def _split_dims(shape):
    """[(tensor axis, long-grid column)] a grid splits: N, the spatial axes and C of (N, C, *S); only N of (N, F)."""
    if len(shape) <= 2:
        return [(0, 0)]
    nd = len(shape) - 2
    return [(0, 0)] + [(2 + k, 1 + k) for k in range(nd)] + [(1, nd + 1)]


def _long(grids):
    return np.asarray([long_grid(g) for g in grids], dtype=np.int64)


def shuffle_parts(shape, src_grids, dst_grids, itemsize):
    """Arrays for moving a tensor of global `shape` from each grid of src_grids to each of dst_grids.

    Returns (sent (S, D) bytes of the busiest rank, partners (S, D), block (S,) bytes of a source
    block). Ranks are in C order in both grids and the part of a rank's old block that its new
    block also covers stays put; the rank at coordinate 0 of both grids (which holds the largest
    blocks under the uneven rule) stands for all. Replicated tensors (an (N, F) tensor over every grid
    entry but N, an activation over F): one replica sends, every replica of the target grid receives.
    """
    dims = _split_dims(shape)
    src_long, dst_long = _long(src_grids), _long(dst_grids)
    old = np.ones(len(src_long))
    kept = np.ones((len(src_long), len(dst_long)))
    partners = np.ones((len(src_long), len(dst_long)))
    for dim, column in dims:
        size = shape[dim]
        a_parts, b_parts = src_long[:, column], dst_long[:, column]
        o = -(-size // a_parts)
        nw = -(-size // b_parts)
        old = old * o
        kept = kept * np.minimum(o[:, None], nw[None, :])
        ua, ia = np.unique(a_parts, return_inverse=True)
        ub, ib = np.unique(b_parts, return_inverse=True)
        table = np.array([[_axis_meets(size, int(a), int(b)) for b in ub] for a in ua])
        partners = partners * table[ia.reshape(-1)][:, ib.reshape(-1)]
    split = {dim for dim, _ in dims}
    rest = math.prod(s for i, s in enumerate(shape) if i not in split)
    same = (src_long[:, None, :] == dst_long[None, :, :]).all(axis=2)
    # every replica of the target grid receives its block: the sending replica sends each part of its
    # block to every replica that needs it, less the part it keeps
    columns = {col for _, col in dims}
    replicas = np.prod(dst_long[:, [c for c in range(dst_long.shape[1]) if c not in columns]], axis=1).astype(float)
    sent = (old[:, None] * replicas[None, :] - kept) * rest * itemsize
    partners = partners * replicas[None, :]
    sent = np.where(same, 0.0, sent)
    partners = np.where(same, 0, np.maximum(partners - 1, 1))
    return sent, partners, old * rest * itemsize


def shuffle_bytes(shape, src, dst, itemsize):
    """(bytes the busiest rank sends, partners) moving a tensor of global `shape` from grid `src` to `dst`."""
    sent, partners, _ = shuffle_parts(tuple(shape), [tuple(src)], [tuple(dst)], itemsize)
    return float(sent[0, 0]), int(partners[0, 0])


def shuffle_matrix(shape, src_grids, dst_grids, machine):
    """(S, D) seconds of one shuffle (Alltoallv + pack + unpack) from each source grid to each target grid."""
    shape = tuple(shape)
    sent, partners, block = shuffle_parts(shape, src_grids, dst_grids, machine.itemsize)
    ranks = math.prod(src_grids[0])
    busy = busy_ranks(machine, ranks)
    inter = machine.spans_nodes(ranks)
    t = machine.alltoall_array(sent, ranks, inter, partners)
    copy = np.array([machine.kernel_time("copy", busy, nbytes=float(b)) for b in block])
    # pack the send buffer and unpack the receive buffer (about one block each)
    return np.where(sent > 0, t + 2 * copy[:, None], 0.0)


def shuffle_time(shape, src, dst, machine):
    """Seconds of one shuffle of a tensor of global `shape` from grid src to grid dst."""
    src, dst = tuple(src), tuple(dst)
    if src == dst:
        return 0.0
    return float(shuffle_matrix(shape, [src], [dst], machine)[0, 0])
