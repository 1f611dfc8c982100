"""The plots of `hpcnn bench scaling`: speedup, efficiency and time by part, and the per-layer breakdown."""
import os

from .output import pyplot
from .scaling_tables import PARTS

__all__ = ["plot"]


def plot(rows, points, mode, out):
    """scaling_MODE.png (speedup with the ideal line, efficiency, time per iteration by part, measured and
    predicted) and breakdown_MODE.png (per layer) in `out`; their names ([] without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    part = [r for r in rows if r["mode"] == mode and r["role"] == "sweep"]
    splits = list(dict.fromkeys(r["split"] for r in part))
    ranks = sorted({r["ranks"] for r in part})
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, split in enumerate(splits):
        rs = sorted((r for r in part if r["split"] == split), key=lambda r: r["ranks"])
        c = colors[i % len(colors)]
        x = [r["ranks"] for r in rs]
        size = 11 - 2.5 * min(i, 3)   # splits measured as one configuration lie on top of each other
        ax1.plot(x, [r["speedup"] for r in rs], "o-", color=c, ms=size, label=f"{split} measured")
        ax1.plot(x, [r["predicted_speedup"] for r in rs], "s--", color=c, mfc="none", ms=size,
                 label=f"{split} predicted")
        ax2.plot(x, [r["efficiency"] for r in rs], "o-", color=c, ms=size, label=f"{split} measured")
        ax2.plot(x, [r["predicted_efficiency"] for r in rs], "s--", color=c, mfc="none", ms=size,
                 label=f"{split} predicted")
    threaded = [r for r in rows if r["mode"] == mode and r["role"] == "threads" and r["split"] == r["measured_as"]]
    for r in threaded:
        ax1.plot([r["cores"] / max(part[0]["threads"], 1) if part else r["cores"]], [r["speedup"]], "k^", label=f"1 rank x {r['threads']} threads ({r['grid']})")
    if ranks:
        ax1.plot([min(ranks), max(ranks)], [min(ranks), max(ranks)], "k:", lw=1, label="ideal")
    ax2.axhline(1.0, color="k", ls=":", lw=1)
    ax2.set_ylim(0, max([1.1] + [r["efficiency"] + 0.05 for r in part]))
    threads = {r["threads"] for r in part}
    per_rank = f"{threads.pop()} thread(s) each" if len(threads) == 1 else "threads vary"
    ax1.set_xlabel(f"ranks ({per_rank})")
    ax1.set_ylabel("speedup" if mode == "strong" else "throughput speedup (samples/s)")
    ax1.set_title(f"{mode} scaling: speedup")
    ax2.set_xlabel(f"ranks ({per_rank})")
    ax2.set_ylabel("parallel efficiency")
    ax2.set_title("efficiency (speedup per core)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.legend(fontsize=7)
    # time per iteration by part, measured (solid) and predicted (hatched), per measured configuration
    pts = sorted((p for p in points if p["role"] == "sweep"), key=lambda p: (p["ranks"], p["label"]))
    names = ["compute", "halo", "collective", "shuffle", "gradient allreduce", "other"]
    labels = []
    for j, p in enumerate(pts):
        measured = _parts_measured(p)
        predicted = _parts_predicted(p)
        for k, (vals, hatch) in enumerate(((measured, None), (predicted, "//"))):
            bottom = 0.0
            for n, name in enumerate(names):
                ax3.bar(j + (k - 0.5) * 0.38, vals[name], 0.36, bottom=bottom, color=colors[n % len(colors)],
                        hatch=hatch, edgecolor="white" if hatch else None,
                        label=name if (j == 0 and k == 0) else None)
                bottom += vals[name]
        labels.append(f"{p['ranks']}r {p['label']}\n{p['grid']}")
    ax3.set_xticks(range(len(pts)), labels, fontsize=7)
    ax3.set_ylabel("seconds per iteration")
    ax3.set_title("measured (left) and predicted (right, hatched)")
    ax3.legend(fontsize=7)
    p0 = points[0]
    fig.suptitle(f"hpcnn bench scaling: {p0['model']} {p0['input']}, {mode} (batch {', '.join(str(b) for b in sorted({p['batch'] for p in points}))}); "
                 f"predictions: {os.path.basename(str(p0['machine']))}", fontsize=10)
    fig.tight_layout()
    name = f"scaling_{mode}.png"
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return [name, _plot_breakdown(points, mode, out, plt, colors)]


def _parts_measured(p):
    layers = p["layers"].values()
    parts = {k: sum(v[f"{k}_s"] for v in layers) for k in PARTS}
    parts["gradient allreduce"] = p["comm_s"]["gradient_allreduce"]
    # shuffles run by containers fall outside the leaves
    parts["shuffle"] += max(p["comm_s"]["shuffle"] - sum(v["shuffle_s"] for v in layers), 0.0)
    parts["other"] = max(p["iteration_s"] - sum(parts.values()), 0.0)
    return parts


def _parts_predicted(p):
    q = p["predicted"]
    layers = q["layers"].values()
    parts = {k: sum(v[f"{k}_s"] for v in layers) for k in PARTS}
    parts["shuffle"] += q["block_shuffle_s"]
    parts["gradient allreduce"] = q["gradient_allreduce_s"]
    parts["other"] = q["other_s"]
    return parts


def _groups(names, limit=32):
    """Leaf names, or their first dotted component when there are more than `limit` leaves."""
    if len(names) <= limit:
        return {n: n for n in names}
    return {n: n.split(".")[0] for n in names}


def _plot_breakdown(points, mode, out, plt, colors):
    top = max(p["ranks"] for p in points if p["role"] == "sweep")
    pts = sorted((p for p in points if p["ranks"] == top and p["role"] == "sweep"), key=lambda p: p["label"])
    fig, axes = plt.subplots(len(pts), 1, figsize=(14, 3.6 * len(pts)), squeeze=False)
    for ax, p in zip(axes[:, 0], pts):
        group = _groups(list(p["layers"]))
        order = list(dict.fromkeys(group.values()))
        measured = {g: {k: 0.0 for k in PARTS} for g in order}
        predicted = {g: {k: 0.0 for k in PARTS} for g in order}
        for name, v in p["layers"].items():
            q = p["predicted"]["layers"].get(name, {})
            for k in PARTS:
                measured[group[name]][k] += v[f"{k}_s"]
                predicted[group[name]][k] += q.get(f"{k}_s", 0.0)
        for j, g in enumerate(order):
            for k, (vals, hatch) in enumerate(((measured, None), (predicted, "//"))):
                bottom = 0.0
                for n, part in enumerate(PARTS):
                    value = vals[g][part] * 1e3
                    ax.bar(j + (k - 0.5) * 0.4, value, 0.38, bottom=bottom, color=colors[n], hatch=hatch,
                           edgecolor="white" if hatch else None,
                           label=(part if part != "collective" else "allreduce (collectives)")
                           if (j == 0 and k == 0) else None)
                    bottom += value
        ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("ms per iteration")
        ax.set_title(f"{p['ranks']} ranks, {p['label']} ({p['grid']}): per layer, measured (left) and predicted "
                     f"(right, hatched); gradient allreduce wait after backward: measured "
                     f"{p['comm_s']['gradient_allreduce'] * 1e3:.1f} ms, predicted "
                     f"{p['predicted']['gradient_allreduce_s'] * 1e3:.1f} ms", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"breakdown_{mode}.png"
    fig.savefig(os.path.join(out, name), dpi=100)
    plt.close(fig)
    return name
