"""Scores of a CHAOS-trained model: mean loss and accuracy over a data set, in batches on the calling thread."""
import copy

import numpy as np

__all__ = ["evaluate", "is_classification"]


def evaluate(model, loss, x, y, batch=512):
    """(mean loss, accuracy or None) of the model on (x, y), in batches on the calling thread."""
    was_training = model.training
    model.eval()
    loss = copy.copy(loss)
    try:
        total, correct, n, classifies = 0.0, 0, len(x), False
        for lo in range(0, n, batch):
            xb, yb = x[lo:lo + batch], y[lo:lo + batch]
            out = model.forward(xb)
            total += loss.forward(out, yb) * len(xb)
            classifies = is_classification(out, yb)
            if classifies:
                correct += int(np.sum(out.argmax(axis=1) == yb))
    finally:
        model.train(was_training)
    if n == 0:
        return float("nan"), None
    return total / n, (correct / n if classifies else None)


def is_classification(out, y):
    """True when out: (n, K) logits and y: (n,) integer classes."""
    return out.ndim == 2 and y.ndim == 1 and y.dtype.kind in "iu"
