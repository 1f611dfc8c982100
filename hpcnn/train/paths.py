"""Where a job writes: its output folders and files resolved once, when the job is read.

`logging.dir` and `checkpoint.dir`, when relative, are relative to the job file's folder (not the
working directory), whether written in the job file or given with --set; `logging.metrics` is
relative to `logging.dir`. Defaults: `logging.dir` = runs/<job file name> beside the job file,
`checkpoint.dir` = <logging.dir>/checkpoints. An absolute path, or one whose `..` leaves the job's
folder, is used as written (only an explicit value can do that: no default leaves the folder),
and the start line of a run lists every resolved output path.
"""
import os

__all__ = ["resolve_outputs", "outputs", "outside"]


def _under(base, path):
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def outside(path, folder):
    """True when `path` is not `folder` or below it."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) != folder


def resolve_outputs(job, fail):
    """Replace the job's output paths by resolved ones (see the module docstring); fail(message) refuses."""
    base = os.path.dirname(job.path) if job.path != "<job>" else ""
    lg, ck = job["logging"], job["checkpoint"]
    lg["dir"] = _under(base, lg["dir"] or os.path.join("runs", job.stem))
    ck["dir"] = _under(base, ck["dir"]) if ck["dir"] else os.path.join(lg["dir"], "checkpoints")
    metrics = lg["metrics"]
    if not metrics.strip() or metrics.endswith(("/", os.sep)) or os.path.basename(metrics) in (".", ".."):
        fail(f"logging.metrics must name a file (relative to logging.dir, or absolute), got {metrics!r}")
    lg["metrics"] = _under(lg["dir"], metrics)
    if not outside(lg["metrics"], ck["dir"]):
        fail(f"logging.metrics {lg['metrics']} lies in checkpoint.dir {ck['dir']}: choose another file or folder")
    for field, path, want_dir in (("logging.dir", lg["dir"], True), ("checkpoint.dir", ck["dir"], True),
                                  ("logging.metrics", lg["metrics"], False)):
        if os.path.exists(path) and os.path.isdir(path) != want_dir:
            fail(f"{field} {path} exists and is {'a file' if want_dir else 'a folder'}")


def outputs(job):
    """[(what, resolved path)] of everything a run of `job` writes, for the start line."""
    return [("metrics", job["logging"]["metrics"]), ("checkpoints", job["checkpoint"]["dir"])]
