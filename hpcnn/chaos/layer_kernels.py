"""The per-layer numba kernels of the fused CHAOS step, on one sample: convolution, linear layer and pooling,
forward and backward; the SGD update of one tensor; the softmax cross-entropy of one sample.
`hpcnn.chaos.kernels` runs them over a chunk of mini-batches.
"""

import numba
import numpy as np

__all__ = ["conv_forward", "conv_backward", "linear_forward", "linear_backward", "pool_forward", "pool_backward",
           "sgd_update", "plain_sgd_live_rows", "cross_entropy"]


# fastmath without 'nnan'/'ninf': reductions over channels may be reordered (and so vectorized), while
# max-pooling still sees -inf correctly.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def conv_forward(x, w, b, y, sh, sw, ph, pw, dh, dw):
    # x: (H, W, C), w: (R, S, C, K), b: (K,) or empty, y: (OH, OW, K); channels last so that the
    # innermost loop runs over K contiguous output channels.
    R, S, C, K = w.shape
    H, W = x.shape[0], x.shape[1]
    OH, OW = y.shape[0], y.shape[1]
    for oh in range(OH):
        for ow in range(OW):
            yv = y[oh, ow]
            if b.shape[0] > 0:
                yv[:] = b
            else:
                yv[:] = 0.0
            for r in range(R):
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    iw = ow * sw - pw + s * dw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        xv = x[ih, iw, c]
                        if xv == 0.0:      # after ReLU about half the inputs are zero
                            continue
                        wv = w[r, s, c]
                        for k in range(K):
                            yv[k] += xv * wv[k]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def conv_backward(x, w, dy, dx, gw, gb, need_dx, sh, sw, ph, pw, dh, dw):
    # accumulates gw: (R, S, C, K) and gb: (K,); writes dx: (H, W, C) when need_dx
    R, S, C, K = w.shape
    H, W = x.shape[0], x.shape[1]
    OH, OW = dy.shape[0], dy.shape[1]
    if need_dx:
        dx[...] = 0.0
    for oh in range(OH):
        for ow in range(OW):
            g = dy[oh, ow]
            if gb.shape[0] > 0:
                gb += g
            for r in range(R):
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    iw = ow * sw - pw + s * dw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        xv = x[ih, iw, c]
                        wv = w[r, s, c]
                        gv = gw[r, s, c]
                        if xv != 0.0:
                            for k in range(K):
                                gv[k] += xv * g[k]
                        if need_dx:
                            acc = 0.0
                            for k in range(K):
                                acc += wv[k] * g[k]
                            dx[ih, iw, c] += acc


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def linear_forward(x, w, b, y):
    # x: (I,), w: (I, O) (the transpose of PyTorch's), b: (O,) or empty, y: (O,)
    if b.shape[0] > 0:
        y[:] = b
    else:
        y[:] = 0.0
    for i in range(w.shape[0]):
        xv = x[i]
        if xv != 0.0:
            wv = w[i]
            for o in range(w.shape[1]):
                y[o] += xv * wv[o]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def linear_backward(x, w, dy, dx, gw, gb, need_dx):
    if gb.shape[0] > 0:
        gb += dy
    for i in range(w.shape[0]):
        xv = x[i]
        if xv != 0.0:
            gv = gw[i]
            for o in range(w.shape[1]):
                gv[o] += xv * dy[o]
        if need_dx:
            wv = w[i]
            acc = 0.0
            for o in range(w.shape[1]):
                acc += wv[o] * dy[o]
            dx[i] = acc


@numba.njit(cache=True, nogil=True)
def pool_forward(x, y, arg, is_max, kh, kw, sh, sw, ph, pw):
    # x: (H, W, C), y: (OH, OW, C), arg: (OH, OW, C) flat input index of the max (max pooling)
    H, W, C = x.shape
    OH, OW = y.shape[0], y.shape[1]
    inv = 1.0 / (kh * kw)
    for oh in range(OH):
        for ow in range(OW):
            for c in range(C):
                y[oh, ow, c] = -np.inf if is_max else 0.0
                arg[oh, ow, c] = -1
            for r in range(kh):
                ih = oh * sh - ph + r
                if ih < 0 or ih >= H:
                    continue
                for s in range(kw):
                    iw = ow * sw - pw + s
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        v = x[ih, iw, c]
                        if is_max:
                            if v > y[oh, ow, c]:
                                y[oh, ow, c] = v
                                arg[oh, ow, c] = (ih * W + iw) * C + c
                        else:
                            y[oh, ow, c] += v
            if not is_max:
                for c in range(C):
                    y[oh, ow, c] *= inv


@numba.njit(cache=True, nogil=True)
def pool_backward(dy, dx, arg, is_max, kh, kw, sh, sw, ph, pw):
    H, W, C = dx.shape
    OH, OW = dy.shape[0], dy.shape[1]
    dx[...] = 0.0
    flat = dx.reshape(H * W * C)
    inv = 1.0 / (kh * kw)
    for oh in range(OH):
        for ow in range(OW):
            if is_max:
                for c in range(C):
                    where = arg[oh, ow, c]
                    if where >= 0:
                        flat[where] += dy[oh, ow, c]
                continue
            for r in range(kh):
                ih = oh * sh - ph + r
                if ih < 0 or ih >= H:
                    continue
                for s in range(kw):
                    iw = ow * sw - pw + s
                    if 0 <= iw < W:
                        for c in range(C):
                            dx[ih, iw, c] += dy[oh, ow, c] * inv


@numba.njit(cache=True, nogil=True)
def sgd_update(p, g, v, started, lr, momentum, dampening, weight_decay, nesterov):
    """PyTorch's SGD on one parameter tensor (flat views)."""
    for i in range(p.shape[0]):
        d = g[i]
        if weight_decay != 0.0:
            d += weight_decay * p[i]
        if momentum != 0.0:
            if started:
                v[i] = momentum * v[i] + (1.0 - dampening) * d
            else:
                v[i] = d
            if nesterov:
                d = d + momentum * v[i]
            else:
                d = v[i]
        p[i] -= lr * d


@numba.njit(cache=True, nogil=True)
def plain_sgd_live_rows(p, g, lr, x, n, rows, cols):
    """Plain SGD (no momentum, no weight decay) on a linear layer's weight (rows, cols) = (I, O): only the rows
    whose input x[b * rows + i] is nonzero in some sample b of the n; the others' gradient is exactly zero."""
    for i in range(rows):
        live = False
        for b in range(n):
            if x[b * rows + i] != 0.0:
                live = True
                break
        if live:
            pr = p[i * cols:(i + 1) * cols]
            gr = g[i * cols:(i + 1) * cols]
            for o in range(cols):
                pr[o] -= lr * gr[o]


@numba.njit(cache=True, nogil=True)
def cross_entropy(logits, label, dlogits, scale):
    """Loss of one sample; dlogits = scale * (softmax - onehot). Returns (loss, predicted class)."""
    K = logits.shape[0]
    m = logits[0]
    best = 0
    for k in range(1, K):
        if logits[k] > m:
            m = logits[k]
            best = k
    total = 0.0
    for k in range(K):
        total += np.exp(logits[k] - m)
    log_total = np.log(total)
    for k in range(K):
        p = np.exp(logits[k] - m - log_total)
        dlogits[k] = scale * (p - 1.0) if k == label else scale * p
    return -(logits[label] - m - log_total), best
