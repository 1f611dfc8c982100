"""Max and average pooling over 2-D and 3-D data (numpy + numba), with PyTorch's semantics.

The volumes (samples x channels) of one call are split over the convolution's worker threads
(`_workers.in_volumes`), each part a compiled loop that releases the GIL.
"""
import numba
import numpy as np

from ..checks import check_argmax, check_dy_shape, pool_backward_spatial, pool_geometry, spatial_dims
from ._workers import as_volumes, in_volumes

__all__ = ["maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward"]

# Every kernel works on a (B, D, H, W) volume with B = N*C; 2-D data is a volume with D = 1,
# so one compiled loop nest serves both ranks.


def _taps(out_size, in_size, kernel, stride, dilation, pad_lo):
    """For each output index along one dimension, the range [begin, end) of kernel taps that land
    inside the input (the others read padding). Empty when the whole window is padding."""
    start = np.arange(out_size, dtype=np.int64) * stride - pad_lo
    begin = np.clip(-(start // dilation), 0, kernel)
    end = np.clip(-((start - in_size) // dilation), 0, kernel)
    return begin, np.maximum(end, begin)


def _outputs_per_tap(out_size, in_size, kernel, stride, dilation, pad_lo):
    """For each kernel tap along one dimension, the range [begin, end) of outputs whose input
    index o*stride - pad_lo + tap*dilation lies inside the input."""
    offset = np.arange(kernel, dtype=np.int64) * dilation - pad_lo
    begin = np.clip(-(offset // stride), 0, out_size)
    end = np.clip(-((offset - in_size) // stride), 0, out_size)
    return begin, np.maximum(end, begin)


def _window_bounds(geom, spatial, out_spatial):
    """The loop bounds every pooling kernel takes, for a (D, H, W) volume (D = 1 for 2-D data).

    Along D and H: per output index, the valid taps [begin, end), the input index of tap 0, and
    the dilation. Along W (the contiguous axis, looped innermost over outputs): per tap, the valid
    outputs; stride, dilation, low padding; per output, its first valid tap (-1: none); the kernel size.
    """
    lead = 3 - geom.nd
    dims = list(zip((1,) * lead + tuple(out_spatial), (1,) * lead + tuple(spatial),
                    (1,) * lead + geom.kernel, (1,) * lead + geom.stride, (1,) * lead + geom.dilation,
                    (0,) * lead + tuple(lo for lo, _ in geom.padding)))
    bounds = []
    for o, s, k, st, d, lo in dims[:2]:
        bounds.extend(_taps(o, s, k, st, d, lo))
        bounds.append(np.arange(o, dtype=np.int64) * st - lo)
        bounds.append(d)
    o, s, k, st, d, lo = dims[2]
    bounds.extend(_outputs_per_tap(o, s, k, st, d, lo))
    begin, end = _taps(o, s, k, st, d, lo)
    bounds.extend((st, d, lo, np.where(begin < end, begin, -1), k))
    return tuple(bounds)


# --- max pooling -----------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _maxpool_forward_volume(x, y, argmax, bd, ed, zd, dd, bh, eh, zh, dh, wb, we, sw, dw, pw, first_rw, kw):
    B, D, H, W = x.shape
    _, OD, OH, OW = y.shape
    xf = x.reshape((B, D * H * W))
    for b in range(B):
        xb = xf[b]
        for od in range(OD):
            for oh in range(OH):
                best = y[b, od, oh]
                where = argmax[b, od, oh]
                best[:] = -np.inf
                # PyTorch starts each window at -inf with the index of its first in-bounds element;
                # a later element wins only when strictly greater (or NaN), so ties keep the first.
                # Taps are visited in scan order, so each output sees its window in scan order.
                if bd[od] < ed[od] and bh[oh] < eh[oh]:
                    row = ((zd[od] + bd[od] * dd) * H + zh[oh] + bh[oh] * dh) * W - pw
                    for ow in range(OW):
                        where[ow] = row + ow * sw + first_rw[ow] * dw if first_rw[ow] >= 0 else -1
                else:
                    where[:] = -1
                for rd in range(bd[od], ed[od]):
                    for rh in range(bh[oh], eh[oh]):
                        row = ((zd[od] + rd * dd) * H + zh[oh] + rh * dh) * W - pw
                        for rw in range(kw):
                            lo = wb[rw]
                            n = we[rw] - lo
                            if n <= 0:
                                continue
                            first = row + rw * dw + lo * sw
                            # Slices indexed from 0 let LLVM drop negative-index handling and vectorize.
                            src = xb[first:first + (n - 1) * sw + 1:sw]
                            best_seg = best[lo:lo + n]
                            where_seg = where[lo:lo + n]
                            for i in range(n):
                                v = src[i]
                                bv = best_seg[i]
                                take = (v > bv) | (v != v)
                                best_seg[i] = v if take else bv
                                where_seg[i] = first + i * sw if take else where_seg[i]


@numba.njit(cache=True, nogil=True)
def _maxpool_backward_volume(dy, argmax, dx):
    B = dy.shape[0]
    size = dx.shape[1]
    bad = 0
    for b in range(B):
        for o in range(dy.shape[1]):
            index = argmax[b, o]
            if 0 <= index < size:
                dx[b, index] += dy[b, o]
            elif index != -1:
                bad += 1
    return bad


def maxpool_forward(x, kernel, stride=None, padding=0, dilation=1):
    """Max pooling. x: (N, C, *S) -> (y: (N, C, *O), argmax: (N, C, *O) int64).

    argmax is the flat index into x's spatial block (row-major over S) of the chosen element.
    Padding is -inf; ties go to the first element in scan order and NaN wins (as PyTorch).
    A window that lies wholly in padding gives -inf with argmax -1.
    """
    nd = spatial_dims(x, "maxpool_forward")
    geom = pool_geometry(nd, kernel, stride, padding, dilation)
    spatial = x.shape[2:]
    out_spatial = geom.output_shape(spatial)
    xv = as_volumes(x, spatial)
    y = np.empty((xv.shape[0],) + (1,) * (3 - nd) + out_spatial, dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    in_volumes(_maxpool_forward_volume, (xv, y, argmax), _window_bounds(geom, spatial, out_spatial),
                xv.size + y.size * int(np.prod(geom.kernel)))
    shape = x.shape[:2] + out_spatial
    return y.reshape(shape), argmax.reshape(shape)


def maxpool_backward(dy, argmax, x_spatial):
    """Gradient of max pooling: dy: (N, C, *O), argmax: (N, C, *O) -> dx: (N, C, *x_spatial).

    Each dy element is added at its argmax; overlapping windows accumulate.
    """
    _, x_spatial = pool_backward_spatial(dy, x_spatial, "maxpool_backward")
    check_argmax(argmax, dy, "maxpool_backward")
    N, C = dy.shape[:2]
    dx = np.zeros((N * C, int(np.prod(x_spatial))), dtype=dy.dtype)
    bad = sum(in_volumes(_maxpool_backward_volume, (np.ascontiguousarray(dy).reshape(N * C, -1),
                                                     np.ascontiguousarray(argmax, dtype=np.int64).reshape(N * C, -1),
                                                     dx), (), dx.size + 2 * dy.size))
    if bad:
        raise ValueError(f"maxpool_backward: {bad} argmax entries lie outside the input's spatial block "
                         f"{x_spatial}")
    return dx.reshape((N, C) + x_spatial)


# --- average pooling -------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _avgpool_forward_volume(x, y, bd, ed, zd, dd, bh, eh, zh, dh, wb, we, sw, dw, pw, first_rw, kw, inv_count):
    B, D, H, W = x.shape
    _, OD, OH, OW = y.shape
    xf = x.reshape((B, D * H * W))
    acc = np.empty(OW, dtype=np.float64)
    for b in range(B):
        xb = xf[b]
        for od in range(OD):
            for oh in range(OH):
                acc[:] = 0.0
                for rd in range(bd[od], ed[od]):
                    for rh in range(bh[oh], eh[oh]):
                        row = ((zd[od] + rd * dd) * H + zh[oh] + rh * dh) * W - pw
                        for rw in range(kw):
                            lo = wb[rw]
                            n = we[rw] - lo
                            if n <= 0:
                                continue
                            first = row + rw * dw + lo * sw
                            src = xb[first:first + (n - 1) * sw + 1:sw]
                            acc_seg = acc[lo:lo + n]
                            for i in range(n):
                                acc_seg[i] += src[i]
                out = y[b, od, oh]
                for i in range(OW):
                    out[i] = acc[i] * inv_count


@numba.njit(cache=True, nogil=True)
def _avgpool_backward_volume(dy, dx, bd, ed, zd, dd, bh, eh, zh, dh, wb, we, sw, dw, pw, first_rw, kw, inv_count):
    B, OD, OH, OW = dy.shape
    _, D, H, W = dx.shape
    dxf = dx.reshape((B, D * H * W))
    share = np.empty(OW, dtype=dx.dtype)
    for b in range(B):
        dxb = dxf[b]
        for od in range(OD):
            for oh in range(OH):
                g = dy[b, od, oh]
                for i in range(OW):
                    share[i] = g[i] * inv_count
                for rd in range(bd[od], ed[od]):
                    for rh in range(bh[oh], eh[oh]):
                        row = ((zd[od] + rd * dd) * H + zh[oh] + rh * dh) * W - pw
                        for rw in range(kw):
                            lo = wb[rw]
                            n = we[rw] - lo
                            if n <= 0:
                                continue
                            first = row + rw * dw + lo * sw
                            dst = dxb[first:first + (n - 1) * sw + 1:sw]
                            share_seg = share[lo:lo + n]
                            for i in range(n):
                                dst[i] += share_seg[i]


def avgpool_forward(x, kernel, stride=None, padding=0):
    """Average pooling. x: (N, C, *S) -> y: (N, C, *O).

    The divisor is the full window size, padding included (PyTorch's count_include_pad=True).
    """
    nd = spatial_dims(x, "avgpool_forward")
    geom = pool_geometry(nd, kernel, stride, padding)
    spatial = x.shape[2:]
    out_spatial = geom.output_shape(spatial)
    xv = as_volumes(x, spatial)
    y = np.empty((xv.shape[0],) + (1,) * (3 - nd) + out_spatial, dtype=x.dtype)
    in_volumes(_avgpool_forward_volume, (xv, y),
                _window_bounds(geom, spatial, out_spatial) + (1.0 / float(np.prod(geom.kernel)),),
                xv.size + y.size * int(np.prod(geom.kernel)))
    return y.reshape(x.shape[:2] + out_spatial)


def avgpool_backward(dy, x_spatial, kernel, stride=None, padding=0):
    """Gradient of average pooling: dy: (N, C, *O) -> dx: (N, C, *x_spatial)."""
    nd, x_spatial = pool_backward_spatial(dy, x_spatial, "avgpool_backward")
    geom = pool_geometry(nd, kernel, stride, padding)
    out_spatial = geom.output_shape(x_spatial)
    check_dy_shape(dy, out_spatial, "avgpool_backward")
    dyv = as_volumes(dy, out_spatial)
    dx = np.zeros((dyv.shape[0],) + (1,) * (3 - nd) + x_spatial, dtype=dy.dtype)
    in_volumes(_avgpool_backward_volume, (dyv, dx),
                _window_bounds(geom, x_spatial, out_spatial) + (1.0 / float(np.prod(geom.kernel)),),
                dx.size + dyv.size * int(np.prod(geom.kernel)))
    return dx.reshape(dy.shape[:2] + x_spatial)
