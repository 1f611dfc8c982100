"""Distributed losses: cross-entropy and mean squared error over DistTensors, normalized as in one process."""
import math

import numpy as np

from .. import kernels
from ..backend import array_module, to_host
from .module import arrive
from .shuffle import shuffle

__all__ = ["DistCrossEntropyLoss", "DistMSELoss"]


class _DistLoss:
    """A loss over DistTensors, normalized as in a single process (sums and counts over all ranks).

    The partial sums stay on the device through the allreduce; the reduced sums are copied to the host
    once (the loss value every rank returns), and that copy also scales the gradient.
    """

    def __init__(self, loss, d):
        self.loss = loss
        self.d = d
        self._arrivals = {}

    def _reduce_comm(self, t):
        """The ranks holding distinct blocks of `t` (one of each replica set): sums over them count each
        element once."""
        d = self.d
        if not d.is_replicated(t.ndim):
            return d.comm
        return d.group(tuple(sorted(set(d.split_axes(t.ndim).values()))))

    def _arrive(self, t):
        t, self._moved = arrive(t, self.d, self._arrivals)
        return t

    def __call__(self, *args):
        return self.forward(*args)

    def _result(self, t, grad):
        g = t.like(grad)
        return g if self._moved is None else self._moved.backward(g)


class DistCrossEntropyLoss(_DistLoss):
    """Mean cross-entropy over the non-ignored elements of the whole batch.

    forward(logits, labels) -> float (the same on every rank); backward() -> DistTensor dlogits.
    logits: (N, C) with labels (N,), or (N, C, *S) with labels (N, *S), under the same distribution.
    """

    def __init__(self, loss, d):
        # a softmax needs every class: on a channel split the logits move to the grid that replicates them
        super().__init__(loss, d.channels_whole())

    def forward(self, logits, labels):
        logits = self._arrive(logits)
        if labels.distribution != self.d:
            labels = shuffle(labels, self.d)
        x, lab = logits.local, labels.local
        xp = array_module(x)
        if x.size:
            loss_sum, dlogits, count = kernels.softmax_cross_entropy(x, lab, self.loss.ignore_index)
        else:
            loss_sum, dlogits, count = 0.0, xp.zeros_like(x), 0
        sums = xp.stack([xp.asarray(loss_sum, dtype=np.float64), xp.asarray(count, dtype=np.float64)])
        self._reduce_comm(logits).allreduce_(sums)
        sums = to_host(sums)
        total = int(round(sums[1]))
        self._logits = logits
        if total == 0:
            dlogits[...] = 0
            self.dlogits = dlogits
            return float("nan")
        dlogits *= dlogits.dtype.type(1.0 / total)
        self.dlogits = dlogits
        return float(sums[0]) / total

    def backward(self):
        return self._result(self._logits, self.dlogits)


class DistMSELoss(_DistLoss):
    """Mean of (pred - target)**2 over every element of the global tensors."""

    def forward(self, pred, target):
        pred = self._arrive(pred)
        if target.distribution != self.d:
            target = shuffle(target, self.d)
        n = math.prod(pred.global_shape)
        xp = array_module(pred.local)
        if pred.local.size:
            loss_sum, dpred = kernels.squared_error(pred.local, target.local)
        else:
            loss_sum, dpred = 0.0, xp.zeros_like(pred.local)
        total = xp.asarray(loss_sum, dtype=np.float64).reshape(1)
        self._reduce_comm(pred).allreduce_(total)
        s = float(to_host(total)[0])
        dpred *= dpred.dtype.type(1.0 / n)
        self._pred, self.dpred = pred, dpred
        return s / n

    def backward(self):
        return self._result(self._pred, self.dpred)
