"""Where a machine profile came from, and whether it describes the machine it is used on.

`hpcnn calibrate` writes a "measured_on" section: host, CPU model, cores, ranks, threads per rank
and the date (each a sourced value, as every number of a profile). `check(profile)` compares it
with this machine and gives one line to print: the profile was measured on another machine (its
predictions price that machine, not this one), or on this one some days ago (a machine's speed
drifts between days), or it is a published profile of a cluster (its rates are its sources').
`hpcnn calibrate` is the fix each line suggests. `threads_note(profile, threads)` says when a run's threads
per rank differ from those the profile was measured with: priced through the profile's measured thread speedup,
or, without one, not priced (its kernel times hold for the calibration's count only).
"""
import os
import platform
import socket
import time
from datetime import datetime, timezone

__all__ = ["this_machine", "measured_on", "check", "likeness", "threads_note", "held_out_section", "held_out_line",
           "STALE_DAYS"]

# A profile older than this, measured on this machine, is called stale.
STALE_DAYS = 2.0
_FIX = "measure this machine with `mpiexec -n 2 hpcnn calibrate -o PROFILE.json` and pass --machine PROFILE.json"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def this_machine():
    """{host, cpu, cores, blas} of the machine this process runs on (cores: its affinity mask; blas: the kernel
    family hpcnn's CPU convolutions run, `hpcnn.threads.blas_family`)."""
    from hpcnn.threads import blas_family
    return {"host": socket.gethostname(), "cpu": _cpu_model(), "cores": _cores(), "blas": blas_family()}


def measured_on(ranks, threads_per_rank, source, when=None):
    """The "measured_on" section `hpcnn calibrate` writes: this machine, the ranks and threads, the date."""
    here = this_machine()
    when = when or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {"source": source, "host": here["host"], "cpu": here["cpu"], "blas": here["blas"], "date": when,
            "cores": {"value": here["cores"], "source": source},
            "ranks": {"value": int(ranks), "source": source},
            "threads_per_rank": {"value": int(threads_per_rank), "source": source}}


def _age_days(date, now=None):
    try:
        then = datetime.strptime(date, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(timezone.utc)
    return (now - then).total_seconds() / 86400.0


def check(profile, here=None, now=None):
    """(ok, one line) about `profile` (a MachineProfile) on this machine; ok is False for another machine."""
    doc = profile.doc
    m = doc.get("measured_on")
    if m is None:
        if doc.get("backend") == "gpu" or "published" in doc.get("description", "").lower():
            return True, (f"profile {profile.name!r} is a published description of a cluster: its rates come from "
                          f"its cited sources, not from a measurement of hpcnn on this machine")
        return False, (f"profile {profile.name!r} does not say which machine it was measured on; to predict this one, "
                       f"{_FIX}")
    here = here or this_machine()
    cores = int(m["cores"]["value"])
    threads = int(m["threads_per_rank"]["value"])
    what = (f"profile {profile.name!r}: measured on {m['host']} ({m['cpu']}, {cores} cores, {threads} thread(s) per "
            f"rank) on {m['date'][:10]}")
    differs = [name for name, same in _same_machine(m, here).items() if not same]
    if differs:
        return False, (f"{what}; this machine differs ({', '.join(differs)}: {here['host']}, {here['cpu']}, "
                       f"{here['cores']} cores), so the predictions price that machine: {_FIX}")
    if m.get("blas") and here.get("blas") and m["blas"] != here["blas"]:
        return False, (f"{what} with {m['blas']} BLAS kernels; hpcnn runs {here['blas']} kernels here, so the "
                       f"convolution rates are those of other kernels: {_FIX}")
    age = _age_days(m["date"], now)
    if age is not None and age > STALE_DAYS:
        return True, (f"{what}, {age:.0f} days ago: a machine's speed drifts between days and loads; for "
                      f"predictions you rely on, {_FIX}")
    return True, what + " (this machine)"


def _same_machine(m, here):
    """{"host", "CPU", "cores": whether the "measured_on" section `m` names this machine's}."""
    return {"host": m.get("host") == here["host"], "CPU": m.get("cpu") == here["cpu"],
            "cores": int(m.get("cores", {}).get("value", 0)) == here["cores"]}


def likeness(doc, here=None):
    """How closely the profile document `doc` describes this machine, as a tuple to compare (larger: closer):
    whether its host, CPU model, core count and BLAS kernels are this machine's, in that order of weight.
    A profile without a "measured_on" section matches nothing."""
    m = doc.get("measured_on")
    if not m:
        return (False, False, False, False)
    here = here or this_machine()
    return (*_same_machine(m, here).values(), m.get("blas") == here.get("blas"))


def threads_note(profile, threads):
    """One line when a run with `threads` BLAS/numba threads per rank is priced by a profile measured with another
    count (its kernel models hold for that count only), else None (also for a profile that does not say)."""
    measured = profile.threads_per_rank
    if measured is None or int(threads) == measured:
        return None
    if profile.thread_speedup is not None:
        most, by_op = profile.thread_speedup
        conv = by_op.get("conv_forward")
        return (f"note: this run uses {int(threads)} thread(s) per rank and profile {profile.name!r} was measured with "
                f"{measured}: kernel times are scaled by its measured thread speedup ({most} threads"
                + (f": convolution forward {conv:.2f}x" if conv else "") + ")")
    return (f"note: this run uses {int(threads)} thread(s) per rank and profile {profile.name!r} was measured with "
            f"{measured}: its kernel times are those of {measured} thread(s) per rank, so the predictions are off by "
            f"the threads' speedup; calibrate with `hpcnn calibrate --threads {int(threads)}` for this run")


def held_out_section(per_iteration, per_layer, models, command, source_text, when=None):
    """The "held_out_error" section `hpcnn bench model --record` writes into a profile: the model's errors on
    networks and sizes its calibration did not see ({median, largest, bias, count} per iteration and per layer),
    with the models, the command and the date."""
    when = when or time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def q(e):
        return {key: {"value": float(e[key]), "source": "held-out"} for key in ("median", "largest", "bias")} | {
            "count": {"value": int(e["count"]), "source": "held-out"}}
    return {"source": "held-out", "date": when, "command": command, "models": list(models),
            "per_iteration": q(per_iteration), "per_layer": q(per_layer)}, source_text


def held_out_line(profile):
    """One line on the model's held-out error for `profile` (quoted where `hpcnn bench model --record` measured it),
    or what to run to measure it."""
    section = profile.doc.get("held_out_error")
    if section is None:
        if "measured_on" not in profile.doc:
            return (f"profile {profile.name!r}: no held-out error (a published description: hpcnn has not been "
                    f"measured on that machine)")
        return (f"profile {profile.name!r}: its held-out error is not measured; `hpcnn bench model --machine "
                f"{profile.path or profile.name} --record` measures it and records it in the profile")
    it, layer = section["per_iteration"], section["per_layer"]

    def pct(e, key):
        return 100.0 * float(e[key]["value"])
    return (f"model error, held out ({', '.join(section['models'])}; `{section['command']}`, {section['date'][:10]}): "
            f"per iteration median {pct(it, 'median'):.1f}%, largest {pct(it, 'largest'):.1f}%, mean signed "
            f"{pct(it, 'bias'):+.1f}% over {int(it['count']['value'])} configurations; per layer median "
            f"{pct(layer, 'median'):.1f}%")
