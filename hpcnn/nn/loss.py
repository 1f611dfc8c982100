"""Losses: softmax cross-entropy (per sample or per pixel) and mean squared error, each a mean."""
from .. import kernels
from ..backend import check_float_array, host_scalars

__all__ = ["CrossEntropyLoss", "MSELoss"]


class CrossEntropyLoss:
    """Mean softmax cross-entropy over the elements whose label is not `ignore_index` (PyTorch's
    reduction='mean' without class weights).

    forward(logits, labels) -> loss (a Python float); backward() -> dlogits (same shape as logits).
    logits: (N, C) with labels (N,), or (N, C, *S) with labels (N, *S) for per-pixel classes;
    labels are integers in [0, C) or `ignore_index`. With every element ignored the loss is nan and
    the gradient zero.
    """

    def __init__(self, ignore_index=-100):
        self.ignore_index = int(ignore_index)
        self.dlogits = None
        self.count = 0

    def describe(self):
        return "CrossEntropyLoss()" if self.ignore_index == -100 else \
            f"CrossEntropyLoss(ignore_index={self.ignore_index})"

    __repr__ = describe

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        where = self.describe()
        check_float_array(logits, where, ndim=tuple(range(2, 8)))
        if not hasattr(labels, "dtype") or labels.dtype.kind not in "iu":
            raise ValueError(f"{where}: labels must be an integer array, received "
                             f"{getattr(labels, 'dtype', type(labels).__name__)}")
        expected = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"{where}: logits of shape {tuple(logits.shape)} need labels of shape {expected}, "
                             f"received {tuple(labels.shape)}")
        loss_sum, dlogits, count = kernels.softmax_cross_entropy(logits, labels, self.ignore_index)
        loss_sum, count = host_scalars(loss_sum, count)
        self.count = int(count)
        if self.count == 0:
            dlogits[...] = 0
            self.dlogits = dlogits
            return float("nan")
        dlogits *= dlogits.dtype.type(1.0 / self.count)
        self.dlogits = dlogits
        return float(loss_sum) / self.count

    def backward(self):
        """The gradient of the last forward's mean loss with respect to its logits."""
        if self.dlogits is None:
            raise ValueError(f"{self.describe()}: backward() called before forward()")
        return self.dlogits


class MSELoss:
    """Mean of (pred - target)**2 over every element (PyTorch's reduction='mean').

    forward(pred, target) -> loss (a Python float); backward() -> dpred. pred, target: any equal shapes.
    """

    def __init__(self):
        self.dpred = None

    def describe(self):
        return "MSELoss()"

    __repr__ = describe

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target):
        where = self.describe()
        check_float_array(pred, where)
        check_float_array(target, where)
        if tuple(pred.shape) != tuple(target.shape) or pred.dtype != target.dtype:
            raise ValueError(f"{where}: prediction and target must have one shape and dtype, received "
                             f"{tuple(pred.shape)} {pred.dtype} and {tuple(target.shape)} {target.dtype}")
        loss_sum, dpred = kernels.squared_error(pred, target)
        loss_sum, = host_scalars(loss_sum)
        n = pred.size
        dpred *= dpred.dtype.type(1.0 / n)
        self.dpred = dpred
        return float(loss_sum) / n

    def backward(self):
        if self.dpred is None:
            raise ValueError("MSELoss(): backward() called before forward()")
        return self.dpred

