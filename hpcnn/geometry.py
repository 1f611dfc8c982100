"""Pure index math of distributed tensors, with no MPI: blocks, windows, halos, grids.

Both the distributed layers (hpcnn.parallel) and the performance model (perfmodel) take their
rows from here, so the model prices exactly the rows that run.

Blocks. `size` items split into `parts` blocks: the first size % parts blocks get one more
(`block_range`). Every tensor is block-distributed over its own global size, so a strided
layer's output is split over the output size.

Windows. A window operation (convolution or pooling) along one dimension has kernel R, stride
s, dilation d and padding (lo, hi). For input size S the output size is

    O = (S + lo + hi - d * (R - 1) - 1) // s + 1

and output o reads the inputs o*s - lo + r*d for r = 0..R-1. An output block [o0, o1) reads
[o0*s - lo, (o1-1)*s - lo + d*(R-1) + 1), clipped to [0, S); the clipped parts become the
block's own per-side padding, so padding appears only at the global edges
(`window_input_range`). The needed range minus the owned block gives the halo widths per side
(`AxisHalo.widths`); a negative width means edge rows the block owns are not read (strided
layers) and are trimmed.

Halo pieces. When every block of the split dimensions reads all of its own rows, a convolution
can run on the owned block with the halo rows counted as zero padding, and the thin halo boxes
then add their part to the few outputs they reach (`halo_pieces`, `piece_padding` along one
dimension; `box_pieces`, `box_padding` over several), through only the kernel taps that reach
their rows (`piece_taps`).

Grids (how ranks are arranged over the batch, spatial dimensions, channels and filters) are
`hpcnn.grids`.
"""
import bisect
from collections import namedtuple

__all__ = [
    "as_tuple", "normalize_padding", "window_output_size", "WindowGeometry", "transposed_geometry",
    "transposed_output_shape", "bilinear_halo",
    "block_range", "block_ranges", "block_index", "window_input_range", "AxisHalo", "window_halo",
    "upsample_halo", "halo_reach", "halo_pieces", "piece_padding", "piece_taps", "box_padding", "box_pieces",
    "own_rows_suffice",
    "slab_runs",
]


# --- window arguments -----------------------------------------------------------------------------------------

def as_tuple(value, nd, name):
    """An int or a sequence of `nd` ints as a tuple of `nd` positive ints."""
    if isinstance(value, int):
        out = (value,) * nd
    else:
        out = tuple(int(v) for v in value)
    if len(out) != nd:
        raise ValueError(f"{name}: expected an int or {nd} ints, received {value!r}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name}: every entry must be at least 1, received {value!r}")
    return out


def normalize_padding(padding, nd, kernel=None, stride=None, dilation=None):
    """Padding as a tuple of (lo, hi) per spatial dimension.

    `padding` is an int, 'same', 'valid', a sequence of `nd` ints (symmetric), or a sequence of
    `nd` (lo, hi) pairs. 'same' follows PyTorch: stride 1 only, total d*(R-1) per dimension, the
    smaller half before.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding != "same":
            raise ValueError(f"padding: expected an int, 'same', 'valid' or per-dimension values, received {padding!r}")
        if kernel is None:
            raise ValueError("padding='same' needs the kernel size")
        if stride is not None and any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is only defined for stride 1, received stride {stride}")
        dilation = dilation or (1,) * nd
        out = []
        for r, d in zip(kernel, dilation):
            total = d * (r - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, received {padding}")
        return ((padding, padding),) * nd
    padding = tuple(padding)
    if len(padding) != nd:
        raise ValueError(f"padding: expected {nd} entries, received {padding!r}")
    out = []
    for p in padding:
        lo, hi = (p, p) if isinstance(p, int) else tuple(int(v) for v in p)
        if lo < 0 or hi < 0:
            raise ValueError(f"padding must be non-negative, received {padding!r}")
        out.append((int(lo), int(hi)))
    return tuple(out)


def window_output_size(size, kernel, stride, dilation, pad_lo, pad_hi):
    """Output length along one dimension (see the module docstring); 0 when the window does not fit."""
    span = dilation * (kernel - 1) + 1
    n = size + pad_lo + pad_hi - span
    return n // stride + 1 if n >= 0 else 0


class WindowGeometry:
    """Normalized geometry of a window operation over `nd` spatial dimensions."""

    __slots__ = ("nd", "kernel", "stride", "dilation", "padding")

    def __init__(self, nd, kernel, stride=1, padding=0, dilation=1):
        self.nd = nd
        self.kernel = as_tuple(kernel, nd, "kernel_size")
        self.stride = as_tuple(stride, nd, "stride")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.padding = normalize_padding(padding, nd, self.kernel, self.stride, self.dilation)

    def output_shape(self, spatial):
        """Output spatial shape for an input spatial shape."""
        return tuple(window_output_size(s, r, st, d, lo, hi) for s, r, st, d, (lo, hi)
                     in zip(spatial, self.kernel, self.stride, self.dilation, self.padding))

    def along(self, k):
        """(kernel, stride, dilation, pad_lo, pad_hi) along spatial dimension k."""
        return self.kernel[k], self.stride[k], self.dilation[k], self.padding[k][0], self.padding[k][1]

    def __eq__(self, other):
        return isinstance(other, WindowGeometry) and all(getattr(self, s) == getattr(other, s)
                                                         for s in self.__slots__)

    def __hash__(self):
        return hash(tuple(getattr(self, s) for s in self.__slots__))

    def __repr__(self):
        return (f"WindowGeometry(kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation})")


def transposed_output_shape(spatial, kernel, stride, padding, output_padding, dilation):
    """Output spatial shape of a transposed convolution (PyTorch's ConvTranspose): per dimension
    (S - 1) * s - 2 * p + d * (R - 1) + output_padding + 1."""
    return tuple((size - 1) * s - 2 * p + d * (r - 1) + op + 1 for size, r, s, p, op, d
                 in zip(spatial, kernel, stride, padding, output_padding, dilation))


def transposed_geometry(nd, kernel, stride, padding, output_padding, dilation):
    """The convolution whose adjoint a transposed convolution is: the WindowGeometry that maps the transposed
    layer's output (size O) back to its input (size S).

    A transposed convolution with symmetric padding p and output_padding op writes output row
    i * s - p + r * d from input row i; the convolution reading those rows has padding (p, p - op) when
    op <= p (its last window reaches p - op rows past the output), and (p, 0) otherwise, when the last
    op - p output rows are read by no window (they hold the bias only). Its output size is S when
    op - p < s; with a larger output_padding (allowed when the dilation exceeds the stride) it would be
    more, so callers pass S as `out_spatial` to `window_halo`.
    """
    kernel, stride, dilation = as_tuple(kernel, nd, "kernel_size"), as_tuple(stride, nd, "stride"), \
        as_tuple(dilation, nd, "dilation")
    padding = (padding,) * nd if isinstance(padding, int) else tuple(int(p) for p in padding)
    output_padding = (output_padding,) * nd if isinstance(output_padding, int) else \
        tuple(int(p) for p in output_padding)
    if len(padding) != nd or len(output_padding) != nd or min(padding + output_padding) < 0:
        raise ValueError(f"padding and output_padding: expected non-negative ints or {nd} of them, received "
                         f"{padding!r} and {output_padding!r}")
    for s, d, p, op in zip(stride, dilation, padding, output_padding):
        if op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than stride or dilation (as in PyTorch), received "
                             f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    pads = tuple((p, max(p - op, 0)) for p, op in zip(padding, output_padding))
    return WindowGeometry(nd, kernel, stride, pads, dilation)


# --- blocks ----------------------------------------------------------------------------------------------------

def block_range(size, parts, index):
    """[start, stop) of block `index` when `size` items go to `parts` blocks; the first size % parts get one more."""
    base, extra = divmod(size, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def block_ranges(size, parts):
    """[(start, stop)] of every block."""
    return [block_range(size, parts, i) for i in range(parts)]


def block_index(size, parts, x):
    """The block of `block_range(size, parts, .)` that holds item x."""
    base, extra = divmod(size, parts)
    big = extra * (base + 1)
    return x // (base + 1) if x < big else extra + (x - big) // max(base, 1)


# --- windows and halos -----------------------------------------------------------------------------------------

def window_input_range(o_lo, o_hi, size, kernel, stride, dilation, pad_lo):
    """Input rows that outputs [o_lo, o_hi) of a window op read, clipped to [0, size).

    Returns (a, b, pad_lo, pad_hi): rows [a, b) and the per-side padding that replaces the
    clipped part, so that a window op with that padding on rows [a, b) yields o_hi - o_lo outputs.
    """
    if o_hi <= o_lo:
        a = min(max(o_lo * stride - pad_lo, 0), size)
        return a, a, 0, 0
    start = o_lo * stride - pad_lo
    stop = (o_hi - 1) * stride - pad_lo + dilation * (kernel - 1) + 1
    a = min(max(start, 0), size)
    b = max(min(stop, size), a)
    return a, b, a - start, stop - b


class AxisHalo(namedtuple("AxisHalo", "own need pad out")):
    """One block along one spatial dimension: owned input rows, needed input rows, the padding (lo, hi)
    that stands in for rows outside the image, and the output block."""

    __slots__ = ()

    @property
    def widths(self):
        """Halo rows (lo, hi) this block reads beyond its own; negative: own edge rows it does not read."""
        return self.own[0] - self.need[0], self.need[1] - self.own[1]


def window_halo(parts, spatial, geometry, out_spatial=None):
    """[[AxisHalo per block] per spatial dim] of a window op on input spatial shape `spatial`.

    parts: the number of blocks along each spatial dimension (a grid's spatial entries); out_spatial: the
    output shape when it is not the geometry's (a transposed convolution's input, see transposed_geometry).
    """
    out_spatial = geometry.output_shape(spatial) if out_spatial is None else tuple(out_spatial)
    halo = []
    for k, (size, osize) in enumerate(zip(spatial, out_spatial)):
        kernel, stride, dilation, pad_lo, _ = geometry.along(k)
        axis = []
        for own, out in zip(block_ranges(size, parts[k]), block_ranges(osize, parts[k])):
            a, b, plo, phi = window_input_range(out[0], out[1], size, kernel, stride, dilation, pad_lo)
            axis.append(AxisHalo(own, (a, b), (plo, phi), out))
        halo.append(axis)
    return halo


def upsample_halo(parts, spatial, scale):
    """Like `window_halo` for nearest upsampling by integer factors `scale` (one per dim)."""
    halo = []
    for k, (size, f) in enumerate(zip(spatial, scale)):
        axis = []
        for own, (o0, o1) in zip(block_ranges(size, parts[k]), block_ranges(size * f, parts[k])):
            a, b = (o0 // f, (o1 - 1) // f + 1) if o1 > o0 else (min(o0 // f, size),) * 2
            axis.append(AxisHalo(own, (a, b), (0, 0), (o0, o1)))
        halo.append(axis)
    return halo


def bilinear_halo(parts, spatial, scale):
    """Like `window_halo` for bilinear upsampling (align_corners=False) by integer factors `scale`: an output
    block [o0, o1) interpolates input rows [o0 // f, (o1 - 1) // f + 1) and one row on either side, clipped
    to the image (at its edges the edge row is repeated, which needs no halo)."""
    halo = []
    for k, (size, f) in enumerate(zip(spatial, scale)):
        axis = []
        for own, (o0, o1) in zip(block_ranges(size, parts[k]), block_ranges(size * f, parts[k])):
            if o1 > o0:
                a, b = max(o0 // f - 1, 0), min((o1 - 1) // f + 2, size)
            else:
                a = b = min(o0 // f, size)
            axis.append(AxisHalo(own, (a, b), (0, 0), (o0, o1)))
        halo.append(axis)
    return halo


def halo_reach(axis):
    """How many blocks away along one dimension a block reads rows from (0: its own only, 1: neighbours)."""
    # the owned blocks are consecutive ranges in order (empty ones between), so the blocks a read meets
    # are found by bisection: O(g log g) for g blocks (the planner asks this for thousands of blocks)
    filled = [(q, h.own) for q, h in enumerate(axis) if h.own[1] > h.own[0]]
    los = [lo for _, (lo, _) in filled]
    his = [hi for _, (_, hi) in filled]
    reach = 0
    for c, h in enumerate(axis):
        a, b = h.need
        if b <= a:
            continue
        first, last = bisect.bisect_right(his, a), bisect.bisect_left(los, b) - 1
        if first <= last:
            reach = max(reach, abs(filled[first][0] - c), abs(filled[last][0] - c))
    return reach


def own_rows_suffice(axis):
    """True when every block along this dimension owns rows and reads all of them (halo pieces apply)."""
    return all(h.own[1] > h.own[0] and h.need[0] <= h.own[0] and h.need[1] >= h.own[1] for h in axis)


def piece_padding(o_lo, o_hi, r0, r1, size, kernel, stride, dilation, pad_lo):
    """Padding (lo, hi) along one dimension that makes rows [r0, r1) the only input of outputs [o_lo, o_hi)."""
    ra, rb, plo, phi = window_input_range(o_lo, o_hi, size, kernel, stride, dilation, pad_lo)
    return plo + r0 - ra, phi + rb - r1


def piece_taps(rows, outputs, kernel, stride, dilation, pad):
    """The kernel taps [t0, t1) along one dimension through which `outputs` outputs read any of `rows` input
    rows under padding pad = (lo, hi), and the padding that gives the same outputs from those taps alone.

    A halo piece is a few rows that the window reaches only at its edge (one tap of a 3-wide kernel): the
    taps that read padding only add zeros, so the piece is convolved with the kernel cut to [t0, t1), a
    fraction of the work. Returns ((t0, t1), (lo, hi)); the whole kernel and `pad` when cutting it would
    need negative padding (a tap range that skips rows of the box).
    """
    lo, hi = pad
    hit = [t for t in range(kernel)
           if any(0 <= o * stride + t * dilation - lo < rows for o in range(outputs))]
    if not hit:
        return (0, kernel), (lo, hi)
    t0, t1 = hit[0], hit[-1] + 1
    cut = (lo - t0 * dilation, hi - (kernel - t1) * dilation)
    if min(cut) < 0:
        return (0, kernel), (lo, hi)
    return (t0, t1), cut


def halo_pieces(h, size, kernel, stride, dilation, pad_lo):
    """[(o_lo, o_hi, r0, r1)]: a block's halo rows [r0, r1) on each side and the outputs whose windows reach them.

    h: the block's AxisHalo along the split dimension of input size `size`. The owned block alone
    (halo rows counted as zero padding) gives every output its own-row part; each piece adds the
    rest for its outputs.
    """
    span = dilation * (kernel - 1) + 1
    (i0, i1), (a, b), (o0, o1) = h.own, h.need, h.out
    pieces = []
    if a < i0:
        o_hi = min(o1, max(o0, -(-(i0 + pad_lo) // stride)))
        if o_hi > o0:
            rb = window_input_range(o0, o_hi, size, kernel, stride, dilation, pad_lo)[1]
            if min(i0, rb) > a:
                pieces.append((o0, o_hi, a, min(i0, rb)))
    if b > i1:
        o_lo = max(o0, min(o1, (i1 + pad_lo - span) // stride + 1))
        if o1 > o_lo:
            ra = window_input_range(o_lo, o1, size, kernel, stride, dilation, pad_lo)[0]
            if b > max(i1, ra):
                pieces.append((o_lo, o1, max(i1, ra), b))
    return pieces


def slab_runs(shape, k, rows):
    """Contiguous runs of memory in a slab of `rows` along spatial dimension k of a C-ordered (n, c, *S)
    array (what packing or unpacking a halo walks): one when the slab is the whole array, else n * c *
    prod(S[:k]), so a slab along the last, contiguous axis is many short runs and one along the first a few
    long ones."""
    if rows >= shape[2 + k]:
        return 1
    runs = 1
    for e in shape[:2 + k]:
        runs *= e
    return max(runs, 1)


def box_padding(out_box, in_box, spatial, geometry):
    """`piece_padding` along every dim: the padding that makes the input box `in_box` ((lo, hi) per spatial
    dim) the only input of the output box `out_box`."""
    return tuple(piece_padding(o[0], o[1], r[0], r[1], size, *geometry.along(k)[:4])
                 for k, (o, r, size) in enumerate(zip(out_box, in_box, spatial)))


def box_pieces(blocks, dims, spatial, geometry):
    """A block's convolution with halos along `dims` as a sum of boxes, each convolved alone.

    blocks: the block's AxisHalo per spatial dim; dims: the exchanged dims, each with `own_rows_suffice`
    on its line. The owned box (`own` along dims, `need` elsewhere) with the halo counted as zero padding
    gives every output its own part; each piece (out_box, in_box) adds the part of the halo box in_box
    to the outputs out_box it reaches: along the i-th of dims the rows of `halo_pieces`, spanning `own`
    along the dims before it and `need` along those after (the corners go with the earliest dim), so
    the pieces and the owned box partition the extended block.
    Each piece is convolved with the kernel cut to the taps that reach its rows along its dim (`piece_taps`;
    the whole kernel along the others), and its padding is the cut kernel's.
    Returns (own box, its padding, [(out_box, in_box, padding, taps)]), taps a (t0, t1) per spatial dim.
    """
    out_all = tuple(h.out for h in blocks)
    own = tuple(h.own if k in dims else h.need for k, h in enumerate(blocks))
    pieces = []
    for i, k in enumerate(dims):
        frame = list(tuple(h.need for h in blocks))
        for j in dims[:i]:
            frame[j] = blocks[j].own
        kernel, stride, dilation, pad_lo, _ = geometry.along(k)
        for o_lo, o_hi, r0, r1 in halo_pieces(blocks[k], spatial[k], kernel, stride, dilation, pad_lo):
            out_box = out_all[:k] + ((o_lo, o_hi),) + out_all[k + 1:]
            in_box = tuple(frame[:k]) + ((r0, r1),) + tuple(frame[k + 1:])
            pads = list(box_padding(out_box, in_box, spatial, geometry))
            taps = [(0, e) for e in geometry.kernel]
            taps[k], pads[k] = piece_taps(r1 - r0, o_hi - o_lo, kernel, stride, dilation, pads[k])
            pieces.append((out_box, in_box, tuple(pads), tuple(taps)))
    return own, box_padding(out_all, own, spatial, geometry), pieces
