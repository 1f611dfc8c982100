"""Loss sums and their gradients (numba): softmax cross-entropy per sample or per pixel, squared error."""
import numba
import numpy as np

from ...backend import check_float_array
from ..checks import check_label_range, check_labels, check_logits, check_same_shape

__all__ = ["softmax_cross_entropy", "squared_error"]

# Sums may be reassociated (so that LLVM vectorizes them); they still accumulate in float64.
_REDUCE_MATH = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _normalize_pixels(logits, labels, ignore_index, peak, prob):
    """prob: (N, C, M) holding exp(logits - peak) -> the gradient softmax - onehot, in place.

    Returns (loss_sum, count); channels are M apart, so every pass walks whole channel planes.
    """
    N, C, M = logits.shape
    total = np.empty(M, dtype=np.float64)
    scale = np.empty(M, dtype=np.float64)
    loss_sum = 0.0
    count = 0
    for n in range(N):
        total[:] = 0.0
        for c in range(C):
            row = prob[n, c]
            for m in range(M):
                total[m] += row[m]
        for m in range(M):
            label = labels[n, m]
            if label == ignore_index:
                scale[m] = 0.0
            else:
                # log-sum-exp: loss = peak + log(sum exp(z - peak)) - z[label]
                loss_sum += np.float64(peak[n, 0, m]) + np.log(total[m]) - np.float64(logits[n, label, m])
                count += 1
                scale[m] = 1.0 / total[m]
        for c in range(C):
            row = prob[n, c]
            for m in range(M):
                row[m] = row[m] * scale[m]
        for m in range(M):
            label = labels[n, m]
            if label != ignore_index:
                prob[n, label, m] -= 1.0
    return loss_sum, count


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _normalize_rows(logits, labels, ignore_index, peak, prob):
    """The (N, C) case of `_normalize_pixels`: channels are contiguous, so loop over them innermost."""
    N, C = logits.shape
    loss_sum = 0.0
    count = 0
    for n in range(N):
        row = prob[n]
        label = labels[n]
        if label == ignore_index:
            row[:] = 0
            continue
        total = 0.0
        for c in range(C):
            total += row[c]
        loss_sum += np.float64(peak[n]) + np.log(total) - np.float64(logits[n, label])
        count += 1
        scale = 1.0 / total
        for c in range(C):
            row[c] = row[c] * scale
        row[label] -= 1.0
    return loss_sum, count


@numba.njit(cache=True, nogil=True, fastmath=_REDUCE_MATH)
def _squared_error(pred, target, dpred):
    loss_sum = 0.0
    for i in range(pred.shape[0]):
        d = np.float64(pred[i]) - np.float64(target[i])
        loss_sum += d * d
        dpred[i] = 2.0 * d
    return loss_sum


def softmax_cross_entropy(logits, labels, ignore_index=-100):
    """Summed softmax cross-entropy and its gradient.

    logits: (N, C) or (N, C, *S); labels: (N,) or (N, *S) integers in [0, C) or ignore_index.
    Returns (loss_sum, dlogits, count): loss_sum the float64 sum of per-element losses over
    non-ignored elements, dlogits its gradient (logits' shape and dtype, zero where ignored),
    count the number of non-ignored elements.
    """
    where = "softmax_cross_entropy"
    check_logits(logits, where)
    labels = np.asarray(labels)
    check_labels(labels, logits, where)
    N, C = logits.shape[:2]
    labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(N, -1)
    check_label_range(labels, C, ignore_index, where)
    lv = np.ascontiguousarray(logits).reshape(N, C, -1)
    peak = lv.max(axis=1, keepdims=True)
    # numpy's exp is vectorized (numba's is not without SVML); the rest runs in numba, in place.
    prob = np.subtract(lv, peak)
    np.exp(prob, out=prob)
    ignore_index = np.int64(ignore_index)
    if lv.shape[2] == 1:
        loss_sum, count = _normalize_rows(lv.reshape(N, C), labels.reshape(N), ignore_index, peak.reshape(N),
                                          prob.reshape(N, C))
    else:
        loss_sum, count = _normalize_pixels(lv, labels, ignore_index, peak, prob)
    return float(loss_sum), prob.reshape(logits.shape), int(count)


def squared_error(pred, target):
    """Sum of (pred - target)**2 (float64) and its gradient 2*(pred - target) (pred's dtype).

    pred, target: the same shape (target is cast to pred's dtype).
    """
    where = "squared_error"
    check_float_array(pred, where)
    target = np.asarray(target)
    check_same_shape(target, "target", pred, "pred", where)
    pf = np.ascontiguousarray(pred).reshape(-1)
    dpred = np.empty_like(pf)
    loss_sum = _squared_error(pf, np.ascontiguousarray(target, dtype=pred.dtype).reshape(-1), dpred)
    return float(loss_sum), dpred.reshape(pred.shape)
