"""The tables of `hpcnn bench scaling`: one row per measured split and one per layer, from the point files."""
import glob
import json
import os

__all__ = ["CSV_COLUMNS", "LAYER_COLUMNS", "PARTS", "load_points", "table_rows", "print_table"]

CSV_COLUMNS = [
    "mode", "model", "input", "batch", "ranks", "threads", "role", "cores", "split", "grid", "measured_as",
    "iterations", "iteration_s", "best_s", "samples_per_s", "speedup", "efficiency",
    "comm_s", "comm_share", "halo_s", "collective_s", "shuffle_s", "gradient_allreduce_s",
    "peak_rss_mib", "peak_arrays_mib",
    "predicted_iteration_s", "predicted_samples_per_s", "predicted_speedup", "predicted_efficiency",
    "predicted_comm_share", "predicted_memory_mib", "error", "oversubscribed",
]
LAYER_COLUMNS = ["mode", "ranks", "threads", "role", "split", "layer", "compute_s", "halo_s", "collective_s", "shuffle_s",
                 "predicted_compute_s", "predicted_halo_s", "predicted_collective_s", "predicted_shuffle_s"]
PARTS = ("compute", "halo", "collective", "shuffle")   # what a layer's time is made of, measured and predicted


def load_points(out):
    """Every measured point in OUT/points/*.json (sorted by file name)."""
    points = []
    for path in sorted(glob.glob(os.path.join(out, "points", "*.json"))):
        with open(path) as f:
            point = json.load(f)
        point.setdefault("role", "sweep" if point["threads"] == 1 else "threads")
        points.append(point)
    if not points:
        raise SystemExit(f"hpcnn bench scaling: no measured points in {out}/points")
    return points


def _sig(value, digits=6):
    """value to `digits` significant figures (the CSV stays readable at any time scale)."""
    return float(f"{value:.{digits}g}")


def table_rows(points):
    """One row per (mode, ranks, threads, split), every split a measured point stands for."""
    rows, layer_rows = [], []
    for mode in dict.fromkeys(p["mode"] for p in points):
        part = [p for p in points if p["mode"] == mode]
        r0 = min(p["ranks"] for p in part if p["role"] == "sweep")
        base = [p for p in part if p["ranks"] == r0 and p["role"] == "sweep"]
        # the reference: the fastest configuration at the smallest rank count, one thread per rank
        ref = min(base, key=lambda p: p["iteration_s"]) if base else min(part, key=lambda p: p["iteration_s"])
        ref_rate = ref["batch"] / ref["iteration_s"]
        ref_pred = ref["batch"] / ref["predicted"]["iteration_s"]
        for p in sorted(part, key=lambda p: (p["role"] != "sweep", p["ranks"], p["threads"], p["label"])):
            cores = p["ranks"] * p["threads"]
            sweep = p["role"] == "sweep"
            rate = p["batch"] / p["iteration_s"]
            # a point on other threads per rank than the sweep's is predicted where the profile prices them
            priced = sweep or p["predicted"].get("threads_priced", False)
            pred_t = p["predicted"]["iteration_s"] if priced else float("nan")
            pred_rate = p["batch"] / pred_t
            # speedup over the reference configuration counted as r0 (ideal: the ranks); efficiency per core
            # of the sweep's threads per rank
            speedup = rate / ref_rate * r0
            pred_speedup = pred_rate / ref_pred * r0
            per_core = ref["threads"] / cores
            for split in p["splits"]:
                rows.append({
                    "mode": mode, "model": p["model"], "input": p["input"], "batch": p["batch"], "ranks": p["ranks"],
                    "threads": p["threads"], "role": p["role"], "cores": cores, "split": split, "grid": p["grid"],
                    "measured_as": p["label"], "iterations": len(p["iterations_s"]),
                    "iteration_s": _sig(p["iteration_s"]), "best_s": _sig(p["best_s"]),
                    "samples_per_s": _sig(rate), "speedup": _sig(speedup),
                    "efficiency": _sig(speedup * per_core),
                    "comm_s": _sig(p["comm_total_s"]), "comm_share": _sig(p["comm_total_s"] / p["iteration_s"]),
                    **{f"{k}_s": _sig(v) for k, v in p["comm_s"].items()},
                    "peak_rss_mib": _sig(p["peak_rss_bytes"] / 2**20),
                    "peak_arrays_mib": _sig(p["peak_arrays_bytes"] / 2**20),
                    "predicted_iteration_s": _sig(pred_t), "predicted_samples_per_s": _sig(pred_rate),
                    "predicted_speedup": _sig(pred_speedup),
                    "predicted_efficiency": _sig(pred_speedup * per_core),
                    "predicted_comm_share": _sig(p["predicted"]["comm_s"] / p["predicted"]["iteration_s"])
                    if priced else float("nan"),
                    "predicted_memory_mib": _sig(p["predicted"]["memory_bytes"] / 2**20),
                    "error": _sig(pred_t / p["iteration_s"] - 1),
                    "oversubscribed": cores > (p.get("cpu_count") or cores),
                })
            for name, v in p["layers"].items():
                q = p["predicted"]["layers"].get(name, {})
                layer_rows.append({
                    "mode": mode, "ranks": p["ranks"], "threads": p["threads"], "role": p["role"], "split": p["label"],
                    "layer": name,
                    **{f"{k}_s": _sig(v[f"{k}_s"]) for k in PARTS},
                    **{f"predicted_{k}_s": _sig(q.get(f"{k}_s", float("nan"))) for k in PARTS}})
    return rows, layer_rows


def print_table(rows, summary, points):
    """The rows on screen, and the summary of the prediction errors."""
    p0 = points[0]
    print(f"\nhpcnn bench scaling: {p0['model']} input {p0['input']}; predictions from {p0['machine']}")
    print(f"{'mode':6} {'ranks':>5} {'thr':>3} {'split':>8} {'grid':>12} {'batch':>5} {'s/iter':>8} {'pred':>8} "
          f"{'error':>7} {'samples/s':>10} {'speedup':>7} {'pred':>6} {'eff':>5} {'comm %':>7} {'pred %':>7} "
          f"{'RSS MiB':>8} {'arrays':>8} {'pred':>8}")
    for r in rows:
        print(f"{r['mode']:6} {r['ranks']:5d} {r['threads']:3d} {r['split']:>8} {r['grid']:>12} {r['batch']:5d} "
              f"{r['iteration_s']:8.3f} {r['predicted_iteration_s']:8.3f} {100 * r['error']:6.1f}% "
              f"{r['samples_per_s']:10.3f} {r['speedup']:7.2f} {r['predicted_speedup']:6.2f} {r['efficiency']:5.2f} "
              f"{100 * r['comm_share']:6.1f}% {100 * r['predicted_comm_share']:6.1f}% {r['peak_rss_mib']:8.0f} "
              f"{r['peak_arrays_mib']:8.0f} {r['predicted_memory_mib']:8.0f}"
              + ("  (oversubscribed)" if r["oversubscribed"] else ""))
    if summary["median_abs_error"] is not None:
        print(f"prediction error per iteration (the sweep's points, not oversubscribed): median "
              f"{100 * summary['median_abs_error']:.1f}%, largest {100 * summary['max_abs_error']:.1f}%")
