"""The command that continues a stopped run: the launch command as it was given, with --resume."""
import os
import shlex
import sys

__all__ = ["resume_command"]


def _launcher(ranks):
    if "SLURM_STEP_ID" in os.environ and "SLURM_JOB_ID" in os.environ:
        return ["srun", "-n", str(ranks)]
    if ranks > 1 or any(v in os.environ for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
        return ["mpiexec", "-n", str(ranks)]
    return []


def _program():
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return ["hpcnn"] if name == "hpcnn" else ["python", "-m", "hpcnn.cli"]


def _without_resume(args):
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in ("--restart",) or a.startswith("--resume="):
            continue
        if a == "--resume":
            nxt = args[i + 1] if i + 1 < len(args) else ""
            skip = nxt.endswith(".npz")       # --resume CHECKPOINT: the run goes on from its newest one instead
            continue
        out.append(a)
    return out


def resume_command(ranks, train_args=None, job_path=None, overrides=()):
    """The shell command that resumes this run on `ranks` ranks.

    train_args: the arguments `hpcnn train` received (job file and options) when run from the command line;
    otherwise the command is made from job_path and the --set overrides.
    """
    if train_args is None:
        train_args = [job_path, *(a for o in overrides for a in ("--set", o))]
    return shlex.join([*_launcher(ranks), *_program(), "train", *_without_resume(list(train_args)), "--resume"])
