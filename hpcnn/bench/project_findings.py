"""The findings `hpcnn bench project` writes: sentences drawn from the projected rows, per model."""
import math

from perfmodel.splits import SPLITS

from .project_cases import GIB, MODES

__all__ = ["findings", "percent"]


def percent(x):
    """x as a percentage: one decimal below 9.5%, none above."""
    return f"{x * 100:.1f}%" if abs(x) < 0.095 else f"{x * 100:.0f}%"


def _samples(n):
    return f"{n} sample" + ("" if n == 1 else "s")


def _best_at(rows, ranks):
    fit = [r for r in rows if r["ranks"] == ranks and r["fits"]]
    return max(fit, key=lambda r: r["samples_per_s"]) if fit else None


def _crossover(rows, ranks_list):
    """The smallest P from which, at every larger P too, some split with spatial parallelism is
    faster than pure sample parallelism (or sample parallelism cannot run or fit), or None."""
    cross = None
    for p in reversed(ranks_list):
        best = _best_at(rows, p)
        if best is None:
            continue
        if best["split"] == "sample":
            break
        cross = p
    return cross


def _sample_story(rows, ranks_list, machine):
    """Where pure sample parallelism stops: memory, the batch, or the gradient allreduce."""
    by = {r["ranks"]: r for r in rows if r["split"] == "sample"}
    fit = [p for p in ranks_list if by[p]["fits"]]
    limit = f"{machine.memory_per_rank / GIB:.3g} GiB"
    if not fit:
        sized = [by[p] for p in ranks_list if by[p]["memory_gib"] != ""]
        if not sized:
            return [f"pure sample parallelism cannot run at any rank count (e.g. {by[ranks_list[-1]]['reason']})."]
        least = min(sized, key=lambda r: r["memory_gib"])
        per_rank = math.ceil(least["global_batch"] / least["ranks"])
        return [f"pure sample parallelism never fits: {_samples(per_rank)} per rank "
                f"need{'' if per_rank > 1 else 's'} {least['memory_gib']:.3g} GiB per rank, over the {limit} of "
                f"one {machine.name} rank."]
    first, last = fit[0], fit[-1]
    parts = []
    before = [by[p] for p in ranks_list if p < first and by[p]["memory_gib"] != ""]
    if before:
        parts.append(f"fits memory only from P = {first} (at P = {before[0]['ranks']} it needs "
                     f"{before[0]['memory_gib']:.3g} GiB per rank, over the {limit})")
    elif first > ranks_list[0]:
        parts.append(f"runs only from P = {first}")
    r = by[last]
    beyond = [p for p in ranks_list if p > last]
    if beyond and by[beyond[0]]["reason"].startswith(f"{beyond[0]} ranks > global batch"):
        parts.append(f"stops at P = {last}, the global batch: beyond it some ranks would hold no sample")
    else:
        parts.append(f"runs up to P = {last}")
    text = "pure sample parallelism " + ", ".join(parts) + "."
    text += (f" At P = {last} its efficiency is {percent(r['efficiency'])}; the exposed gradient allreduce is "
             f"{percent(r['allreduce_share'])} of the iteration and communication in all {percent(r['comm_share'])}")
    if len(fit) > 1 and fit[1] != last:
        r1 = by[fit[1]]
        text += f" (at P = {r1['ranks']}: {percent(r1['allreduce_share'])} and {percent(r1['comm_share'])})"
    out = [text + "."]
    low = next((p for p in fit if by[p]["efficiency"] < 0.5), None)
    if low is not None:
        out.append(f"Its efficiency falls below 50% at P = {low} ({percent(by[low]['efficiency'])}), where the "
                   f"exposed gradient allreduce takes {percent(by[low]['allreduce_share'])} of the iteration: "
                   f"{_samples(math.ceil(by[low]['global_batch'] / low))} per rank no longer hide it.")
    return out


def _crossover_story(rows, ranks_list):
    """Where a split with spatial parallelism takes over, from the numbers."""
    if not any(r["fits"] for r in rows):
        return ["No split fits the memory per rank at any rank count."]
    cross = _crossover(rows, ranks_list)
    if cross is None:
        last = max(p for p in ranks_list if _best_at(rows, p) is not None)
        return [f"Pure sample parallelism stays the fastest split up to P = {last}: spatial splitting does not "
                f"take over in this range."]
    best = _best_at(rows, cross)
    sample = next(r for r in rows if r["ranks"] == cross and r["split"] == "sample")
    if sample["fits"]:
        why = (f"{best['samples_per_s']:.4g} samples/s against {sample['samples_per_s']:.4g} for pure sample "
               f"parallelism")
    elif sample["iteration_s"] != "":
        why = (f"{best['samples_per_s']:.4g} samples/s, while pure sample parallelism does not fit "
               f"({sample['memory_gib']:.3g} GiB per rank)")
    else:
        why = f"{best['samples_per_s']:.4g} samples/s, while pure sample parallelism cannot run"
    first_fit = min(r["ranks"] for r in rows if r["fits"])
    head = (f"From the first rank count that fits (P = {cross}) on" if cross == first_fit
            else f"From P = {cross} on")
    return [f"{head}, a split with spatial parallelism is the fastest: at P = {cross} the {best['split']} split "
            f"({best['grid']}) gives {why}."]


def _end_story(rows, ranks_list, p0):
    """The best split at the largest P, where throughput peaks, and what the plan adds."""
    fitting = [p for p in ranks_list if _best_at(rows, p) is not None]
    if not fitting:
        return []
    top = fitting[-1]
    best = _best_at(rows, top)
    out = [f"At P = {top} the fastest is the {best['split']} split ({best['grid']}"
           + (f", {best['distinct_grids']} distinct grids" if best["distinct_grids"] != 1 else "")
           + f"): {best['samples_per_s']:.4g} samples/s, {best['speedup']:.4g}x the best at P0 = {p0} "
           f"({percent(best['efficiency'])} efficiency, communication {percent(best['comm_share'])} of the iteration)."]
    peak = max(fitting, key=lambda p: _best_at(rows, p)["samples_per_s"])
    if peak < top:
        pb = _best_at(rows, peak)
        out.append(f"Throughput peaks at P = {peak} ({pb['samples_per_s']:.4g} samples/s, {pb['split']} split): "
                   f"more ranks only add communication.")
    gains = []
    for p in ranks_list:
        plan = next((r for r in rows if r["ranks"] == p and r["split"] == "plan" and r["fits"]), None)
        single = [r["samples_per_s"] for r in rows if r["ranks"] == p and r["split"] != "plan" and r["fits"]]
        if plan and single:
            gains.append((plan["samples_per_s"] / max(single) - 1, p))
        elif plan:
            gains.append((math.inf, p))
    if gains:
        gain, p = max(gains)
        if gain == math.inf:
            only = [q for g, q in gains if g == math.inf]
            out.append(f"At P = {', '.join(map(str, only))} only the plan's layer-wise grids fit memory.")
        elif gain > 0.005:
            out.append(f"The plan's layer-wise grids beat the best single grid by up to {percent(gain)} "
                       f"(at P = {p}).")
        else:
            out.append("The plan's layer-wise grids are no faster than the best single grid here "
                       "(within 0.5%).")
    return out


def _channel_story(rows):
    """Where the plan puts layers on channel/filter grids, and what they gain over the best plan without them."""
    used = [r for r in rows if r["split"] == "plan" and r["fits"] and r["cf_layers"]]
    if not used:
        return ["Channel/filter splits (predicted): the plan uses none at these rank counts."]
    ranks = [r["ranks"] for r in used]
    most = max(used, key=lambda r: r["cf_layers"])
    out = (f"Channel/filter splits (predicted): the plan puts layers on them at P = {', '.join(map(str, ranks))} "
           f"(at most {most['cf_layers']} of {most['layers']} layers, at P = {most['ranks']})")
    compared = [r for r in used if r["without_cf_s"] != ""]
    if compared:
        best = max(compared, key=lambda r: r["without_cf_s"] / r["iteration_s"])
        out += (f"; they make the iteration up to {best['without_cf_s'] / best['iteration_s']:.3g}x shorter than "
                f"the best plan without them (at P = {best['ranks']})")
    alone = [r["ranks"] for r in used if r["without_cf_s"] == ""]
    if alone:
        out += f"; at P = {', '.join(map(str, alone))} no plan without them fits"
    return [out + "."]


def _memory_story(model, memory_rows):
    """The largest sample per split and rank count, and the splits for which no sample size works."""
    rows = [r for r in memory_rows if r["model"] == model]
    if not rows:
        return []
    parts, missing = [], []
    for split in SPLITS:
        sub = [r for r in rows if r["split"] == split]
        have = [r for r in sub if r["largest_side"] != ""]
        sides = {r["largest_side"] for r in have}
        if len(have) > 1 and len(sides) == 1 and split == "sample":
            parts.append(f"sample {have[0]['sample_shape']} on any P (one sample per rank)")
        elif have:
            parts.append(f"{split} " + ", ".join(f"{'>=' if r['capped'] else ''}{r['sample_shape']} on "
                                                 f"{r['ranks']}" for r in have))
        lost = [r for r in sub if r["largest_side"] == "" and r["ranks"] > 1]
        if lost:
            missing.append(f"{split} on {', '.join(str(r['ranks']) for r in lost)} ranks ({lost[-1]['reason']})")
    out = ["Largest sample that fits the memory per rank (one sample per rank for sample parallelism, a batch of "
           "1 otherwise, 2 for hybrid): " + "; ".join(parts) + "."]
    if missing:
        out.append("No sample size works for " + "; ".join(missing) + ".")
    return out


def findings(name, mode_rows, p0s, ranks_list, machine, batches, memory_rows):
    """The sentences for model `name`: per mode (rows in mode_rows, P0 in p0s) where sample parallelism
    stops, where spatial splitting takes over and the best at the largest P; then the largest samples."""
    out = []
    for mode in MODES:
        rows = mode_rows[mode]
        per_rank = batches["weak"][name]
        batch_text = (f"global batch {batches['strong'][name]}" if mode == "strong"
                      else f"{per_rank} sample{'' if per_rank <= 1 else 's'} per rank")
        story = _sample_story(rows, ranks_list, machine)
        out.append(f"{mode.capitalize()} scaling ({batch_text}): {story[0]}")
        out += story[1:]
        out += _crossover_story(rows, ranks_list)
        if p0s[mode] is not None:
            out += _end_story(rows, ranks_list, p0s[mode])
        out += _channel_story(rows)
    return out + _memory_story(name, memory_rows)
