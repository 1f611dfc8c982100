"""The metrics log (JSON lines), the progress line on rank 0, and the validation scores of each task.

Every record of the metrics file is one JSON object on one line with a "kind":
"start" (the job, the dataset, the engine), "train" (step, epoch, loss, lr, images_per_s),
"val" (step, epoch, loss and accuracy / pixel_accuracy + mean_iou / mse), "checkpoint"
(step, path), "stop" (why the run ended early) and "summary" (the final figures). A
non-finite number is written as null with the field named in "nonfinite".
"""
import json
import math
import os
import sys
import time

import numpy as np

from ..backend import array_module, to_host

__all__ = ["MetricsLog", "Progress", "ConfusionCounts", "format_duration"]


def _clean(record):
    bad = []
    out = {}
    for key, value in record.items():
        if isinstance(value, (float, np.floating)):
            value = float(value)
            if not math.isfinite(value):
                bad.append(key)
                value = None
        elif isinstance(value, np.integer):
            value = int(value)
        out[key] = value
    if bad:
        out["nonfinite"] = bad
    return out


class MetricsLog:
    """Append one JSON object per line to `path` (only where `enabled`: rank 0)."""

    def __init__(self, path, enabled=True, append=False):
        self.path = path
        self.enabled = enabled
        self._file = None
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a" if append else "w")

    def write(self, kind, **fields):
        if not self.enabled:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **fields}
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def format_duration(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """The progress line: step, epoch, loss, lr, images/s over the last interval, ETA.

    update() is called every step; a line is printed every `every` steps and at the last.
    """

    def __init__(self, total_steps, steps_per_epoch, batch, every=10, enabled=True, stream=None, first_step=0):
        self.total = int(total_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.batch = int(batch)
        self.every = max(int(every), 1)
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self._mark = (first_step, time.perf_counter())
        self._rate = None  # steps per second, smoothed
        self.images_per_s = float("nan")

    def update(self, step, loss, lr):
        """`step`: steps done so far (1-based). Returns images/s when a line is due, else None."""
        if step % self.every and step != self.total:
            return None
        now = time.perf_counter()
        done = step - self._mark[0]
        elapsed = now - self._mark[1]
        if done <= 0 or elapsed <= 0:
            return None
        rate = done / elapsed
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
        self._mark = (step, now)
        self.images_per_s = rate * self.batch
        if self.enabled:
            epoch = (step - 1) // self.steps_per_epoch + 1
            epochs = -(-self.total // self.steps_per_epoch)
            eta = (self.total - step) / self._rate
            width = len(str(self.total))
            self.stream.write(f"step {step:>{width}}/{self.total} | epoch {epoch}/{epochs} | loss {loss:.4f} | "
                              f"lr {lr:.4g} | {self.images_per_s:,.1f} img/s | ETA {format_duration(eta)}\n")
            self.stream.flush()
        return self.images_per_s

    def say(self, text):
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


class ConfusionCounts:
    """A class-by-class count matrix, summed block by block and then over ranks.

    counts[i, j]: elements of true class i predicted as class j (float64 so it allreduces with sums), on the
    device of the logits (`xp`); the scores copy it to the host.
    """

    def __init__(self, num_classes, xp=np):
        self.num_classes = int(num_classes)
        self.counts = xp.zeros((self.num_classes, self.num_classes), np.float64)

    def add(self, logits, labels):
        """logits: (n, K) or (n, K, *S); labels: (n,) or (n, *S) integers (on the counts' device)."""
        xp = array_module(self.counts, logits, labels)
        k = self.num_classes
        pred = xp.argmax(logits, axis=1).reshape(-1).astype(np.int64)
        true = labels.reshape(-1).astype(np.int64)
        keep = (true >= 0) & (true < k)
        # labels outside the classes (ignored pixels) go to an extra bin that is dropped
        codes = xp.where(keep, true * k + pred, k * k)
        self.counts += xp.bincount(codes, minlength=k * k + 1)[:k * k].reshape(k, k)

    def accuracy(self):
        counts = to_host(self.counts)
        total = counts.sum()
        return float(np.trace(counts) / total) if total else float("nan")

    def mean_iou(self):
        """Mean over the classes present (in truth or prediction) of TP / (TP + FP + FN)."""
        counts = to_host(self.counts)
        tp = np.diag(counts)
        union = counts.sum(0) + counts.sum(1) - tp
        present = union > 0
        return float(np.mean(tp[present] / union[present])) if present.any() else float("nan")
