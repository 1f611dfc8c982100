"""The halo exchange and its adjoint (the geometry it moves is `hpcnn.geometry`'s).

A window layer's output block reads the input rows `hpcnn.geometry.window_halo` gives (`need`),
which may lie partly in other ranks' blocks (`own`). Small and empty blocks are handled, not
refused: the exchange along a dimension sends each rank of the line exactly the intersection
of what it needs with what the sender owns, so a halo wider than the neighbouring block is
assembled from several ranks, and an empty block sends and receives nothing (its layer
computes an empty output).

Exchange. One spatial dimension at a time, non-blocking point-to-point; the buffer sent along a
later dimension already includes the halos received along the earlier ones, so corners arrive
without diagonal messages. Pack/unpack buffers are allocated once per local shape and reused, on the
device of the block (numpy, cupy or the emulated GPU); the messages of one step go out as one batch
(`Communicator.exchange`: one stream synchronisation for all of them).
The extended block is allocated per call and dropped after it: a layer uses it within one
forward call and exchanges the halo again in backward rather than keeping it, so a distributed
layer keeps no more activation memory than the single-process one.

Backward. The exchange is linear; its adjoint (`HaloExchange.reverse`) sends the halo part of
dx back to the rank that owns those rows, which adds it to its own block. This choice, rather
than exchanging the halo of dy, is exact for every stride, dilation and pooling window, and
needs no second copy of the forward geometry for the backward pass. `reverse_pieces_start/finish`
is the same adjoint for a layer that holds only the gradient of its halo rows (thin pieces, one
split dimension; see `hpcnn.parallel.conv.DistConv`), so that no extended gradient block is ever
allocated.

Overlap. `start` posts the messages and returns; the caller computes what needs no halo (a
convolution's owned block, with the halo rows counted as zero padding) and then calls `finish`
or `wait_halo` (measured by `hpcnn bench halo`, overlap on/off).
"""
import time

from ..backend import array_module

__all__ = ["HaloExchange"]

def _intersect(r, s):
    lo, hi = max(r[0], s[0]), min(r[1], s[1])
    return (lo, hi) if hi > lo else None


class HaloExchange:
    """Moves a block of (N, C, *own) to the extended block (N, C, *need) and back (the adjoint).

    halo: the output of `hpcnn.geometry.window_halo` / `upsample_halo` for this grid. Along a dimension that the grid does not
    split, the extended block is a view (rows trimmed at most): no copy, no message.
    """

    def __init__(self, distribution, halo):
        self.d = distribution
        self.halo = halo
        self.nd = len(halo)
        self.mine = [halo[k][distribution.coords[1 + k]] for k in range(self.nd)]
        # dims along which some rank of the line needs rows it does not own (the same on the whole line)
        self.comm_dims = [k for k in range(self.nd) if distribution.grid[1 + k] > 1 and
                          any(h.own != h.need for h in halo[k])]
        self._buffers = {}
        self._pending = None
        self.bytes_sent = 0
        self.seconds = 0.0      # time spent in this exchange's calls (packing, waiting, unpacking)

    # --- the pieces -----------------------------------------------------------------------
    @property
    def own_shape(self):
        return tuple(h.own[1] - h.own[0] for h in self.mine)

    @property
    def need_shape(self):
        return tuple(h.need[1] - h.need[0] for h in self.mine)

    @property
    def pads(self):
        """Per-side padding (lo, hi) of the extended block, per spatial dim (nonzero only at global edges)."""
        return tuple(h.pad for h in self.mine)

    def _ranges(self, k, which):
        return [getattr(h, which) for h in self.halo[k]]

    def _plan(self, lead, like, direction):
        """Buffers and message lists for one direction, made on first use per leading shape, dtype and
        array module (the buffers live where `like` lives)."""
        xp, dtype = array_module(like), like.dtype
        key = (lead, str(dtype), xp.__name__, direction)
        if key in self._buffers:
            return self._buffers[key]
        steps = []
        # the spatial extent of the buffer, per dim, as it is transformed dim by dim
        extent = [h.own if direction == "forward" and k in self.comm_dims else h.need
                  for k, h in enumerate(self.mine)]
        order = self.comm_dims if direction == "forward" else list(reversed(self.comm_dims))
        for k in order:
            c = self.d.coords[1 + k]
            src, dst = (self._ranges(k, "own"), self._ranges(k, "need")) if direction == "forward" else \
                (self._ranges(k, "need"), self._ranges(k, "own"))
            line = self.d.line(1 + k)
            extent = list(extent)
            extent[k] = dst[c]
            shape = lead + tuple(e[1] - e[0] for e in extent)
            # the extended blocks are allocated per call (only the pack buffers are kept): a layer
            # uses its block within one call, and keeping one per layer (or per shape) would add a
            # whole activation to each rank's peak memory (measured)
            out = shape
            sends, recvs = [], []
            for q in range(len(line)):
                if q == c:
                    continue
                r = _intersect(src[c], dst[q])
                if r is not None:
                    bshape = list(shape)
                    bshape[2 + k] = r[1] - r[0]
                    sends.append((line[q], (r[0] - src[c][0], r[1] - src[c][0]), xp.empty(bshape, dtype)))
                r = _intersect(dst[c], src[q])
                if r is not None:
                    bshape = list(shape)
                    bshape[2 + k] = r[1] - r[0]
                    recvs.append((line[q], (r[0] - dst[c][0], r[1] - dst[c][0]), xp.empty(bshape, dtype)))
            local = _intersect(src[c], dst[c])
            local = None if local is None else ((local[0] - src[c][0], local[1] - src[c][0]),
                                                (local[0] - dst[c][0], local[1] - dst[c][0]))
            steps.append((k, out, sends, recvs, local, len(steps)))
        self._buffers[key] = steps
        return steps

    @staticmethod
    def _take(a, axis, r):
        index = [slice(None)] * a.ndim
        index[axis] = slice(*r)
        return tuple(index)

    def _post(self, step, buf, tag):
        k, out, sends, recvs, local, _ = step
        axis = 2 + k
        for rank, r, sbuf in sends:
            sbuf[...] = buf[self._take(buf, axis, r)]
            self.bytes_sent += sbuf.nbytes
        return self.d.comm.exchange([(sbuf, rank, tag) for rank, _, sbuf in sends],
                                    [(rbuf, rank, tag) for rank, _, rbuf in recvs])

    def _complete(self, step, buf, requests, accumulate):
        k, shape, sends, recvs, local, index = step
        axis = 2 + k
        out = array_module(buf).empty(shape, dtype=buf.dtype)
        if accumulate and (local is None or local[1] != (0, shape[axis])):
            out[...] = 0  # rows of the sum that this rank's own part does not cover
        if local is not None:
            src_r, dst_r = local
            if accumulate and local[1] != (0, shape[axis]):
                out[self._take(out, axis, dst_r)] += buf[self._take(buf, axis, src_r)]
            else:
                out[self._take(out, axis, dst_r)] = buf[self._take(buf, axis, src_r)]
        self.d.comm.wait_all(requests)
        for rank, r, rbuf in recvs:
            if accumulate:
                out[self._take(out, axis, r)] += rbuf
            else:
                out[self._take(out, axis, r)] = rbuf
        return out

    def trimmed(self, x):
        """x: (N, C, *own) with the dims that exchange nothing sliced to `need` (a view)."""
        return self._trim(x, "forward")

    def _trim(self, x, which):
        """Slice the dims without messages from `own` to `need` (forward) as a view."""
        index = [slice(None)] * x.ndim
        for k in range(self.nd):
            if k in self.comm_dims:
                continue
            h = self.mine[k]
            index[2 + k] = slice(h.need[0] - h.own[0], h.need[1] - h.own[0])
        return x[tuple(index)]

    # --- forward ---------------------------------------------------------------------------
    def _start(self, x):
        """Post the first dimension's messages for x: (N, C, *own); finish() returns (N, C, *need)."""
        x = self._trim(x, "forward")
        steps = self._plan(tuple(x.shape[:2]), x, "forward")
        if not steps:
            self._pending = ("forward", x, [], None)
            return
        requests = self._post(steps[0], x, tag=11 + steps[0][0])
        self._pending = ("forward", x, steps, requests)

    def _finish(self):
        _, buf, steps, requests = self._pending
        self._pending = None
        for i, step in enumerate(steps):
            if i > 0:
                requests = self._post(step, buf, tag=11 + step[0])
            buf = self._complete(step, buf, requests, accumulate=False)
        return buf

    def wait_halo(self):
        """Complete a start() along a single split dimension without building the extended block.

        Afterwards `rows(a, b)` assembles any rows of the extended block (for thin boundary
        pieces), so the owned block never has to be copied.
        """
        if len(self.comm_dims) != 1:
            raise ValueError("HaloExchange.wait_halo: only for exchanges along one dimension")
        t0 = time.perf_counter()
        _, x, steps, requests = self._pending
        self._pending = None
        self.d.comm.wait_all(requests)
        self._halo_source = (x, steps[0])
        self._count(t0)

    def rows(self, a, b):
        """Rows [a, b) (global indices along the split dimension) of the extended block, contiguous."""
        x, (k, shape, sends, recvs, local, _) = self._halo_source
        axis = 2 + k
        h = self.mine[k]
        out_shape = list(x.shape)
        out_shape[axis] = b - a
        out = array_module(x).empty(out_shape, x.dtype)
        lo, hi = max(a, h.own[0]), min(b, h.own[1])
        if hi > lo:
            out[self._take(out, axis, (lo - a, hi - a))] = x[self._take(x, axis, (lo - h.own[0], hi - h.own[0]))]
        for _, r, rbuf in recvs:
            lo, hi = max(a, h.need[0] + r[0]), min(b, h.need[0] + r[1])
            if hi > lo:
                start = h.need[0] + r[0]
                out[self._take(out, axis, (lo - a, hi - a))] = rbuf[self._take(rbuf, axis, (lo - start, hi - start))]
        return out

    def forward(self, x):
        """x: (N, C, *own) -> (N, C, *need), the block with its halos."""
        self.start(x)
        return self.finish()

    # --- the adjoint from halo pieces (one split dimension) --------------------------------------
    def reverse_pieces_start(self, pieces, lead, like):
        """Send the gradient of this rank's halo rows to their owners, without an extended block.

        pieces: [(first row, array)] with global row indices along the split dimension; together
        they hold the gradient of the halo rows (rows they do not cover count as zero). Arrays
        are (N, C, ...) with the other dims as in `trimmed`; `like` is an array of their dtype and device.
        Complete with `reverse_pieces_finish`.
        """
        t0 = time.perf_counter()
        steps = self._plan(tuple(lead), like, "reverse")
        k, shape, sends, recvs, local, _ = steps[0]
        axis = 2 + k
        origin = self.mine[k].need[0]
        for rank, r, sbuf in sends:
            lo, hi = origin + r[0], origin + r[1]
            covered = 0
            for first, piece in pieces:
                a, b = max(lo, first), min(hi, first + piece.shape[axis])
                if b > a:
                    sbuf[self._take(sbuf, axis, (a - lo, b - lo))] = piece[self._take(piece, axis, (a - first,
                                                                                                    b - first))]
                    covered += b - a
            if covered < hi - lo:
                # rows no piece covers: zero first, then the pieces again (rare: rows no output reads)
                sbuf[...] = 0
                for first, piece in pieces:
                    a, b = max(lo, first), min(hi, first + piece.shape[axis])
                    if b > a:
                        sbuf[self._take(sbuf, axis, (a - lo, b - lo))] = \
                            piece[self._take(piece, axis, (a - first, b - first))]
            self.bytes_sent += sbuf.nbytes
        requests = self.d.comm.exchange([(sbuf, rank, 31 + k) for rank, _, sbuf in sends],
                                        [(rbuf, rank, 31 + k) for rank, _, rbuf in recvs])
        self._pending_pieces = (steps[0], requests)
        self._count(t0)

    def reverse_pieces_finish(self, dx_own):
        """Add the halo gradients received from the other ranks into dx_own: (N, C, *own along the
        split dim, trimmed elsewhere); returns the gradient of the owned block (N, C, *own)."""
        t0 = time.perf_counter()
        (k, shape, sends, recvs, local, _), requests = self._pending_pieces
        self._pending_pieces = None
        self.d.comm.wait_all(requests)
        axis = 2 + k
        for rank, r, rbuf in recvs:
            dx_own[self._take(dx_own, axis, r)] += rbuf
        self._count(t0)
        return self._untrim(dx_own)

    # --- backward (the adjoint) --------------------------------------------------------------
    def _reverse_start(self, dx_ext):
        """Post the first messages of the adjoint for dx_ext: (N, C, *need)."""
        steps = self._plan(tuple(dx_ext.shape[:2]), dx_ext, "reverse")
        requests = self._post(steps[0], dx_ext, tag=21 + steps[0][0]) if steps else None
        self._pending = ("reverse", dx_ext, steps, requests)

    def _reverse_finish(self):
        _, buf, steps, requests = self._pending
        self._pending = None
        for i, step in enumerate(steps):
            if i > 0:
                requests = self._post(step, buf, tag=21 + step[0])
            buf = self._complete(step, buf, requests, accumulate=True)
        return self._untrim(buf)

    def reverse(self, dx_ext):
        """dx_ext: (N, C, *need) -> (N, C, *own): halo rows are added to their owners' blocks."""
        self.reverse_start(dx_ext)
        return self.reverse_finish()

    def _untrim(self, g):
        """Adjoint of `_trim`: zero rows that were trimmed away (a copy only when some were)."""
        pads = []
        for k in range(self.nd):
            h = self.mine[k]
            if k in self.comm_dims:
                pads.append((0, 0))
            else:
                pads.append((h.need[0] - h.own[0], h.own[1] - h.need[1]))
        if all(p == (0, 0) for p in pads):
            return g
        out = array_module(g).zeros(g.shape[:2] + self.own_shape, dtype=g.dtype)
        index = (slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, g.shape[2:]))
        out[index] = g
        return out

    # --- timed entry points -------------------------------------------------------------------
    def _count(self, t0):
        dt = time.perf_counter() - t0
        self.seconds += dt
        self.d.comm.clock.add("halo", dt)

    def start(self, x):
        """Post the first dimension's messages for x: (N, C, *own); finish() returns (N, C, *need)."""
        t0 = time.perf_counter()
        self._start(x)
        self._count(t0)

    def finish(self):
        t0 = time.perf_counter()
        out = self._finish()
        self._count(t0)
        return out

    def reverse_start(self, dx_ext):
        """Post the first messages of the adjoint for dx_ext: (N, C, *need)."""
        t0 = time.perf_counter()
        self._reverse_start(dx_ext)
        self._count(t0)

    def reverse_finish(self):
        t0 = time.perf_counter()
        out = self._reverse_finish()
        self._count(t0)
        return out
