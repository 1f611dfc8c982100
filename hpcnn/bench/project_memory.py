"""The largest sample each split trains in the memory per rank, for `hpcnn bench project` (perfmodel only)."""
import math
from collections import Counter

from perfmodel.splits import split_grids, split_plan

from .project_cases import GIB

__all__ = ["MEMORY_COLUMNS", "largest_samples"]

MEMORY_COLUMNS = ("model", "split", "ranks", "batch", "largest_side", "sample_shape", "grid", "memory_gib",
                  "capped", "reason")


def _memory_batch(split, ranks):
    """The batch of the search: one sample per rank (sample), per sample group of the smallest Pn > 1 that
    leaves a spatial split (hybrid; None if there is none), else 1."""
    if split == "sample":
        return ranks
    if split == "hybrid":
        return next((d for d in range(2, ranks) if ranks % d == 0 and ranks // d > 1), None)
    return 1


def _least_memory(chain, grids, machine):
    """(PlanResult with the least memory per rank among `grids`, or None if every grid is refused);
    stops at the first grid that fits."""
    from perfmodel.planner import uniform_plan
    best = None
    for g in grids:
        plan = uniform_plan(chain, g, machine)
        if plan is None:
            continue
        if best is None or plan.memory < best.memory:
            best = plan
        if plan.memory <= machine.memory_per_rank:
            break
    return best


class _SideSearch:
    """Largest S such that a sample (C, S, ..., S) trains with `split` on `ranks` ranks in memory."""

    def __init__(self, chains, name, channels, nd, split, ranks, machine, max_side):
        self.chains, self.name, self.channels, self.nd = chains, name, channels, nd
        self.split, self.ranks, self.machine, self.max_side = split, ranks, machine, max_side
        self.batch = _memory_batch(split, ranks)
        self._seen = {}

    def _valid_side(self, side, floor):
        """The largest side in (floor, side] that the model accepts, or None."""
        for s in range(side, floor, -1):
            try:
                self.chains.get(self.name, (self.channels,) + (s,) * self.nd, self.batch)
                return s
            except ValueError:
                continue
        return None

    @property
    def batch_groups(self):
        """Pn of the split's grids: sample blocks are one sample each here."""
        return self.batch if self.split in ("sample", "hybrid") else 1

    def _smallest_output(self, side):
        """Elements per channel of the smallest spatial layer output at `side` (None: no valid side)."""
        if side is None:
            return None
        from perfmodel.layers import iter_layers
        chain = self.chains.get(self.name, (self.channels,) + (side,) * self.nd, self.batch)
        return min(math.prod(layer.out_shape[2:]) for layer in iter_layers(chain) if len(layer.out_shape) > 2)

    def status(self, side):
        """('fits' | 'refused' | 'memory', PlanResult or None, reason) for one valid side."""
        hit = self._seen.get(side)
        if hit:
            return hit
        chain = self.chains.get(self.name, (self.channels,) + (side,) * self.nd, self.batch)
        limit = self.machine.memory_per_rank
        if self.split == "plan":
            result, why = split_plan(chain, "plan", self.ranks, self.machine)
            if result is not None:
                out = ("fits", result, "")
            else:
                out = ("memory" if why.startswith("no plan fits") else "refused", None, why)
        else:
            result = _least_memory(chain, split_grids(self.split, self.ranks, self.nd, self.batch), self.machine)
            if result is None:
                out = ("refused", None, "every grid of the split is refused")
            elif result.memory > limit:
                out = ("memory", result, f"needs {result.memory / GIB:.3g} GiB per rank")
            else:
                out = ("fits", result, "")
        self._seen[side] = out
        return out

    def run(self, hint=None):
        """(side or None, PlanResult at that side, capped: every side up to max_side fits, reason).

        hint: a side that probably fits (the answer for fewer ranks); the doubling starts there."""
        if self.batch is None:
            return None, None, False, f"{self.ranks} ranks cannot split both the batch and the sample"
        lo, lo_result, side, reason = None, None, 8, "no side up to the search limit fits"
        failed, smallest = False, {}
        if hint and hint <= self.max_side:
            state, result, _ = self.status(hint)
            if state == "fits":
                lo, lo_result, side = hint, result, 2 * hint
        while side <= self.max_side:
            valid = self._valid_side(side, lo or 0)
            if valid is None and lo is not None:   # no side the model accepts in (lo, side]: look further
                side *= 2
                continue
            state, result, why = (self.status(valid) if valid is not None else
                                  ("refused", None, "the model refuses every side up to this one"))
            if state == "fits":
                lo, lo_result = valid, result
            elif lo is None and state == "refused":
                reason = why                      # too small for this split yet: keep doubling
                smallest[side] = self._smallest_output(valid)
                if smallest[side] is not None and smallest[side] == smallest.get(side // 64) and \
                        smallest[side] < self.ranks // self.batch_groups:
                    # the smallest layer output has not grown over a 64x larger input (more than any
                    # zoo model downsamples): it is fixed (CosmoFlow pools down to 4^3), never enough blocks
                    reason = (f"the smallest layer output has {smallest[side]} elements per channel at every "
                              f"input size, fewer than the {self.ranks // self.batch_groups} spatial blocks")
                    break
            else:
                reason, failed = why, True
                break
            side *= 2
        if lo is None:
            return None, None, False, reason
        hi = side if failed else self.max_side + 1     # the first side known (or assumed) not to fit
        top = lo
        while hi - top > max(1, top // 100):      # to within 1%
            mid = (top + hi) // 2
            valid = self._valid_side(mid, lo)
            if valid is None:                      # nothing the model accepts in (lo, mid]: no new answer
                top = mid
                continue
            state, result, _ = self.status(valid)
            if state == "fits":
                top, lo, lo_result = mid, valid, result
            else:
                hi, failed = mid, True
        return lo, lo_result, not failed, ""


def largest_samples(chains, cases, splits, memory_ranks, machine, max_elements):
    """One MEMORY_COLUMNS row per (model of `cases`, split, rank count of `memory_ranks`): the largest side
    (up to max_elements elements per channel) that fits, its grid and memory, or the reason none does."""
    from perfmodel.layers import Block
    from perfmodel.planner import grid_string
    rows = []
    for name, shape in cases.items():
        nd = len(shape) - 1
        max_side = int(round(max_elements ** (1.0 / nd)))
        found = {}
        for split in splits:
            for ranks in memory_ranks:
                search = _SideSearch(chains, name, shape[0], nd, split, ranks, machine, max_side)
                # the answer for fewer ranks, or (plan, batch 1) the spatial split's, most likely fits
                hints = [found.get((split, p)) for p in memory_ranks if p < ranks][-1:]
                if split == "plan":
                    hints.append(found.get(("spatial", ranks)))
                side, result, capped, reason = search.run(max((h for h in hints if h), default=None))
                found[(split, ranks)] = side
                row = dict.fromkeys(MEMORY_COLUMNS, "")
                row.update(model=name, split=split, ranks=ranks, batch=search.batch or "", capped=capped,
                           reason=reason)
                if side is not None:
                    grids = Counter(g for n, g, _, _ in result.layers if n is not None and not isinstance(n, Block))
                    grid = grid_string(grids.most_common(1)[0][0])
                    row.update(largest_side=side, sample_shape="x".join(map(str, (shape[0],) + (side,) * nd)),
                               grid=grid + (f" (+{len(grids) - 1} more)" if len(grids) > 1 else ""),
                               memory_gib=result.memory / GIB)
                rows.append(row)
    return rows
