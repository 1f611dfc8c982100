"""Strong scaling per core: `hpcnn bench halo` at 1 and 2 ranks with one thread each, and 1 rank with 2 threads.

Every configuration is a separate `mpiexec -n R hpcnn bench halo` run with the thread count
fixed for BLAS, OpenMP and numba through the environment, so 1 rank uses one core and 2 ranks
two; the extra row "1 rank x 2 threads" sets splitting the image across ranks against threading
inside one process. The table gives time per training iteration (overlap on and off; median and
best; the speedup is over the best iteration of 1 rank x 1 thread in either mode (the same code
there), from the best, which other processes on a shared machine disturb least; "cpu x" is the
same ratio of per-rank CPU time, the slowest rank counting), the
halo's share, bytes exchanged and peak memory per rank with its ratio to one rank's. Writes scaling.csv, scaling.json and scaling.png into --out.

    hpcnn bench scaling --ranks 1,2 --out bench-out
"""
import csv
import json
import os
import subprocess
import sys
import tempfile

__all__ = ["add_arguments", "run", "THREAD_VARIABLES"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def add_arguments(p):
    p.add_argument("--ranks", default="1,2", help="rank counts, one thread per rank (default 1,2)")
    p.add_argument("--threads", default="2", help="thread counts to run on 1 rank beside them (default 2; "
                   "'' for none)")
    p.add_argument("--size", type=int, default=2048, help="image height and width (default 2048)")
    p.add_argument("--channels", type=int, default=16, help="input channels (default 16)")
    p.add_argument("--widths", default="16,16,16", help="conv widths (default 16,16,16)")
    p.add_argument("--dilations", default="1,2,1", help="dilations (default 1,2,1)")
    p.add_argument("--iterations", type=int, default=2, help="timed iterations per mode (default 2)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration (default 1800)")
    p.add_argument("--out", default="bench-out", help="folder for scaling.csv/.json/.png (default bench-out)")


def _ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def _launch(ranks, threads, args, path):
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "hpcnn.cli", "bench", "halo",
           "--size", str(args.size), "--channels", str(args.channels), "--widths", args.widths,
           "--dilations", args.dilations, "--iterations", str(args.iterations), "--json", path]
    print(f"  running {ranks} rank(s) x {threads} thread(s): {' '.join(cmd[:3])} ... bench halo", flush=True)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"hpcnn bench scaling: {ranks} rank(s) x {threads} thread(s) took longer than "
                         f"--timeout {args.timeout:g} s") from None
    if p.returncode != 0:
        raise SystemExit(f"hpcnn bench scaling: {ranks} rank(s) x {threads} thread(s) failed "
                         f"(exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    sys.stdout.write(p.stdout)
    with open(path) as f:
        return json.load(f)


def _rows(results):
    base = next(r for r in results if r["ranks"] == 1 and r["threads"] == 1)
    # on one rank both modes run the same code: the best of all its iterations is the reference
    ref_s = min(m["best_s"] for m in base["modes"].values())
    ref_cpu = min(min(v) for v in base["cpu_s_per_rank"].values())
    rows = []
    for r in results:
        for mode, m in r["modes"].items():
            halo = max(r["halo_s_per_rank"][mode])
            rows.append({
                "config": f"{r['ranks']} rank x {r['threads']} thread", "ranks": r["ranks"], "threads": r["threads"],
                "grid": "x".join(map(str, r["grid"])), "overlap": mode,
                "iteration_s": round(m["iteration_s"], 4), "best_s": round(m["best_s"], 4),
                "speedup": round(ref_s / m["best_s"], 3),
                "cpu_s_max_rank": round(max(r["cpu_s_per_rank"][mode]), 4),
                "cpu_speedup": round(ref_cpu / max(r["cpu_s_per_rank"][mode]), 3),
                "halo_s": round(halo, 4), "halo_share": round(halo / m["iteration_s"], 4),
                "bytes_sent_per_rank": max(r["bytes_sent_per_rank"][mode]),
                "allreduce_wait_s": round(m["allreduce_wait_s"], 4),
                "peak_rss_mib": round(max(r["peak_rss_bytes"]) / 2**20, 1),
                "peak_arrays_mib": round(max(r["peak_traced_bytes"]) / 2**20, 1),
                "rss_ratio": round(max(r["peak_rss_bytes"]) / max(base["peak_rss_bytes"]), 3),
                "arrays_ratio": round(max(r["peak_traced_bytes"]) / max(base["peak_traced_bytes"]), 3),
            })
    return rows


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = list(dict.fromkeys(r["config"] for r in rows))
    modes = list(dict.fromkeys(r["overlap"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        values = [next((r["best_s"] for r in rows if r["config"] == c and r["overlap"] == mode), 0)
                  for c in configs]
        bars = ax1.bar([j + i * width for j in range(len(configs))], values, width, label=f"overlap {mode}")
        for b, r in zip(bars, [next((r for r in rows if r["config"] == c and r["overlap"] == mode), None)
                               for c in configs]):
            if r:
                ax1.annotate(f"x{r['speedup']:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                             ha="center", va="bottom", fontsize=8)
    ax1.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(configs))], configs, fontsize=8)
    ax1.set_ylabel("seconds per training iteration (best of the timed ones)")
    ax1.set_title("time per iteration (speedup over 1 rank x 1 thread)")
    ax1.legend()
    first = [next(r for r in rows if r["config"] == c) for c in configs]
    ax2.bar([j - 0.2 for j in range(len(configs))], [r["peak_rss_mib"] for r in first], 0.4, label="peak RSS")
    ax2.bar([j + 0.2 for j in range(len(configs))], [r["peak_arrays_mib"] for r in first], 0.4,
            label="peak arrays (tracemalloc)")
    ax2.set_xticks(range(len(configs)), configs, fontsize=8)
    ax2.set_ylabel("MiB per rank")
    ax2.set_title("peak memory per rank")
    ax2.legend(loc="upper center", fontsize=8)
    fig.suptitle("hpcnn bench scaling: meshnet stack on one sample, ranks split H")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    if any(name in os.environ for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        raise SystemExit("hpcnn bench scaling starts its own mpiexec runs: start it without mpiexec")
    configs = [(r, 1) for r in _ints(args.ranks)] + [(1, t) for t in _ints(args.threads) if t > 1]
    if (1, 1) not in configs:
        configs.insert(0, (1, 1))
    os.makedirs(args.out, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, threads in configs:
            r = _launch(ranks, threads, args, os.path.join(tmp, f"{ranks}x{threads}.json"))
            r["threads"] = threads
            results.append(r)
    rows = _rows(results)
    with open(os.path.join(args.out, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump({"rows": rows, "runs": results}, f, indent=2)
    _plot(rows, os.path.join(args.out, "scaling.png"))
    print(f"\nhpcnn bench scaling: meshnet widths {args.widths} on 1x{args.channels}x{args.size}x{args.size} float32")
    print(f"{'config':>20} {'overlap':>7} {'median s':>8} {'best s':>8} {'speedup':>8} {'cpu x':>6} {'halo %':>7} "
          f"{'MB sent':>8} {'RSS MiB':>8} {'ratio':>6} {'arrays MiB':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['config']:>20} {r['overlap']:>7} {r['iteration_s']:8.3f} {r['best_s']:8.3f} {r['speedup']:8.2f} "
              f"{r['cpu_speedup']:6.2f} "
              f"{100 * r['halo_share']:6.2f}% {r['bytes_sent_per_rank'] / 1e6:8.2f} {r['peak_rss_mib']:8.0f} "
              f"{r['rss_ratio']:6.3f} {r['peak_arrays_mib']:10.0f} {r['arrays_ratio']:6.3f}")
    print(f"wrote {args.out}/scaling.csv, scaling.json, scaling.png")
    return 0
