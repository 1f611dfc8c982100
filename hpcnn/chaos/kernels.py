"""The fused CHAOS step's numba kernels: forward, backward and the per-layer SGD update of a chunk of mini-batches.

Per-sample work on small images (8x8 digits) is a few microseconds per layer, less than the
Python glue of a layer call; with several threads that glue runs under the GIL and serializes
them. The fused step runs forward, backward and the per-layer SGD update of a whole chunk of
mini-batches inside one `@numba.njit(nogil=True)` call, so a worker holds the GIL only to take
the next chunk from the shared counter.

Memory layout
-------------
* `params`, `velocity`: one flat array each, shared by every worker (the weights the workers
  update without a lock). Parameter tensor `j` occupies `params[p_span[j, 0]:p_span[j, 1]]`
  in the fused layout (convolution weights (R, S, C, K), linear weights (I, O), channels last;
  `hpcnn.chaos.fused.FusedNetwork.to_fused` converts from PyTorch's); each tensor starts on a
  cache line of its own, so one layer's update never invalidates the lines of another layer's
  weights that other workers are reading.
* per worker: `act`/`dact` (activations and their gradients, every layer's output for the whole
  mini-batch), `grad` (the parameter gradients of one step, same layout as `params`), `argmax`
  (max-pooling switches) and `seen` (same layout as `params`: the convolution weights as this
  worker read them for the current mini-batch), each on cache lines of its own. Nothing a worker
  writes in these is seen by another.

A convolution reads each weight once per output pixel. Read from the shared array, every update
that another worker writes meanwhile would invalidate the lines in the middle of that loop and
send them back and forth between the cores; so a worker reads a convolution's shared weights once,
into `seen`, at the mini-batch's first forward sample, and its forward and input gradient use that
copy (one read of the shared weights, as Hogwild reads them; with one worker the copy equals the
shared weights, since a layer is updated only after its own backward step). Linear layers read
each weight once per sample and use the shared array directly.

What the workers write to shared memory, per mini-batch, is only what changes the weights: plain
SGD (no momentum, no weight decay) leaves the row of a linear layer's weight (I, O) that belongs
to an input unwritten when that input is zero in every sample of the mini-batch (its gradient row
is exactly zero), as it is for every input that ReLU or max-pooling zeroed (a quarter to a half of
a LeNet's first linear layer); a row written with its own values would still invalidate its cache
lines in every other core, which then re-reads them in its next step. The `started` flag of a
momentum buffer is written once.

The layer table (`LAYER_COLUMNS`) holds one row of int64 per layer; a Flatten shares its input's
slot and needs no row. The layers with a fused op are those whose registry entry names one
(`hpcnn.chaos.ops`); the loss is softmax cross-entropy over class labels.

The update is PyTorch's SGD (weight decay, momentum with dampening, Nesterov), applied to a
layer's parameters right after that layer's backward step, as `hpcnn.train.optim.SGD.step_param`
does for the layer-by-layer engine; `tests/chaos` checks that the two agree.
"""
import numba

from .layer_kernels import (conv_backward, conv_forward, cross_entropy, linear_backward, linear_forward,
                            plain_sgd_live_rows, pool_backward, pool_forward, sgd_update)

__all__ = ["LAYER_COLUMNS", "OP_CONV", "OP_LINEAR", "OP_RELU", "OP_LEAKY_RELU", "OP_MAXPOOL",
           "OP_AVGPOOL", "OP_GLOBAL_AVGPOOL", "train_chunk"]

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


@numba.njit(cache=True, nogil=True)
def _forward_sample(layers, slopes, params, p_span, p_shape, act, argmax, seen, n, b):
    """Forward of sample b of a batch of n through every layer (slots of act hold n samples). A convolution
    computes from `seen`, the worker's copy of its weights, taken from the shared ones at the batch's first sample."""
    for li in range(layers.shape[0]):
        row = layers[li]
        op = row[_OP]
        in_size = row[_IC] * row[_IH] * row[_IW]
        out_size = row[_OC] * row[_OH] * row[_OW]
        x = act[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        y = act[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        if op == OP_CONV or op == OP_LINEAR:
            wj = row[_WP]
            bj = row[_BP]
            source = seen if op == OP_CONV else params
            if op == OP_CONV and b == 0:
                seen[p_span[wj, 0]: p_span[wj, 1]] = params[p_span[wj, 0]: p_span[wj, 1]]
                if bj >= 0:
                    seen[p_span[bj, 0]: p_span[bj, 1]] = params[p_span[bj, 0]: p_span[bj, 1]]
            w = source[p_span[wj, 0]: p_span[wj, 1]]
            bias = source[p_span[bj, 0]: p_span[bj, 1]] if bj >= 0 else params[0:0]
            if op == OP_CONV:
                conv_forward(x.reshape((row[_IH], row[_IW], row[_IC])),
                              w.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                              bias, y.reshape((row[_OH], row[_OW], row[_OC])),
                              row[_SH], row[_SW], row[_PH], row[_PW], row[_DH], row[_DW])
            else:
                linear_forward(x, w.reshape((p_shape[wj, 0], p_shape[wj, 1])), bias, y)
        elif op == OP_RELU:
            for i in range(in_size):
                y[i] = x[i] if x[i] > 0 else 0.0
        elif op == OP_LEAKY_RELU:
            slope = slopes[li]
            for i in range(in_size):
                y[i] = x[i] if x[i] > 0 else x[i] * slope
        elif op == OP_MAXPOOL or op == OP_AVGPOOL:
            arg = argmax[row[_AUX] + b * out_size: row[_AUX] + (b + 1) * out_size]
            pool_forward(x.reshape((row[_IH], row[_IW], row[_IC])),
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
def _backward_layer(li, layers, slopes, params, p_span, p_shape, act, dact, grad, argmax, seen, n):
    """Backward of layer li over the n samples of the batch: dact of its input, grad of its parameters (a
    convolution's input gradient from the weights its forward used, `seen`)."""
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
        w = (seen if op == OP_CONV else params)[p_span[wj, 0]: p_span[wj, 1]]
        gw = grad[p_span[wj, 0]: p_span[wj, 1]]
        gw[:] = 0.0
    if bj >= 0:
        gb = grad[p_span[bj, 0]: p_span[bj, 1]]
        gb[:] = 0.0
    for b in range(n):
        x = act[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        y = act[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        dx = dact[row[_IN] + b * in_size: row[_IN] + (b + 1) * in_size]
        dy = dact[row[_OUT] + b * out_size: row[_OUT] + (b + 1) * out_size]
        if op == OP_CONV:
            conv_backward(x.reshape((row[_IH], row[_IW], row[_IC])),
                           w.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                           dy.reshape((row[_OH], row[_OW], row[_OC])),
                           dx.reshape((row[_IH], row[_IW], row[_IC])),
                           gw.reshape((p_shape[wj, 0], p_shape[wj, 1], p_shape[wj, 2], p_shape[wj, 3])),
                           gb, need_dx, row[_SH], row[_SW], row[_PH], row[_PW], row[_DH], row[_DW])
        elif op == OP_LINEAR:
            linear_backward(x, w.reshape((p_shape[wj, 0], p_shape[wj, 1])), dy, dx,
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
            pool_backward(dy.reshape((row[_OH], row[_OW], row[_OC])),
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
def train_chunk(layers, slopes, params, velocity, started, p_span, p_shape, act, dact, grad, argmax, seen,
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
            _forward_sample(layers, slopes, params, p_span, p_shape, act, argmax, seen, n, b)
            logits = act[logit_off + b * K: logit_off + (b + 1) * K]
            loss, pred = cross_entropy(logits, labels[idx], dact[logit_off + b * K: logit_off + (b + 1) * K],
                                        scale)
            loss_sum += loss
            if pred == labels[idx]:
                correct += 1
        samples += n
        lr = lrs[step]
        for li in range(layers.shape[0] - 1, -1, -1):
            _backward_layer(li, layers, slopes, params, p_span, p_shape, act, dact, grad, argmax, seen, n)
            # controlled Hogwild: this layer's update goes to the shared weights now, without a lock
            row = layers[li]
            for pj in (row[_WP], row[_BP]):
                if pj < 0:
                    continue
                lo_p, hi_p = p_span[pj, 0], p_span[pj, 1]
                if pj == row[_WP] and row[_OP] == OP_LINEAR and momentum == 0.0 and weight_decay == 0.0:
                    plain_sgd_live_rows(params[lo_p:hi_p], grad[lo_p:hi_p], lr,
                                         act[row[_IN]: row[_IN] + n * p_shape[pj, 0]], n, p_shape[pj, 0],
                                         p_shape[pj, 1])
                else:
                    sgd_update(params[lo_p:hi_p], grad[lo_p:hi_p], velocity[lo_p:hi_p], started[pj] != 0, lr,
                                momentum, dampening, weight_decay, nesterov)
                if started[pj] == 0:        # a shared line: written once, not once per mini-batch
                    started[pj] = 1
    return loss_sum, correct, samples
