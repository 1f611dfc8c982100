"""Loss sums and their gradients on the GPU (CuPy): softmax cross-entropy per sample or per pixel, squared error.

Nothing here waits for the GPU: the sums and counts are returned as 0-d device arrays, and a label
outside [0, C) (other than ignore_index), which the CPU kernel refuses with a message, makes its
element's loss and gradient NaN instead of stopping the stream to look at the labels; the trainer
stops on the non-finite loss.
"""
from ...backend import check_float_array
from ..checks import check_labels, check_logits, check_same_shape
from ._cuda import Program, array_module

__all__ = ["softmax_cross_entropy", "squared_error"]

_PROGRAM = Program("loss", r"""
// logits, dlogits: (N, C, M); labels, loss: (N, M). One thread per (n, m): log-sum-exp in double.
extern "C" __global__ void softmax_cross_entropy(const T* __restrict__ logits, const i64* __restrict__ labels,
                                                 T* __restrict__ dlogits, double* __restrict__ loss,
                                                 i64 total, int C, i64 M, i64 ignore_index)
{
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < total; e += (i64)blockDim.x * gridDim.x) {
        const i64 n = e / M;
        const i64 base = n * C * M + (e - n * M);
        const i64 label = labels[e];
        if (label == ignore_index) {
            for (int c = 0; c < C; ++c) dlogits[base + c * M] = (T)0;
            loss[e] = 0.0;
            continue;
        }
        if (label < 0 || label >= C) {
            for (int c = 0; c < C; ++c) dlogits[base + c * M] = (T)hp_nan();
            loss[e] = hp_nan();
            continue;
        }
        double peak = hp_neg_inf();
        for (int c = 0; c < C; ++c) {
            const double v = (double)logits[base + c * M];
            if (v > peak) peak = v;
        }
        double sum = 0.0;
        for (int c = 0; c < C; ++c) sum += exp((double)logits[base + c * M] - peak);
        loss[e] = peak + log(sum) - (double)logits[base + label * M];
        for (int c = 0; c < C; ++c) {
            const double p = exp((double)logits[base + c * M] - peak) / sum;
            dlogits[base + c * M] = (T)(c == label ? p - 1.0 : p);
        }
    }
}
""")


def softmax_cross_entropy(logits, labels, ignore_index=-100):
    """Summed softmax cross-entropy and its gradient.

    logits: (N, C) or (N, C, *S); labels: (N,) or (N, *S) integers in [0, C) or ignore_index.
    Returns (loss_sum, dlogits, count): loss_sum the float64 sum of per-element losses over
    non-ignored elements (a 0-d device array), dlogits its gradient (logits' shape and dtype, zero
    where ignored), count the number of non-ignored elements (a 0-d int64 device array). An
    out-of-range label gives NaN (see the module docstring).
    """
    xp = array_module()
    where = "softmax_cross_entropy"
    check_logits(logits, where)
    labels = xp.asarray(labels)
    check_labels(labels, logits, where)
    n, c = logits.shape[:2]
    labels = xp.ascontiguousarray(labels.astype(xp.int64, copy=False)).reshape(n, -1)
    lv = xp.ascontiguousarray(logits).reshape(n, c, -1)
    dlogits = xp.empty(lv.shape, dtype=logits.dtype)
    loss = xp.empty(labels.shape, dtype=xp.float64)
    _PROGRAM.launch("softmax_cross_entropy", logits.dtype, labels.size, lv, labels, dlogits, loss, labels.size,
                    c, lv.shape[2], ignore_index)
    return loss.sum(), dlogits.reshape(logits.shape), (labels != ignore_index).sum(dtype=xp.int64)


def squared_error(pred, target):
    """Sum of (pred - target)**2 (a 0-d float64 device array) and its gradient 2*(pred - target) (pred's dtype).

    pred, target: the same shape (target is cast to pred's dtype).
    """
    xp = array_module()
    where = "squared_error"
    check_float_array(pred, where)
    target = xp.asarray(target)
    check_same_shape(target, "target", pred, "pred", where)
    d = pred.astype(xp.float64) - target.astype(pred.dtype).astype(xp.float64)
    return (d * d).sum(), (2.0 * d).astype(pred.dtype)
