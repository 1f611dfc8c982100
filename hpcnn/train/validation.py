"""Validation scores over a whole validation set, each sample (and pixel) counted exactly once on any grid."""
import numpy as np

from .. import kernels
from ..backend import to_host
from ..parallel import shuffle
from .metrics import ConfusionCounts

__all__ = ["validate"]


def validate(net, model, dataset, batches, batch, distribution, comm):
    """Loss and accuracy (classify), pixel accuracy and mean IoU (segment) or mse (regress) of `net` on `dataset`.

    net: the model, or its distributed form under `distribution` (None: one process); batches: a
    hpcnn.train.batches.Batches; comm: the job's Communicator (the sums are reduced over it). The sums
    and counts stay on the device until the end, where the reduced ones are copied to the host once.
    """
    task = batches.task
    xp = batches.device.xp
    B = batch
    if distribution is not None:
        B = max(B, distribution.grid[0])
    model.eval()
    counts = ConfusionCounts(dataset.num_classes, xp) if task != "regress" else None
    sums = xp.zeros(2, np.float64)  # loss sum, element count
    for start in range(0, len(dataset), B):
        idx = np.arange(start, min(start + B, len(dataset)))
        real = len(idx)
        if distribution is not None and real < distribution.grid[0]:
            idx = np.concatenate([idx, np.full(distribution.grid[0] - real, idx[-1])])
        out = net.forward(batches.inputs(dataset, idx, distribution))
        rows = np.arange(len(idx))
        if distribution is None:
            y = batches.labels(dataset, idx)
        else:
            if out.ndim > 2 and out.distribution.channels > 1:
                # scores need every class of a pixel on one rank
                out = shuffle(out, out.distribution.channels_whole())
            d = out.distribution
            y = batches.labels(dataset, idx, d).local
            rows = rows[d.local_slices(out.global_shape)[0]]
            out = out.local
            if not d.is_lead_replica(out.ndim):
                rows, out, y = rows[:0], out[:0], y[:0]  # replicated rows count once, on each replica set's first rank
        # rows is an increasing range, so the real samples (not the padding) are a prefix of it
        real_rows = int(np.count_nonzero(rows < real))
        out, y = out[:real_rows], y[:real_rows]
        if task == "regress":
            sums[0] += ((out.astype(np.float64) - y) ** 2).sum()
            sums[1] += out.size
        elif len(y):
            loss_sum, _, count = kernels.softmax_cross_entropy(xp.ascontiguousarray(out), xp.ascontiguousarray(y))
            sums[0] += loss_sum
            sums[1] += count
            counts.add(out, y)
    model.train()
    comm.allreduce_(sums)
    sums = to_host(sums)
    result = {"loss": float(sums[0] / sums[1]) if sums[1] else float("nan")}
    if task == "regress":
        result["mse"] = result["loss"]
    else:
        comm.allreduce_(counts.counts)
        if task == "segment":
            result["pixel_accuracy"] = counts.accuracy()
            result["mean_iou"] = counts.mean_iou()
        else:
            result["accuracy"] = counts.accuracy()
    return result
