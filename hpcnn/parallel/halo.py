"""The halo exchange and its adjoint (the geometry it moves is `hpcnn.geometry`'s).

A window layer's output block reads the input rows `hpcnn.geometry.window_halo` gives (`need`),
which may lie partly in other ranks' blocks (`own`). Small and empty blocks are handled, not
refused: the exchange along a dimension sends each rank of the line exactly the intersection
of what it needs with what the sender owns, so a halo wider than the neighbouring block is
assembled from several ranks, and an empty block sends and receives nothing (its layer
computes an empty output).

Boxes. Every piece of data here is a box of the global index space: one (lo, hi) per spatial
dimension, with an array of shape (N, C, *box sizes). The owned block is the box `own` along the
exchanged dims (the others are trimmed to `need`, a view); the extended block is the box `need`.

Exchange. One spatial dimension at a time, non-blocking point-to-point; the slab sent along a
later dimension spans the `need` extent of the earlier ones (their halos, received before), so
corners arrive without diagonal messages. The step along dim k moves boxes that span `need` along
the exchanged dims before k, `own` along those after it; the slabs received partition the halo.
Slabs are packed from the owned block and the slabs already received, never from a copy of the
whole block: after `wait_halo` the halo is held as those slabs (`box` assembles any box of the
extended block from them), and `finish` allocates the extended block once, copies the owned
block in once and the slabs into their places. Pack/unpack buffers are allocated once per local
shape and reused, on the device of the block (numpy, cupy or the emulated GPU); the messages of
one step go out as one batch (`Communicator.exchange`: one stream synchronisation for all of
them). The extended block is allocated per call and dropped after it: a layer uses it within one
forward call and exchanges the halo again in backward rather than keeping it, so a distributed
layer keeps no more activation memory than the single-process one.

Backward. The exchange is linear; its adjoint (`HaloExchange.reverse`) sends the halo part of
dx back to the rank that owns those rows, which adds it to its own block: the steps in reverse
order, each slab the sum of what this rank holds of that box (its gradient and the slabs received
at the steps before), so no per-dimension copy of the block is made either. This choice, rather
than exchanging the halo of dy, is exact for every stride, dilation and pooling window, and
needs no second copy of the forward geometry for the backward pass. `reverse_pieces_start/finish`
is the same adjoint for a layer that holds only the gradient of its halo boxes (thin pieces; see
`hpcnn.parallel.conv.DistConv`), so that no extended gradient block is ever allocated.

Overlap. `start` posts the first dimension's messages and returns; the caller computes what needs
no halo (a convolution's owned block, with the halo rows counted as zero padding) and then calls
`finish` or `wait_halo` (measured by `hpcnn bench halo`, overlap on/off).
"""
import time

from ..backend import array_module

__all__ = ["HaloExchange"]

def _intersect(r, s):
    lo, hi = max(r[0], s[0]), min(r[1], s[1])
    return (lo, hi) if hi > lo else None


def _box_intersect(a, b):
    """The common part of two boxes, or None when empty."""
    out = []
    for r, s in zip(a, b):
        r = _intersect(r, s)
        if r is None:
            return None
        out.append(r)
    return tuple(out)


def _at(part, box):
    """Index of box `part` inside an array holding box `box` (leading N, C untouched)."""
    return (slice(None), slice(None)) + tuple(slice(p[0] - b[0], p[1] - b[0]) for p, b in zip(part, box))


def _size(box):
    return tuple(hi - lo for lo, hi in box)


def _copy_from(out, box, sources):
    """out (box) = the sources' parts of box (the sources are disjoint and cover it)."""
    for sbox, a in sources:
        part = _box_intersect(box, sbox)
        if part is not None:
            out[_at(part, box)] = a[_at(part, sbox)]


def _sum_from(out, box, sources, zero=True):
    """out (box) (+)= the sum of the sources' parts of box (rows no source covers are zero)."""
    if zero:
        out[...] = 0
    for sbox, a in sources:
        part = _box_intersect(box, sbox)
        if part is not None:
            out[_at(part, box)] += a[_at(part, sbox)]


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
        self._pending_pieces = None
        self._sources = None
        self.bytes_sent = 0
        self.extended_blocks = 0    # extended blocks (N, C, *need) allocated by `finish` (one per call at most)
        self.seconds = 0.0      # time spent in this exchange's calls (packing, waiting, unpacking)

    # --- the pieces -----------------------------------------------------------------------
    @property
    def own_shape(self):
        return tuple(h.own[1] - h.own[0] for h in self.mine)

    @property
    def need_shape(self):
        return tuple(h.need[1] - h.need[0] for h in self.mine)

    @property
    def need_box(self):
        """The extended block's box: `need` along every dim."""
        return tuple(h.need for h in self.mine)

    @property
    def own_box(self):
        """The box of the trimmed owned block (`trimmed`): `own` along the exchanged dims, `need` elsewhere."""
        return tuple(h.own if k in self.comm_dims else h.need for k, h in enumerate(self.mine))

    @property
    def pads(self):
        """Per-side padding (lo, hi) of the extended block, per spatial dim (nonzero only at global edges)."""
        return tuple(h.pad for h in self.mine)

    def _ranges(self, k, which):
        return [getattr(h, which) for h in self.halo[k]]

    def _plan(self, lead, like, direction):
        """[(dim, sends, recvs)] per step, in the order of the direction, with sends and recvs
        [(rank, box, buffer)]; made on first use per leading shape, dtype, array module and direction
        (the buffers live where `like` lives).

        The step along dim k moves boxes spanning `need` along the exchanged dims before k and `own`
        along those after it (`need` along the others); forward, rank c sends rank q the rows
        own[c] & need[q] along k, and the adjoint sends them back the other way.
        """
        xp, dtype = array_module(like), like.dtype
        key = (lead, str(dtype), xp.__name__, direction)
        if key in self._buffers:
            return self._buffers[key]
        steps = []
        for i, k in enumerate(self.comm_dims):
            c = self.d.coords[1 + k]
            own, need = self._ranges(k, "own"), self._ranges(k, "need")
            line = self.d.line(1 + k)
            frame = list(self.need_box)
            for j in self.comm_dims[i + 1:]:
                frame[j] = self.mine[j].own
            out, into = [], []      # forward sends, forward receives
            for q in range(len(line)):
                if q == c:
                    continue
                for rows, target in ((_intersect(own[c], need[q]), out), (_intersect(need[c], own[q]), into)):
                    if rows is not None:
                        box = tuple(frame[:k]) + (rows,) + tuple(frame[k + 1:])
                        if all(hi > lo for lo, hi in box):
                            target.append((line[q], box, xp.empty(lead + _size(box), dtype)))
            steps.append((k, out, into) if direction == "forward" else (k, into, out))
        if direction != "forward":
            steps.reverse()
        self._buffers[key] = steps
        return steps

    def _post(self, step, sources, tag, accumulate):
        k, sends, recvs = step
        for _, box, sbuf in sends:
            if accumulate:
                _sum_from(sbuf, box, sources)
            else:
                _copy_from(sbuf, box, sources)
            self.bytes_sent += sbuf.nbytes
        return self.d.comm.exchange([(sbuf, rank, tag + k) for rank, _, sbuf in sends],
                                    [(rbuf, rank, tag + k) for rank, _, rbuf in recvs])

    def _run(self, pending, tag, accumulate):
        """Complete the steps of a started exchange: wait for a step, pack and post the next from what
        this rank now holds; returns the sources [(box, array)]: the given ones and every slab received."""
        sources, steps, requests = pending
        for i, step in enumerate(steps):
            if i > 0:
                requests = self._post(step, sources, tag, accumulate)
            self.d.comm.wait_all(requests)
            sources = sources + [(box, rbuf) for _, box, rbuf in step[2]]
        return sources

    def trimmed(self, x):
        """x: (N, C, *own) with the dims that exchange nothing sliced to `need` (a view)."""
        index = [slice(None)] * x.ndim
        for k in range(self.nd):
            if k in self.comm_dims:
                continue
            h = self.mine[k]
            index[2 + k] = slice(h.need[0] - h.own[0], h.need[1] - h.own[0])
        return x[tuple(index)]

    # --- forward ---------------------------------------------------------------------------
    def _start(self, x):
        x = self.trimmed(x)
        steps = self._plan(tuple(x.shape[:2]), x, "forward")
        sources = [(self.own_box, x)]
        requests = self._post(steps[0], sources, 11, False) if steps else []
        self._pending = (sources, steps, requests)

    def _finish(self):
        pending, self._pending = self._pending, None
        sources = self._run(pending, 11, False)
        own, x = sources[0]
        if _box_intersect(self.need_box, own) == self.need_box:
            return x[_at(self.need_box, own)]    # the owned block holds it all: a view
        out = array_module(x).empty(x.shape[:2] + self.need_shape, x.dtype)
        self.extended_blocks += 1
        _copy_from(out, self.need_box, sources)
        return out

    def wait_halo(self):
        """Complete a start() without building the extended block: the halo stays in its slabs, and
        `box` assembles any box of the extended block from them (thin boundary pieces), so the owned
        block is never copied."""
        t0 = time.perf_counter()
        pending, self._pending = self._pending, None
        self._sources = self._run(pending, 11, False)
        self._count(t0)

    def box(self, box):
        """The extended block over `box` (global (lo, hi) per spatial dim, inside `need_box`), contiguous:
        (N, C, *box sizes), assembled from the owned block and the slabs of the last `wait_halo`."""
        x = self._sources[0][1]
        out = array_module(x).empty(x.shape[:2] + _size(box), x.dtype)
        _copy_from(out, box, self._sources)
        return out

    def forward(self, x):
        """x: (N, C, *own) -> (N, C, *need), the block with its halos."""
        self.start(x)
        return self.finish()

    # --- the adjoint from halo pieces ------------------------------------------------------------
    def reverse_pieces_start(self, pieces, lead, like):
        """Send the gradient of this rank's halo boxes to their owners, without an extended block.

        pieces: [(box, array)] with global boxes inside `need_box`, disjoint from `own_box`: together
        they hold the gradient of the halo (what they do not cover counts as zero); arrays are
        (N, C, *box sizes). `lead` is (N, C) and `like` an array of their dtype and device.
        Complete with `reverse_pieces_finish`.
        """
        t0 = time.perf_counter()
        steps = self._plan(tuple(lead), like, "reverse")
        sources = list(pieces)
        requests = self._post(steps[0], sources, 31, True) if steps else []
        self._pending_pieces = (sources, steps, requests)
        self._count(t0)

    def reverse_pieces_finish(self, dx_own):
        """Add the halo gradients received from the other ranks into dx_own: (N, C, *own along the
        exchanged dims, trimmed elsewhere); returns the gradient of the owned block (N, C, *own)."""
        t0 = time.perf_counter()
        pending, self._pending_pieces = self._pending_pieces, None
        sources = self._run(pending, 31, True)
        _sum_from(dx_own, self.own_box, sources[len(pending[0]):], zero=False)
        self._count(t0)
        return self._untrim(dx_own)

    # --- backward (the adjoint) --------------------------------------------------------------
    def _reverse_start(self, dx_ext):
        steps = self._plan(tuple(dx_ext.shape[:2]), dx_ext, "reverse")
        sources = [(self.need_box, dx_ext)]
        requests = self._post(steps[0], sources, 21, True) if steps else []
        self._pending = (sources, steps, requests)

    def _reverse_finish(self):
        pending, self._pending = self._pending, None
        sources = self._run(pending, 21, True)
        dx_ext = sources[0][1]
        if len(sources) == 1 and self.own_box == self.need_box:
            return self._untrim(dx_ext)
        # the owned rows once: dx_ext's part (it covers them unless rows were trimmed), then the slabs received
        own = self.own_box
        out = array_module(dx_ext).empty(dx_ext.shape[:2] + _size(own), dx_ext.dtype)
        covers = _box_intersect(own, self.need_box) == own
        if covers:
            out[...] = dx_ext[_at(own, self.need_box)]
        _sum_from(out, own, sources[1:] if covers else sources, zero=not covers)
        return self._untrim(out)

    def reverse(self, dx_ext):
        """dx_ext: (N, C, *need) -> (N, C, *own): halo rows are added to their owners' blocks."""
        self.reverse_start(dx_ext)
        return self.reverse_finish()

    def _untrim(self, g):
        """Adjoint of `trimmed`: zero rows that were trimmed away (a copy only when some were)."""
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
