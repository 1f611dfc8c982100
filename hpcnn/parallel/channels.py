"""Moving channel ranges of (n, C, *S) blocks between the ranks that hold the same samples and spatial block.

A channel- or filter-split convolution (`hpcnn.parallel.conv`) holds its tensors in three channel
layouts over the C x F ranks of one `Distribution.cf_comm` (rank c * Pf + f):
- standard: rank (c, f) holds channels block_range(C, Pc, c), the same block on every f (replicated);
- filter: rank (c, f) holds the convolution's output channels block_range(K, Pf, f), on every c;
- partial: a layout whose blocks are partial sums, every rank's part adding to the whole.
`ChannelMove` goes from one layout to another in one Alltoallv over cf_comm: in copy mode each
channel comes from one sender (the lead replica of its block); in sum mode every rank sends its part
and the receiver adds the parts (a reduce-scatter when the target blocks are disjoint, an
allreduce-and-slice when they are replicated). Copy from the standard layout to the filter layout is
the adjoint of the sum from the filter layout to the standard one, and the other way round.
"""
import math

from ..backend import array_module
from ..geometry import block_range

__all__ = ["ChannelMove", "standard_ranges", "filter_ranges"]


def standard_ranges(channels, pc, pf):
    """[(start, stop)] per cf rank (c * pf + f) of the standard layout, and which ranks send (f == 0)."""
    ranges = [block_range(channels, pc, r // pf) for r in range(pc * pf)]
    return ranges, [r % pf == 0 for r in range(pc * pf)]


def filter_ranges(filters, pc, pf):
    """[(start, stop)] per cf rank of the filter layout, and which ranks send (c == 0)."""
    ranges = [block_range(filters, pf, r % pf) for r in range(pc * pf)]
    return ranges, [r // pf == 0 for r in range(pc * pf)]


def _meet(a, b):
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if hi > lo else None


class ChannelMove:
    """Channel ranges `src` -> `dst` (lists of (start, stop) per rank of `comm`); `sends`: which ranks send.

    reduce=False: every channel of a target block comes from one sending rank; reduce=True: every rank
    sends (sends ignored) and the target adds what it receives.
    """

    def __init__(self, comm, src, dst, sends=None, reduce=False):
        self.comm, self.reduce = comm, reduce
        me = comm.rank
        sends = [True] * comm.size if reduce or sends is None else list(sends)
        self.mine_src, self.mine_dst = src[me], dst[me]
        self.send_parts = [_meet(src[me], dst[r]) if sends[me] else None for r in range(comm.size)]
        self.recv_parts = [_meet(src[q], dst[me]) if sends[q] else None for q in range(comm.size)]

    def forward(self, x):
        """x: (n, src channels of this rank, *S) -> (n, dst channels of this rank, *S)."""
        with self.comm.clock.counting("collective"):
            return self._move(x)

    def _move(self, x):
        xp = array_module(x)
        lead, rest = x.shape[0], tuple(x.shape[2:])
        per = lead * math.prod(rest)
        s0, d0 = self.mine_src[0], self.mine_dst[0]
        out = xp.zeros((lead, self.mine_dst[1] - d0) + rest, x.dtype)
        if self.comm.size == 1:
            part = self.send_parts[0]
            if part is not None:
                out[:, part[0] - d0:part[1] - d0] = x[:, part[0] - s0:part[1] - s0]
            return out
        send_counts = [0 if p is None else (p[1] - p[0]) * per for p in self.send_parts]
        recv_counts = [0 if p is None else (p[1] - p[0]) * per for p in self.recv_parts]
        send = xp.empty(sum(send_counts), x.dtype)
        offset = 0
        for p, n in zip(self.send_parts, send_counts):
            if n:
                send[offset:offset + n].reshape((lead, p[1] - p[0]) + rest)[...] = x[:, p[0] - s0:p[1] - s0]
                offset += n
        recv = xp.empty(sum(recv_counts), x.dtype)
        self.comm.alltoallv(send, send_counts, recv, recv_counts)
        offset = 0
        for p, n in zip(self.recv_parts, recv_counts):
            if n:
                piece = recv[offset:offset + n].reshape((lead, p[1] - p[0]) + rest)
                if self.reduce:
                    out[:, p[0] - d0:p[1] - d0] += piece
                else:
                    out[:, p[0] - d0:p[1] - d0] = piece
                offset += n
        return out
