"""The kernel calls calibration times: drawn from a seeded generator of layers and splits, never from a model zoo.

A draw is a layer (2-D or 3-D, 1-512 channels, kernel 1-7, stride 1-2, dilation 1-4, padding
'same'-like, zero or uneven per side, batch 1-8) and a way of splitting it (none, the batch, one
spatial dimension in 2-4 blocks — the contiguous W axis as often as the others —, or two at once),
and one rank's block of it, chosen at random. The calls are the ones that block really makes, from
the same geometry the distributed layers run (`hpcnn.geometry`): a convolution whose split
dimensions read all their own rows calls the kernels on its owned block and on its thin halo
pieces (`hpcnn.geometry.box_pieces`); any other window layer calls them on its extended block; pointwise layers on the owned
block. So the samples cover whole layers, blocks, edge blocks and one-row pieces along every axis,
whatever models are later evaluated (`hpcnn bench model` evaluates on its own held-out set).

    sample_shapes(op, np.random.default_rng(seed), count) -> [call dict]
"""
import math

from ..geometry import WindowGeometry, block_range, box_pieces, own_rows_suffice, slab_runs, window_halo
from perfmodel.kernel_models import operation_features

__all__ = ["sample_shapes", "sample_layer", "block_calls"]

_CHANNELS = (1, 2, 3, 4, 8, 12, 16, 18, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_SIDES_2D = (4, 6, 7, 8, 12, 14, 16, 24, 28, 32, 48, 56, 64, 96, 128, 192, 256, 384, 512, 768)
_SIDES_3D = (4, 6, 8, 12, 16, 24, 32, 48, 64)
_ELEMENTS_MAX = 3e7
# Pooling and normalization calls above this many elements are memory bound (their time per element no longer
# changes) and take long enough that a budget of minutes buys only a few of them.
_ELEMENTS_MAX_PASS = 8e6


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


def sample_layer(op, rng):
    """One random layer for `op`: dict(nd, n, c, k, spatial, geometry, kind)."""
    nd = 3 if rng.random() < 0.3 else 2
    n = int(_pick(rng, (1, 1, 2, 3, 4, 8)))
    base = int(_pick(rng, _SIDES_3D if nd == 3 else _SIDES_2D))
    spatial = tuple(max(2, int(round(base * _pick(rng, (1.0, 1.0, 1.0, 0.5, 0.75, 1.25))))) for _ in range(nd))
    c, k = int(_pick(rng, _CHANNELS)), int(_pick(rng, _CHANNELS))
    geometry, kind = None, None
    if op.startswith("conv_"):
        r = int(_pick(rng, (1, 2, 3, 3, 3, 5, 7) if nd == 2 else (1, 2, 3, 3, 5)))
        stride = 2 if (r > 1 and rng.random() < 0.2) else 1
        dilation = int(_pick(rng, (1, 1, 1, 2, 4))) if stride == 1 and r > 1 else 1
        span = dilation * (r - 1)
        mode = rng.random()
        if mode < 0.6:
            padding = tuple((span // 2, span - span // 2) for _ in range(nd))       # 'same'-like, uneven for even r
        elif mode < 0.8:
            padding = ((0, 0),) * nd
        else:
            padding = tuple((int(rng.integers(0, span + 1)), int(rng.integers(0, span + 1))) for _ in range(nd))
        geometry = WindowGeometry(nd, r, stride, padding, dilation)
    elif op.startswith("pool_"):
        r = int(_pick(rng, (2, 2, 3)))
        pad = 1 if r == 3 and rng.random() < 0.5 else 0
        geometry = WindowGeometry(nd, r, 2 if rng.random() < 0.8 else 1, pad)
        kind = "max" if rng.random() < 0.7 else "avg"
    if geometry is not None and min(geometry.output_shape(spatial)) < 1:
        return sample_layer(op, rng)
    return dict(nd=nd, n=n, c=c, k=k, spatial=spatial, geometry=geometry, kind=kind)


def _sample_grid(layer, rng):
    """(sample parts, spatial parts per dim) of a random split of `layer`."""
    nd, spatial = layer["nd"], layer["spatial"]
    parts = [1] * nd
    mode = rng.random()
    pn = 1
    if mode < 0.25:
        pass
    elif mode < 0.4:
        pn = int(_pick(rng, (2, 3, 4)))
    elif mode < 0.85:
        parts[int(rng.integers(nd))] = int(_pick(rng, (2, 2, 3, 4)))
    else:
        dims = rng.permutation(nd)[:2]
        for d in dims:
            parts[int(d)] = 2
    parts = [min(p, s) for p, s in zip(parts, spatial)]
    return min(pn, layer["n"]), tuple(parts)


def _sizes(box):
    return tuple(hi - lo for lo, hi in box)


def _window_call(layer, n, in_sizes, out_sizes, padding, kernel=None):
    """One window-kernel call; `kernel` the cut kernel of a halo piece (`hpcnn.geometry.piece_taps`)."""
    g = layer["geometry"]
    call = dict(n=n, c=layer["c"], in_spatial=tuple(in_sizes), kernel=kernel or g.kernel,
                out_spatial=tuple(out_sizes),
                stride=g.stride, padding=tuple(padding))
    if layer["kind"] is None:
        call.update(k=layer["k"], dilation=g.dilation)
    else:
        call["kind"] = layer["kind"]
    return call


def block_calls(layer, pn, parts, coords):
    """The kernel calls of the block at `coords` (sample block, then one coordinate per spatial dim)."""
    n0, n1 = block_range(layer["n"], pn, coords[0])
    n = n1 - n0
    spatial = layer["spatial"]
    g = layer["geometry"]
    if n == 0:
        return []
    if g is None:   # pointwise: the owned block
        own = tuple(b - a for a, b in (block_range(s, p, c) for s, p, c in zip(spatial, parts, coords[1:])))
        return [dict(n=n, c=layer["c"], in_spatial=own)] if min(own) > 0 else []
    halo = window_halo(parts, spatial, g)
    mine = [halo[k][coords[1 + k]] for k in range(layer["nd"])]
    if any(h.out[1] <= h.out[0] for h in mine):
        return []
    out = tuple(h.out[1] - h.out[0] for h in mine)
    exchanged = [k for k in range(layer["nd"]) if parts[k] > 1 and any(h.own != h.need for h in halo[k])]
    if layer["kind"] is None and exchanged and all(own_rows_suffice(halo[k]) for k in exchanged):
        own, pads, pieces = box_pieces(mine, exchanged, spatial, g)
        calls = [_window_call(layer, n, _sizes(own), out, pads)]
        calls += [_window_call(layer, n, _sizes(in_box), _sizes(out_box), p, tuple(t1 - t0 for t0, t1 in taps))
                  for out_box, in_box, p, taps in pieces]
        return calls
    return [_window_call(layer, n, [m.need[1] - m.need[0] for m in mine], out, [m.pad for m in mine])]


def _small_enough(op, call):
    elements = call.get("n", 1) * call.get("c", 1) * math.prod(call.get("in_spatial", ()))
    if op.startswith("conv_"):
        keys = {key: call[key] for key in ("n", "c", "k", "in_spatial", "kernel", "out_spatial")}
        flops = operation_features(op, **keys)["flops"]
        # above ~1e9 flops a call is a large GEMM whose time is linear in its flops; such calls take a second
        # with their repetitions, and a budget of minutes is better spent on more, smaller ones
        return 1e4 <= flops <= 1.5e9 and elements <= _ELEMENTS_MAX
    return 16 <= elements <= (_ELEMENTS_MAX_PASS if op.startswith(("pool_", "batchnorm_")) else _ELEMENTS_MAX)


def _copy_call(layer, rng):
    """A copy of a layer's whole block (one contiguous run), or of a halo slab of a few rows along one
    spatial dimension (a pack: the contiguous last axis as often as the others), as the halo exchange makes:
    dict(shape (n, c, *S) of the source, axis (None: whole) and rows of the slab, nbytes, runs)."""
    shape = (layer["n"], layer["c"]) + tuple(layer["spatial"])
    if rng.random() < 0.3:
        return dict(shape=shape, axis=None, rows=0, nbytes=4 * math.prod(shape), runs=1)
    k = int(rng.integers(layer["nd"]))
    size = shape[2 + k]
    rows = min(int(_pick(rng, (1, 1, 2, 3, 4, 8, max(size // 2, 1)))), size)
    return dict(shape=shape, axis=k, rows=rows, nbytes=4 * math.prod(shape) // size * rows,
                runs=slab_runs(shape, k, rows))


def sample_shapes(op, rng, count):
    """`count` kernel calls for `op` from random layers, splits and blocks (see the module docstring)."""
    out = []
    while len(out) < count:
        if op == "gemm":
            out.append(dict(m=int(_pick(rng, (1, 2, 4, 8, 16, 32, 64))),
                            gemm_k=int(_pick(rng, (16, 64, 256, 512, 2048, 8192))),
                            gemm_n=int(_pick(rng, (2, 4, 10, 64, 128, 1000)))))
            continue
        layer = sample_layer(op, rng)
        if op == "copy":
            call = _copy_call(layer, rng)
            if 64 <= call["nbytes"] and 4 * math.prod(call["shape"]) <= 1.2e8:
                out.append(call)
            continue
        pn, parts = _sample_grid(layer, rng)
        coords = (int(rng.integers(pn)),) + tuple(int(rng.integers(p)) for p in parts)
        for call in block_calls(layer, pn, parts, coords):
            if _small_enough(op, call) and len(out) < count:
                out.append(call)
    return out
