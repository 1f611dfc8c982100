"""The plots of `hpcnn bench project`: predicted samples/s and parallel efficiency against ranks, per split."""
import os

from perfmodel.splits import SPLITS

from .output import pyplot
from .project_cases import GIB, MODES

__all__ = ["plot"]


def plot(result, cases, machine, batches, out):
    """project_strong.png, project_weak.png (samples/s against ranks, per split, with the ideal line) and
    project_efficiency.png in `out`; the paths written ([] without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    rows = result["rows"]
    # the plan often picks the sample or hybrid grid: a thin dotted line on top keeps both visible
    styles = {"sample": dict(marker="o", ms=8, lw=4, alpha=0.45), "spatial": dict(marker="s", ms=4),
              "hybrid": dict(marker="^", ms=5), "plan": dict(marker="D", ms=3, lw=1.2, ls=":", color="k")}
    xlabel = "ranks (GPUs)" if machine.backend == "gpu" else "ranks"
    written = []
    names = list(cases)
    for mode in MODES:
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            sub = [r for r in rows if r["model"] == name and r["mode"] == mode]
            ranks = sorted({r["ranks"] for r in sub})
            for split in SPLITS:
                pts = {r["ranks"]: r for r in sub if r["split"] == split}
                ys = [pts[p]["samples_per_s"] if pts[p]["fits"] else float("nan") for p in ranks]
                ax.plot(ranks, ys, label=split, **styles[split])
            p0 = result["p0"].get(f"{name}/{mode}")
            if p0 is not None:
                base = max(r["samples_per_s"] for r in sub if r["ranks"] == p0 and r["fits"])
                ideal = [base * p / p0 for p in ranks if p >= p0]
                ax.plot([p for p in ranks if p >= p0], ideal, "--", color="grey", lw=1, label="ideal")
            ax.set_xscale("log", base=2)
            if any(r["fits"] for r in sub):
                ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no point fits", transform=ax.transAxes, ha="center")
            batch = (f"batch {batches['strong'][name]}" if mode == "strong"
                     else f"{batches['weak'][name]}/rank")
            ax.set_title(f"{name} {'x'.join(map(str, cases[name]))}, {batch}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("predicted samples/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        assumed = ("published GPU rates: cuDNN-level kernels and a CUDA-aware MPI assumed, not measured for hpcnn"
                   if machine.backend == "gpu" and "measured_on" not in machine.doc else "measured profile")
        fig.suptitle(f"predicted {mode} scaling on {machine.name} (perfmodel; {assumed}; gaps: does not fit "
                     f"{machine.memory_per_rank / GIB:.3g} GiB per rank or cannot run)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out, f"project_{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(len(MODES), len(names), figsize=(5.2 * len(names), 7.6), squeeze=False)
    for i, mode in enumerate(MODES):
        for ax, name in zip(axes[i], names):
            sub = [r for r in rows if r["model"] == name and r["mode"] == mode]
            ranks = sorted({r["ranks"] for r in sub})
            for split in SPLITS:
                pts = {r["ranks"]: r for r in sub if r["split"] == split}
                ys = [pts[p]["efficiency"] * 100 if pts[p]["fits"] else float("nan") for p in ranks]
                ax.plot(ranks, ys, label=split, **styles[split])
            ax.set_xscale("log", base=2)
            ax.set_ylim(0, 110)
            ax.axhline(100, color="k", ls="--", lw=1)
            ax.set_title(f"{name}, {mode} scaling", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("predicted efficiency %")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"predicted parallel efficiency on {machine.name} (over the best split at the smallest "
                 f"rank count that fits)")
    fig.tight_layout()
    path = os.path.join(out, "project_efficiency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
