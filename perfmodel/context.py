"""Layers in context: the local correction of a layer's predicted time by the layers of random networks.

`hpcnn calibrate` trains seeded random networks on one rank and split over several (``hpcnn.calibrate.context``)
and keeps, per layer kind, every leaf's place (`perfmodel.costs.layer_point`), the log of its measured over
predicted forward and backward time (messages and waits included; the prediction with the profile's kernel
models and layer-call terms) and the log of the predicted times::

    "layers_in_context": {"source": KEY, "kinds": {KIND: {"source": KEY,
                          "rows": [[point..., log_ratio_fwd, log_ratio_bwd, log_pred_fwd, log_pred_bwd], ...]}}}

A layer's predicted time is then corrected by terms of its kind and grid (`ContextCorrection`: a factor from
the one-rank layers, extra seconds per call from the layers under grids of as many ranks), refined by the
distance-weighted geometric mean of its nearest measured layers' deviations from those terms, damped with
distance (as the kernel models' local correction, `perfmodel.kernel_models`): near the random networks'
layers the prediction is their measurement, far from them the kernel models' with the typical correction of
its kind and grid. It carries what a kernel timed alone on the same arrays again and
again does not show (inputs another layer just wrote, fresh outputs, the distributed layer's own work) and
what the kernel models' linear forms miss for a class of shapes (strided windows, 3-D blocks, thin channels).
"""
import math

import numpy as np

from .profile_format import ProfileError

__all__ = ["ContextCorrection", "POINT_SIZE", "ROW_SIZE"]

# The coordinates of a layer's place (`perfmodel.costs.layer_point`); the last but one is its grid's rank count.
POINT_SIZE = 10
_RANKS = slice(POINT_SIZE - 2, POINT_SIZE - 1)
ROW_SIZE = POINT_SIZE + 4


class ContextCorrection:
    """The "layers_in_context" section of a profile (absent: no correction).

    Per kind, the rows fall into groups by their grid's rank count. The one-rank group's median log ratio is a
    factor on every layer's predicted time: what the kernel models miss of a kind in a network. A group of
    several ranks adds, to that, its median extra seconds per call (measured less the one-rank-corrected
    prediction): waiting for the slowest rank at every synchronising layer, the messages' and the distributed
    layer's own per-call costs, which a small layer feels and a large one does not (a factor per group, tried
    first, over-predicted the held-out networks' large layers at 2 ranks by up to 50%). The group is the rank
    count's, not the split's: per kind of split (samples, the block) the medians come from a few networks
    each, and their noise made the planner alternate grids layer by layer to collect differences that do not
    exist. A rank count the calibration did not run, or too rarely (fewer than GROUP_MIN rows), takes the
    nearest group's terms (a 4-rank grid the 2-rank one's). The nearest rows' own deviations from their group's
    terms refine the result near them, damped with distance (the split is a coordinate of the distance).

    Rows: the layer's place (`perfmodel.costs.layer_point`), the log of measured over predicted seconds and the
    log of the predicted seconds, forward and backward."""

    NEIGHBOURS = 6
    RADIUS = 1.0      # in natural-log units of the point
    GROUP_MIN = 10    # rows a group needs for terms of its own

    def __init__(self, section):
        self.kinds = {}
        for kind, entry in (section or {}).get("kinds", {}).items():
            rows = np.asarray(entry.get("rows", []), dtype=float)
            if rows.ndim != 2 or rows.shape[1] != ROW_SIZE:
                raise ProfileError(f"layers_in_context.kinds.{kind}.rows: expected rows of {POINT_SIZE} "
                                   f"coordinates, 2 log ratios and 2 log predicted seconds")
            if not len(rows):
                continue
            points = rows[:, :POINT_SIZE]
            log_ratio, predicted = rows[:, POINT_SIZE:POINT_SIZE + 2], np.exp(rows[:, POINT_SIZE + 2:])
            keys = [tuple(k) for k in np.round(points[:, _RANKS], 6)]
            alone = [k == (0.0,) for k in keys]
            one = np.median(log_ratio[alone], axis=0) if sum(alone) >= self.GROUP_MIN else np.zeros(2)
            groups = {(0.0,): np.zeros(2)}
            for key in set(keys) - {(0.0,)}:
                mine = np.array([k == key for k in keys])
                if mine.sum() >= self.GROUP_MIN:
                    groups[key] = np.median(predicted[mine] * (np.exp(log_ratio[mine]) - np.exp(one)), axis=0)
            model = np.array([self._modelled(one, groups.get(k, np.zeros(2)), p) for k, p in zip(keys, predicted)])
            self.kinds[kind] = (points, log_ratio - np.log(model), one, groups)

    @staticmethod
    def _modelled(one, extra, predicted):
        """The group terms' factor on `predicted` seconds (forward, backward), at least a fifth."""
        return np.maximum(np.exp(one) + extra / np.maximum(predicted, 1e-9), 0.2)

    def factors(self, kind, point, predicted):
        """(forward, backward) multipliers of a `kind` layer at `point` predicted to take `predicted` (forward,
        backward) seconds (1, 1 for kinds without rows)."""
        entry = self.kinds.get(kind)
        if entry is None:
            return 1.0, 1.0
        points, residual, one, groups = entry
        point = np.asarray(point, dtype=float)
        where = point[_RANKS]
        # the nearest group in rank count
        extra = groups[min(groups, key=lambda k: (k[0] - where[0]) ** 2)]
        model = self._modelled(one, extra, np.asarray(predicted, dtype=float))
        dist = np.sqrt(((points - point) ** 2).sum(axis=1))
        nearest = np.argsort(dist)[: self.NEIGHBOURS]
        w = 1.0 / (dist[nearest] + 0.05)
        local = (w[:, None] * residual[nearest]).sum(axis=0) / w.sum()
        damping = math.exp(-(float(dist[nearest].min()) / self.RADIUS) ** 2)
        total = model * np.exp(local * damping)
        return float(total[0]), float(total[1])
