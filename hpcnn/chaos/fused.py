"""A sequential network compiled to one nogil numba call per chunk of mini-batches (the fast CHAOS step).

Per-sample work on small images (8x8 digits) is a few microseconds per layer, less than the
Python glue of a layer call; with several threads that glue runs under the GIL and serializes
them. The fused step runs forward, backward and the per-layer SGD update of a whole chunk of
mini-batches inside one `@numba.njit(nogil=True)` call, so a worker holds the GIL only to take
the next chunk from the shared counter.

Memory layout
-------------
* `params`, `velocity`: one flat array each, shared by every worker (the weights the workers
  update without a lock). Parameter tensor `j` occupies `params[offset[j]:offset[j] + size[j]]`
  in PyTorch's shape and C order, so a model's arrays copy in and out with one reshape.
* per worker: `act`/`dact` (activations and their gradients, every layer's output for the whole
  mini-batch), `grad` (the parameter gradients of one step, same layout as `params`) and `argmax`
  (max-pooling switches). Nothing a worker writes in these is seen by another.

The layer table (`LAYER_COLUMNS`) holds one row of int64 per layer; a Flatten shares its input's
slot and needs no row. Supported layers: Conv2d, Linear, ReLU, LeakyReLU, MaxPool2d, AvgPool2d,
GlobalAvgPool, Flatten, nested Sequential; the loss is softmax cross-entropy over class labels.

The update is PyTorch's SGD (weight decay, momentum with dampening, Nesterov), applied to a
layer's parameters right after that layer's backward step, as `hpcnn.train.optim.SGD.step_param`
does for the layer-by-layer engine; `tests/chaos` checks that the two agree.
"""
import numba
import numpy as np

__all__ = ["LAYER_COLUMNS", "OP_CONV", "OP_LINEAR", "OP_RELU", "OP_LEAKY_RELU", "OP_MAXPOOL",
           "OP_AVGPOOL", "OP_GLOBAL_AVGPOOL", "FusedNetwork", "NotFusable", "sequential_leaves", "train_chunk", "predict"]

OP_CONV, OP_LINEAR, OP_RELU, OP_LEAKY_RELU, OP_MAXPOOL, OP_AVGPOOL, OP_GLOBAL_AVGPOOL = range(7)

# One row per layer. Shapes are per sample; a slot holds `batch` samples back to back.
LAYER_COLUMNS = (
    "op", "in_off", "out_off", "in_c", "in_h", "in_w", "out_c", "out_h", "out_w",
    "w_param", "b_param",          # parameter tensor indices (-1: none)
    "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
    "aux_off",                     # max-pooling switches: offset into the worker's argmax buffer
    "need_dx",                     # 0 for the first layer: its input gradient is never used
)
(_OP, _IN, _OUT, _IC, _IH, _IW, _OC, _OH, _OW, _WP, _BP,
 _KH, _KW, _SH, _SW, _PH, _PW, _DH, _DW, _AUX, _NEED_DX) = range(len(LAYER_COLUMNS))


# fastmath without 'nnan'/'ninf': reductions over channels may be reordered (and so vectorized), while
# max-pooling still sees -inf correctly.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _conv_forward(x, w, b, y, sh, sw, ph, pw, dh, dw):
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
def _conv_backward(x, w, dy, dx, gw, gb, need_dx, sh, sw, ph, pw, dh, dw):
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
def _linear_forward(x, w, b, y):
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
def _linear_backward(x, w, dy, dx, gw, gb, need_dx):
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
def _pool_forward(x, y, arg, is_max, kh, kw, sh, sw, ph, pw):
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
def _pool_backward(dy, dx, arg, is_max, kh, kw, sh, sw, ph, pw):
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
def _sgd_update(p, g, v, started, lr, momentum, dampening, weight_decay, nesterov):
    """PyTorch's SGD on one parameter tensor (flat views); returns True (the momentum buffer exists)."""
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
    return True


@numba.njit(cache=True, nogil=True)
def _forward_sample(layers, slopes, params, p_off, p_shape, act, argmax, n, b):
    """Forward of sample b of a batch of n through every layer (slots of act hold n samples)."""
    for li in range(layers.shape[0]):
        row = layers[li]
        op = row[_OP]
        in_size = row[_IC] * row[_IH] * row[_IW]
        out_size = row[_OC] * row[_OH] * row[_OW]
        x = act[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        y = act[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        if op == OP_CONV or op == OP_LINEAR:
            wj = row[_WP]
            w = params[p_off[wj]: p_off[wj + 1]]
            bj = row[_BP]
            bias = params[p_off[bj]: p_off[bj + 1]] if bj >= 0 else params[0:0]
            if op == OP_CONV:
                _conv_forward(x.reshape((row[_IH], row[_IW], row[_IC])),
                              w.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                              bias, y.reshape((row[_OH], row[_OW], row[_OC])),
                              row[_SH], row[_SW], row[_PH], row[_PW], row[_DH], row[_DW])
            else:
                _linear_forward(x, w.reshape((p_shape[wj, 0], p_shape[wj, 1])), bias, y)
        elif op == OP_RELU:
            for i in range(in_size):
                y[i] = x[i] if x[i] > 0 else 0.0
        elif op == OP_LEAKY_RELU:
            slope = slopes[li]
            for i in range(in_size):
                y[i] = x[i] if x[i] > 0 else x[i] * slope
        elif op == OP_MAXPOOL or op == OP_AVGPOOL:
            arg = argmax[row[_AUX] + b * out_size: row[_AUX] + (b + 1) * out_size]
            _pool_forward(x.reshape((row[_IH], row[_IW], row[_IC])),
                          y.reshape((row[_OH], row[_OW], row[_OC])),
                          arg.reshape((row[_OH], row[_OW], row[_OC])), op == OP_MAXPOOL,
                          row[_KH], row[_KW], row[_SH], row[_SW], row[_PH], row[_PW])
        elif op == OP_GLOBAL_AVGPOOL:
            spatial = row[_IH] * row[_IW]
            C = row[_IC]
            y[:] = 0.0
            for i in range(spatial):
                for c in range(C):
                    y[c] += x[i * C + c]
            for c in range(C):
                y[c] /= spatial


@numba.njit(cache=True, nogil=True)
def _backward_layer(li, layers, slopes, params, p_off, p_shape, act, dact, grad, argmax, n):
    """Backward of layer li over the n samples of the batch: dact of its input, grad of its parameters."""
    row = layers[li]
    op = row[_OP]
    in_size = row[_IC] * row[_IH] * row[_IW]
    out_size = row[_OC] * row[_OH] * row[_OW]
    need_dx = row[_NEED_DX] != 0
    wj = row[_WP]
    bj = row[_BP]
    w = params[0:0]
    gw = grad[0:0]
    gb = grad[0:0]
    if wj >= 0:
        w = params[p_off[wj]: p_off[wj + 1]]
        gw = grad[p_off[wj]: p_off[wj + 1]]
        gw[:] = 0.0
    if bj >= 0:
        gb = grad[p_off[bj]: p_off[bj + 1]]
        gb[:] = 0.0
    for b in range(n):
        x = act[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        y = act[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        dx = dact[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        dy = dact[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        if op == OP_CONV:
            _conv_backward(x.reshape((row[_IH], row[_IW], row[_IC])),
                           w.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                           dy.reshape((row[_OH], row[_OW], row[_OC])),
                           dx.reshape((row[_IH], row[_IW], row[_IC])),
                           gw.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                           gb, need_dx, row[_SH], row[_SW], row[_PH], row[_PW], row[_DH], row[_DW])
        elif op == OP_LINEAR:
            _linear_backward(x, w.reshape((p_shape[wj, 0], p_shape[wj, 1])), dy, dx,
                             gw.reshape((p_shape[wj, 0], p_shape[wj, 1])), gb, need_dx)
        elif not need_dx:
            continue
        elif op == OP_RELU:
            for i in range(in_size):
                dx[i] = dy[i] if y[i] > 0 else 0.0
        elif op == OP_LEAKY_RELU:
            slope = slopes[li]
            for i in range(in_size):
                dx[i] = dy[i] if x[i] > 0 else dy[i] * slope
        elif op == OP_MAXPOOL or op == OP_AVGPOOL:
            arg = argmax[row[_AUX] + b * out_size: row[_AUX] + (b + 1) * out_size]
            _pool_backward(dy.reshape((row[_OH], row[_OW], row[_OC])),
                           dx.reshape((row[_IH], row[_IW], row[_IC])),
                           arg.reshape((row[_OH], row[_OW], row[_OC])), op == OP_MAXPOOL,
                           row[_KH], row[_KW], row[_SH], row[_SW], row[_PH], row[_PW])
        elif op == OP_GLOBAL_AVGPOOL:
            spatial = row[_IH] * row[_IW]
            C = row[_IC]
            for i in range(spatial):
                for c in range(C):
                    dx[i * C + c] = dy[c] / spatial


@numba.njit(cache=True, nogil=True)
def _cross_entropy(logits, label, dlogits, scale):
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


@numba.njit(cache=True, nogil=True)
def train_chunk(layers, slopes, params, velocity, started, p_off, p_shape, act, dact, grad, argmax,
                x, labels, order, batch, first_batch, n_batches, lrs, momentum, dampening,
                weight_decay, nesterov):
    """Train on mini-batches first_batch .. first_batch + n_batches - 1 of one epoch.

    x: (N, H, W, C) training images (channels last, see FusedNetwork.prepare_inputs), labels: (N,) int64, order: (N,) this epoch's sample order;
    mini-batch j is order[j*batch : (j+1)*batch] (the last one may be shorter); lrs[i] is the
    learning rate of the chunk's i-th step. Each layer's parameters are updated in the shared
    `params` right after that layer's backward step. Returns (loss sum, correct predictions,
    samples) over the chunk.
    """
    sample_size = x.shape[1] * x.shape[2] * x.shape[3]
    n_total = order.shape[0]
    xflat = x.reshape((x.shape[0], sample_size))
    last = layers[layers.shape[0] - 1]
    logit_off = last[_OUT]
    K = last[_OC] * last[_OH] * last[_OW]
    first_off = layers[0, _IN]
    loss_sum = 0.0
    correct = 0
    samples = 0
    for step in range(n_batches):
        j = first_batch + step
        lo = j * batch
        hi = min(lo + batch, n_total)
        n = hi - lo
        scale = 1.0 / n
        for b in range(n):
            idx = order[lo + b]
            act[first_off + b * sample_size: first_off + (b + 1) * sample_size] = xflat[idx]
            _forward_sample(layers, slopes, params, p_off, p_shape, act, argmax, n, b)
            logits = act[logit_off + b * K: logit_off + (b + 1) * K]
            loss, pred = _cross_entropy(logits, labels[idx], dact[logit_off + b * K: logit_off + (b + 1) * K],
                                        scale)
            loss_sum += loss
            if pred == labels[idx]:
                correct += 1
        samples += n
        lr = lrs[step]
        for li in range(layers.shape[0] - 1, -1, -1):
            _backward_layer(li, layers, slopes, params, p_off, p_shape, act, dact, grad, argmax, n)
            # controlled Hogwild: this layer's update goes to the shared weights now, without a lock
            for pj in (layers[li, _WP], layers[li, _BP]):
                if pj >= 0:
                    _sgd_update(params[p_off[pj]: p_off[pj + 1]], grad[p_off[pj]: p_off[pj + 1]],
                                velocity[p_off[pj]: p_off[pj + 1]], started[pj] != 0, lr, momentum,
                                dampening, weight_decay, nesterov)
                    started[pj] = 1
    return loss_sum, correct, samples


@numba.njit(cache=True, nogil=True)
def predict(layers, slopes, params, p_off, p_shape, act, argmax, x, logits_out):
    """Forward pass only: logits_out[i] = logits of x[i] (x: (N, H, W, C), logits_out: (N, K))."""
    sample_size = x.shape[1] * x.shape[2] * x.shape[3]
    xflat = x.reshape((x.shape[0], sample_size))
    last = layers[layers.shape[0] - 1]
    K = last[_OC] * last[_OH] * last[_OW]
    first_off = layers[0, _IN]
    for i in range(x.shape[0]):
        act[first_off: first_off + sample_size] = xflat[i]
        _forward_sample(layers, slopes, params, p_off, p_shape, act, argmax, 1, 0)
        logits_out[i, :] = act[last[_OUT]: last[_OUT] + K]


# --- building the program from an hpcnn model ----------------------------------------------------------------

class FusedNetwork:
    """An hpcnn Sequential model laid out for `train_chunk`: the layer table, shared flat weights, shapes.

    Built by `FusedNetwork.from_model(model, loss, sample_shape, batch)`; raises `NotFusable` naming
    the first layer it cannot run. `load_from(model)` / `store_to(model)` copy the weights between
    the model's arrays and the shared flat buffer; `workspace()` gives one worker's private buffers.
    """

    def __init__(self, layers, slopes, names, kinds, shapes, dtype, batch, act_size, argmax_size):
        self.layers = layers
        self.slopes = slopes
        self.names = names                      # dotted parameter names, in table order
        self.kinds = kinds                      # ("conv",), ("linear", input permutation or None), ("bias",)
        self.shapes = shapes                    # in the fused layout
        sizes = [int(np.prod(s)) for s in shapes]
        self.p_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.p_shape = np.zeros((max(len(shapes), 1), 4), dtype=np.int64)
        for j, s in enumerate(shapes):
            self.p_shape[j, :len(s)] = s
        self.params = np.zeros(int(self.p_off[-1]), dtype=dtype)
        self.velocity = np.zeros_like(self.params)
        self.started = np.zeros(max(len(shapes), 1), dtype=np.uint8)
        self.batch = batch
        self.act_size = act_size
        self.argmax_size = argmax_size

    @classmethod
    def from_model(cls, model, loss, sample_shape, batch):
        from .. import nn
        if not isinstance(loss, nn.CrossEntropyLoss):
            raise NotFusable(f"the fused step computes softmax cross-entropy; received {_describe(loss)}")
        leaves = list(sequential_leaves(model))
        if not leaves:
            raise NotFusable("the model has no layers")
        dtype = next((p.dtype for _, p, _ in model.parameters()), np.dtype(np.float32))
        shape = tuple(int(s) for s in sample_shape)
        if len(shape) != 3:
            raise NotFusable(f"the fused step takes (C, H, W) samples; received sample shape {shape}")
        rows, slopes, names, kinds, shapes = [], [], [], [], []
        perm = None     # set by a Flatten of (C, H, W): the fused order (H, W, C) differs from PyTorch's
        in_off, act_off = 0, batch * int(np.prod(shape))
        argmax_off = 0
        for prefix, layer in leaves:
            kind = type(layer)
            row = dict.fromkeys(LAYER_COLUMNS, 0)
            row.update(w_param=-1, b_param=-1, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1, need_dx=int(bool(rows)))
            slope = 0.0
            if kind is nn.Flatten:
                if len(shape) == 3 and shape[1] * shape[2] > 1:
                    perm = np.arange(int(np.prod(shape))).reshape(shape).transpose(1, 2, 0).ravel()
                shape = (int(np.prod(shape)),)
                continue                            # same memory, no row
            if kind is nn.Conv2d:
                _need(len(shape) == 3, layer, shape)
                g = layer.geometry
                out = g.output_shape(shape[1:])
                _need(min(out) >= 1 and shape[0] == layer.in_channels, layer, shape)
                row.update(op=OP_CONV, kh=g.kernel[0], kw=g.kernel[1], sh=g.stride[0], sw=g.stride[1],
                           ph=g.padding[0][0], pw=g.padding[1][0], dh=g.dilation[0], dw=g.dilation[1])
                new = (layer.out_channels,) + tuple(out)
            elif kind is nn.Linear:
                _need(len(shape) == 1 and shape[0] == layer.in_features, layer, shape)
                row.update(op=OP_LINEAR)
                new = (layer.out_features,)
            elif kind in (nn.ReLU, nn.LeakyReLU):
                row.update(op=OP_RELU if kind is nn.ReLU else OP_LEAKY_RELU)
                slope = getattr(layer, "negative_slope", 0.0)
                new = shape
            elif kind in (nn.MaxPool2d, nn.AvgPool2d):
                _need(len(shape) == 3, layer, shape)
                g = layer.geometry
                out = g.output_shape(shape[1:])
                _need(min(out) >= 1, layer, shape)
                row.update(op=OP_MAXPOOL if kind is nn.MaxPool2d else OP_AVGPOOL, kh=g.kernel[0],
                           kw=g.kernel[1], sh=g.stride[0], sw=g.stride[1], ph=g.padding[0][0],
                           pw=g.padding[1][0], aux_off=argmax_off)
                new = (shape[0],) + tuple(out)
                argmax_off += batch * int(np.prod(new))
            elif kind is nn.GlobalAvgPool:
                _need(len(shape) == 3, layer, shape)
                row.update(op=OP_GLOBAL_AVGPOOL)
                new = (shape[0],)
            else:
                raise NotFusable(f"layer {prefix or 'model'} ({_describe(layer)}) has no fused version")
            for key in ("weight", "bias"):
                if key in layer.params:
                    p = layer.params[key]
                    if p.dtype != dtype:
                        raise NotFusable(f"parameters of mixed dtypes ({p.dtype} and {dtype})")
                    row["w_param" if key == "weight" else "b_param"] = len(names)
                    names.append(prefix + key)
                    if key == "bias":
                        kinds.append(("bias",))
                        shapes.append(tuple(p.shape))
                    elif kind is nn.Conv2d:
                        kinds.append(("conv",))
                        shapes.append(tuple(p.shape[i] for i in (2, 3, 1, 0)))
                    else:
                        kinds.append(("linear", perm))
                        shapes.append(tuple(p.shape[::-1]))
            if kind is nn.Linear:
                perm = None
            extra = sorted(set(layer.params) - {"weight", "bias"})
            if extra:
                raise NotFusable(f"layer {prefix} has parameters {extra} the fused step does not know")
            full_in = shape + (1,) * (3 - len(shape))
            full_out = new + (1,) * (3 - len(new))
            row.update(in_off=in_off, out_off=act_off, in_c=full_in[0], in_h=full_in[1], in_w=full_in[2],
                       out_c=full_out[0], out_h=full_out[1], out_w=full_out[2])
            rows.append([row[k] for k in LAYER_COLUMNS])
            slopes.append(slope)
            in_off = act_off
            act_off += batch * int(np.prod(new))
            shape = new
        if not rows:
            raise NotFusable("the model has no layer with a fused version")
        if len(shape) != 1:
            raise NotFusable(f"the model's output per sample has shape {shape}; the fused step needs logits (K,)")
        net = cls(np.array(rows, dtype=np.int64), np.array(slopes, dtype=np.float64), names, kinds, shapes, dtype,
                  batch, act_off, max(argmax_off, 1))
        net.load_from(model)
        return net

    @property
    def classes(self):
        """K: the number of logits per sample."""
        row = self.layers[-1]
        return int(row[_OC] * row[_OH] * row[_OW])

    def param_view(self, j):
        return self.params[self.p_off[j]:self.p_off[j + 1]].reshape(self.shapes[j])

    def to_fused(self, j, array):
        """Parameter j from PyTorch's layout to the fused one."""
        kind = self.kinds[j]
        if kind[0] == "conv":
            return array.transpose(2, 3, 1, 0)              # (K, C, R, S) -> (R, S, C, K)
        if kind[0] == "linear":
            return array.T if kind[1] is None else array.T[kind[1]]   # (O, I) -> (I, O)
        return array

    def from_fused(self, j, array):
        """Parameter j from the fused layout back to PyTorch's."""
        kind = self.kinds[j]
        if kind[0] == "conv":
            return array.transpose(3, 2, 0, 1)
        if kind[0] == "linear":
            if kind[1] is None:
                return array.T
            out = np.empty(array.shape[::-1], dtype=array.dtype)
            out[:, kind[1]] = array.T
            return out
        return array

    def load_from(self, model):
        """Copy the model's parameters into the shared flat buffer."""
        found = {name: p for name, p, _ in model.parameters()}
        for j, name in enumerate(self.names):
            self.param_view(j)[...] = self.to_fused(j, found[name])

    def store_to(self, model):
        """Copy the shared flat weights back into the model's arrays (in place)."""
        found = {name: p for name, p, _ in model.parameters()}
        for j, name in enumerate(self.names):
            found[name][...] = self.from_fused(j, self.param_view(j))

    def velocity_to(self, name):
        """The shared momentum buffer of one parameter, in PyTorch's layout (a copy)."""
        j = self.names.index(name)
        return self.from_fused(j, self.velocity[self.p_off[j]:self.p_off[j + 1]].reshape(self.shapes[j])).copy()

    @staticmethod
    def prepare_inputs(x):
        """x: (N, C, H, W) -> the channels-last copy (N, H, W, C) that train_chunk reads."""
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def workspace(self):
        """One worker's private buffers: (act, dact, grad, argmax)."""
        return (np.zeros(self.act_size, dtype=self.params.dtype), np.zeros(self.act_size, dtype=self.params.dtype),
                np.zeros_like(self.params), np.zeros(self.argmax_size, dtype=np.int64))


class NotFusable(ValueError):
    """The model or loss has a part the fused step cannot run (the layer-by-layer step can)."""


def _describe(obj):
    describe = getattr(obj, "describe", None)
    return describe() if callable(describe) else type(obj).__name__


def _need(ok, layer, shape):
    if not ok:
        raise NotFusable(f"{_describe(layer)} cannot take a sample of shape {tuple(shape)}")


def sequential_leaves(module, prefix=""):
    """(dotted prefix, leaf) in forward order through nested Sequentials; other containers raise NotFusable."""
    from .. import nn
    if isinstance(module, nn.Sequential):
        for name, child in module.children():
            yield from sequential_leaves(child, prefix + name + ".")
    elif module.children():
        raise NotFusable(f"{prefix.rstrip('.') or 'model'} ({_describe(module)}) is a container other than "
                         f"Sequential")
    else:
        yield prefix, module
