"""Redistribution of a tensor between two distributions (one Alltoallv), and its adjoint.

A tensor replicated over some grid axes (an (N, F) tensor over the spatial group, an activation
over F; see `Distribution`) is sent by one replica (the rank at coordinate 0 along every replica
axis) and received by every replica that holds it under the target distribution. For blocked tensors the shuffle is a permutation, so its adjoint is the
shuffle back; `Shuffle.backward` is that reverse shuffle for every tensor (a replicated
gradient is, like its activation, held whole by every replica).
"""
import numpy as np

from ..backend import array_module
from .tensor import DistTensor

__all__ = ["Shuffle", "shuffle"]


def _box_intersect(a, b):
    out = []
    for (a0, a1), (b0, b1) in zip(a, b):
        lo, hi = max(a0, b0), min(a1, b1)
        if hi <= lo:
            return None
        out.append((lo, hi))
    return out


class Shuffle:
    """Moves tensors of `global_shape` from distribution `src` to `dst` (same communicator)."""

    def __init__(self, src, dst, global_shape):
        if src.size != dst.size or src.comm != dst.comm:
            raise ValueError(f"Shuffle: {src} and {dst} must share one communicator")
        if src.nd != dst.nd:
            raise ValueError(f"Shuffle: {src} and {dst} must have the same number of spatial dimensions")
        self.src, self.dst = src, dst
        self.global_shape = tuple(global_shape)
        ndim = len(self.global_shape)
        me = src.rank
        my_src = src.ranges_at(self.global_shape, src.coords)
        my_dst = dst.ranges_at(self.global_shape, dst.coords)

        def sends_from(rank):
            return src.is_lead_replica(ndim, src.coords_of(rank))

        self.send_boxes, self.recv_boxes = [], []
        for r in range(src.size):
            box = _box_intersect(my_src, dst.ranges_at(self.global_shape, dst.coords_of(r))) if sends_from(me) \
                else None
            self.send_boxes.append(box)
            box = _box_intersect(src.ranges_at(self.global_shape, src.coords_of(r)), my_dst) if sends_from(r) \
                else None
            self.recv_boxes.append(box)
        self._src_origin = [a for a, _ in my_src]
        self._dst_origin = [a for a, _ in my_dst]
        self.send_counts = [0 if b is None else int(np.prod([hi - lo for lo, hi in b])) for b in self.send_boxes]
        self.recv_counts = [0 if b is None else int(np.prod([hi - lo for lo, hi in b])) for b in self.recv_boxes]
        self._buffers = {}
        self._reverse = None

    @property
    def bytes_sent_per_element(self):
        return sum(c for r, c in enumerate(self.send_counts) if r != self.src.rank)

    def _local_index(self, box, origin):
        return tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(box, origin))

    def forward(self, t):
        """t: DistTensor under `src` -> the same global tensor under `dst`."""
        with self.src.comm.clock.counting("shuffle"):
            return self._forward(t)

    def _forward(self, t):
        if t.distribution != self.src or t.global_shape != self.global_shape:
            raise ValueError(f"Shuffle: expected a tensor of global shape {self.global_shape} under {self.src}, "
                             f"received {t}")
        dtype = t.local.dtype
        xp = array_module(t.local)
        key = (str(dtype), xp.__name__)
        if key not in self._buffers:
            self._buffers[key] = (xp.empty(sum(self.send_counts), dtype), xp.empty(sum(self.recv_counts), dtype))
        send, recv = self._buffers[key]
        offset = 0
        for box, n in zip(self.send_boxes, self.send_counts):
            if n:
                send[offset:offset + n].reshape([hi - lo for lo, hi in box])[...] = \
                    t.local[self._local_index(box, self._src_origin)]
                offset += n
        self.src.comm.alltoallv(send, self.send_counts, recv, self.recv_counts)
        out = xp.empty(self.dst.local_shape(self.global_shape), dtype)
        offset = 0
        for box, n in zip(self.recv_boxes, self.recv_counts):
            if n:
                out[self._local_index(box, self._dst_origin)] = \
                    recv[offset:offset + n].reshape([hi - lo for lo, hi in box])
                offset += n
        return DistTensor(out, self.dst, self.global_shape)

    def backward(self, g):
        """g: DistTensor under `dst` -> under `src` (the adjoint for blocked tensors)."""
        if self._reverse is None:
            self._reverse = Shuffle(self.dst, self.src, self.global_shape)
        return self._reverse.forward(g)


def shuffle(t, dst):
    """DistTensor `t` redistributed to distribution `dst` (a one-off; layers keep a `Shuffle`)."""
    return Shuffle(t.distribution, dst, t.global_shape).forward(t)
