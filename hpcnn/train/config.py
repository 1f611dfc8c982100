"""Job files: TOML read with tomllib, checked against a schema (types, defaults, allowed values), `--set` overrides.

A job file has six tables (see docs/jobs.md for a tour):

    [model]         name = "lenet" (a zoo model) or factory = "nets/mynet.py:build" (an own network,
                    hpcnn.nn.factory); every other key is an option of that model
    [data]          dataset = "digits" | "textures" | "fields3d" | "hdf5" | "npy", seed, and the
                    dataset's own options (hpcnn.data.OPTIONS)
    [distribution]  engine = "spatial" | "chaos" | "auto"; grid = [N, H, W] (or [N, D, H, W]; with channel
                    and filter splits [N, H, W, C, F]) or "auto"; plan = "plan.json"; CHAOS options threads, staleness, average_every,
                    deterministic
    [training]      epochs or steps, batch (global), seed, dtype, device, val_every, and the tables
                    [training.optimizer] (name = "sgd": lr, momentum, dampening, nesterov,
                    weight_decay; "adam" | "adamw": lr, betas, eps, weight_decay, amsgrad) and
                    [training.schedule] (hpcnn.train.schedule.build_schedule; base_lr defaults to
                    the optimizer's lr and total_steps to the run's length)
    [checkpoint]    dir, every (steps; 0: at each epoch's end), keep (the last K)
    [logging]       dir, metrics (a JSON-lines file in dir), every (steps between progress lines),
                    progress (the line on rank 0)

Any field that cannot work is refused with one message naming it, e.g.
"job file jobs/x.toml: training.batch must be a positive integer, got -3".
"""
import copy
import os
import tomllib

from ..backend import DEVICES
from ..grids import GRID_NOTATION
from .paths import resolve_outputs

__all__ = ["JobError", "Job", "SCHEMA", "load_job", "parse_job", "apply_overrides", "parse_options", "dataset_options", "ENGINES", "OPTIMIZERS"]

ENGINES = ("spatial", "chaos", "auto")

# section -> field -> (type, default, rule, meaning). Rules: "required", "positive",
# "nonnegative", "fraction", a tuple of allowed values, or None. Types: int, float, str, bool,
# "grid", "table".
SCHEMA = {
    "model": {
        "name": (str, "", None, "a zoo model (hpcnn.models.names())"),
        "factory": (str, "", None, "an own network, \"FILE.py:FUNCTION\" (FILE relative to the job file); "
                                   "instead of name"),
        "init": (str, "", None, "initial weights: a safetensors file (relative to the job file), e.g. one "
                                "saved from PyTorch or written by `hpcnn export`"),
    },
    "data": {
        "dataset": (str, None, "required", "the dataset (hpcnn.data.DATASETS)"),
        "seed": (int, 0, "nonnegative", "seed of the data generator and split"),
    },
    "distribution": {
        "engine": (str, "spatial", ENGINES, "spatial (MPI blocks), chaos (CPU threads) or auto"),
        "grid": ("grid", None, None, "ranks over (N, [D,] H, W) or (N, [D,] H, W, C, F), or \"auto\""),
        "plan": (str, "", None, "a plan file from `hpcnn plan` (instead of a grid)"),
        "threads": (int, 0, "nonnegative", "CHAOS worker threads (0: the cores)"),
        "staleness": (int, -1, None, "CHAOS bounded staleness: at most this many updates ahead of the slowest "
                                               "worker (0: lockstep; negative: unbounded)"),
        "average_every": (int, 0, "nonnegative", "CHAOS with MPI: average weights every k steps (0: each epoch)"),
        "deterministic": (bool, False, None, "CHAOS: reproducible order (for tests)"),
    },
    "training": {
        "epochs": (int, 0, "nonnegative", "passes over the training set (or give steps)"),
        "steps": (int, 0, "nonnegative", "optimizer steps (instead of epochs)"),
        "batch": (int, 32, "positive", "global batch size (summed over ranks)"),
        "seed": (int, 0, "nonnegative", "seed of the model's initialization and the data order"),
        "dtype": (str, "float32", ("float32", "float64"), "parameter and activation dtype"),
        "device": (str, "cpu", DEVICES, "where each rank computes: cpu, gpu (the GPU of its node-local rank) or "
                                         "emulated-gpu (the GPU code path checked on the CPU)"),
        "val_every": (int, 0, "nonnegative", "steps between validations (0: each epoch's end)"),
        "val_batch": (int, 0, "nonnegative", "validation batch (0: the training batch)"),
        "threads": (int, 0, "nonnegative", "BLAS/OpenMP/numba threads per rank (0: the node's cores divided by "
                                           "its ranks, or the thread variables of the environment)"),
        "divergence_factor": (float, 100.0, "nonnegative", "stop (exit 3) when the loss stays above this multiple "
                                                           "of the run's first loss for divergence_steps (0: off)"),
        "divergence_steps": (int, 50, "positive", "consecutive steps above divergence_factor that stop the run"),
        "optimizer": ("table", None, None, "[training.optimizer]"),
        "schedule": ("table", None, None, "[training.schedule]"),
    },
    "checkpoint": {
        "dir": (str, "", None, "checkpoint folder, relative to the job file's folder (default: "
                                "<logging.dir>/checkpoints)"),
        "every": (int, 0, "nonnegative", "steps between checkpoints (0: at each epoch's end)"),
        "keep": (int, 3, "positive", "how many of the latest checkpoints to keep"),
    },
    "logging": {
        "dir": (str, "", None, "run folder, relative to the job file's folder (default: runs/<job file name>)"),
        "metrics": (str, "metrics.jsonl", None, "JSON-lines metrics file, relative to logging.dir"),
        "every": (int, 10, "positive", "steps between progress lines"),
        "progress": (bool, True, None, "print the progress line on rank 0"),
    },
}

_SGD = {
    "lr": (float, 0.01, "positive", "learning rate (the schedule's base_lr)"),
    "momentum": (float, 0.0, "nonnegative", "momentum"),
    "dampening": (float, 0.0, "nonnegative", "dampening of the momentum"),
    "nesterov": (bool, False, None, "Nesterov momentum"),
    "weight_decay": (float, 0.0, "nonnegative", "L2 weight decay (added to the gradient)"),
}
_ADAM = {
    "lr": (float, 1e-3, "positive", "learning rate (the schedule's base_lr)"),
    "betas": ("betas", [0.9, 0.999], None, "coefficients of the running averages of the gradient and its square"),
    "eps": (float, 1e-8, "positive", "added to the denominator"),
    "weight_decay": (float, 0.0, "nonnegative", "L2 weight decay (adam: added to the gradient; adamw: decoupled)"),
    "amsgrad": (bool, False, None, "use the maximum of the past squared-gradient averages"),
}
# [training.optimizer]: name -> its fields (PyTorch's defaults, but sgd's lr, which torch does not default)
OPTIMIZERS = {
    "sgd": _SGD,
    "adam": _ADAM,
    "adamw": dict(_ADAM, weight_decay=(float, 1e-2, "nonnegative", "decoupled weight decay")),
}


class JobError(ValueError):
    """A job file that cannot work; the message names the file and the field."""


class Job(dict):
    """The validated job: {section: {field: value}} with defaults filled in, plus `path`.

    Sections read as attributes too: job.training["batch"].
    """

    path = "<job>"

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to_dict(self):
        return copy.deepcopy(dict(self))

    @property
    def stem(self):
        return os.path.splitext(os.path.basename(self.path))[0]


def _kind(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_value(field, value, kind, rule, fail):
    """The value converted to its type, or fail(message)."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"{field} must be {'a positive ' if rule == 'positive' else 'an '}integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"{field} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            fail(f"{field} must be a finite number, got {value!r}")
    elif kind is bool:
        if not isinstance(value, bool):
            fail(f"{field} must be true or false, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            fail(f"{field} must be a string, got {_kind(value)} {value!r}")
    elif kind == "table":
        if not isinstance(value, dict):
            fail(f"{field} must be a table, got {_kind(value)} {value!r}")
    elif kind == "betas":
        if not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0 for v in value)):
            fail(f"{field} must be a list of two numbers in [0, 1), got {value!r}")
        value = [float(v) for v in value]
    elif kind == "grid":
        ok = value == "auto" or (isinstance(value, list) and len(value) in (3, 4, 5, 6) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
        if not ok:
            fail(f"{field} must be \"auto\" or a list of positive integers: {GRID_NOTATION}; got {value!r}")
    if rule == "positive" and not value > 0:
        fail(f"{field} must be {'a positive integer' if kind is int else 'positive'}, got {value!r}")
    if rule == "nonnegative" and not value >= 0:
        fail(f"{field} must be {'a non-negative integer' if kind is int else 'non-negative'}, got {value!r}")
    if rule == "fraction" and not 0.0 < value < 1.0:
        fail(f"{field} must lie strictly between 0 and 1, got {value!r}")
    if isinstance(rule, tuple) and value not in rule:
        fail(f"{field} must be one of {', '.join(repr(r) for r in rule)}, got {value!r}")
    return value


def _fill(section_name, given, schema, fail, extra_ok=False):
    """given table -> table with every schema field checked and defaults filled in."""
    if not isinstance(given, dict):
        fail(f"[{section_name}] must be a table, got {_kind(given)} {given!r}")
    out = {}
    for key, (kind, default, rule, _) in schema.items():
        field = f"{section_name}.{key}"
        if key not in given:
            if rule == "required":
                fail(f"{field} is missing ({schema[key][3]})")
            out[key] = copy.deepcopy(default)
            continue
        out[key] = _check_value(field, given[key], kind, rule, fail)
    unknown = sorted(set(given) - set(schema))
    if unknown and not extra_ok:
        fail(f"{section_name}.{unknown[0]} is not a field of [{section_name}] (fields: {', '.join(schema)})")
    return out


def _set_dotted(table, key, value):
    parts = key.split(".")
    node = table
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise JobError(f"--set {key}: {p} is not a table")
    node[parts[-1]] = value


def _parse_value(text):
    """A --set value as TOML (numbers, booleans, lists, quoted strings); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_options(items, what="--set"):
    """{key: value} from ["KEY=VALUE", ...] (values read as TOML: 3, true, [16, 16], "text"; else a string)."""
    options = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JobError(f"{what} expects KEY=VALUE (e.g. width=32), got {item!r}")
        options[key] = _parse_value(text.strip())
    return options


def apply_overrides(raw, overrides):
    """Apply ["training.batch=64", ...] to a raw job table (a copy is returned)."""
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        if "=" not in item:
            raise JobError(f"--set expects key=value (e.g. training.batch=64), got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise JobError(f"--set expects a dotted key such as training.batch, got {key!r}")
        _set_dotted(raw, key, _parse_value(text.strip()))
    return raw


def parse_job(raw, path="<job>"):
    """Check a raw job table (from TOML) and fill in defaults; a JobError names the first bad field."""
    def fail(message):
        raise JobError(f"job file {path}: {message}")

    from .. import data as hdata
    from ..nn import models

    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        fail(f"[{unknown[0]}] is not a section of a job file (sections: {', '.join(SCHEMA)})")
    job = Job()
    job.path = path
    for section, schema in SCHEMA.items():
        extra_ok = section in ("model", "data")
        job[section] = _fill(section, raw.get(section, {}), schema, fail, extra_ok=extra_ok)

    # model: a zoo name or an own network's factory, then its options as it declares them
    name, factory = job["model"]["name"], job["model"]["factory"]
    options = {k: v for k, v in raw.get("model", {}).items() if k not in SCHEMA["model"]}
    if bool(name) == bool(factory):
        fail("[model] needs exactly one of name (a zoo model: " + ", ".join(models.names()) + ") and factory "
             "(an own network, \"FILE.py:FUNCTION\")" + (", got both" if name else ""))
    if factory:
        from ..nn.factory import FactoryError, load_factory
        try:
            known = load_factory(factory, os.path.dirname(os.path.abspath(path))).options()
        except FactoryError as e:
            fail(f"model.factory: {e}")
        what = f"network factory {factory!r}"
    else:
        if name not in models.names():
            fail(f"model.name must be one of {', '.join(models.names())}, got {name!r}")
        known = models.options(name)
        what = f"model {name!r}"
    for key in options:
        if key not in known or key == "dtype":
            valid = ", ".join(k for k in known if k != "dtype")
            fail(f"model.{key} is not an option of {what} (options: {valid or 'none'})")
    init = job["model"]["init"]
    if init and not init.endswith(".safetensors"):
        fail(f"model.init must name a .safetensors file, got {init!r}")
    job["model"] = {"name": name or None, "factory": factory or None, "init": init or None, "options": options}

    # data: the dataset, then its options
    dataset = job["data"]["dataset"]
    if dataset not in hdata.DATASETS:
        fail(f"data.dataset must be one of {', '.join(hdata.DATASETS)}, got {dataset!r}")
    given = {k: v for k, v in raw["data"].items() if k not in SCHEMA["data"]}
    options = _fill("data", given, hdata.OPTIONS[dataset], fail, extra_ok=True)
    bad = sorted(set(given) - set(hdata.OPTIONS[dataset]))
    if bad:
        fail(f"data.{bad[0]} is not an option of dataset {dataset!r} (options: {', '.join(hdata.OPTIONS[dataset])})")
    job["data"]["options"] = options

    # distribution
    dist = job["distribution"]
    if dist["grid"] is not None and dist["plan"]:
        fail("distribution.grid and distribution.plan exclude each other: give one")
    if dist["engine"] == "chaos" and (dist["grid"] not in (None, "auto") or dist["plan"]):
        fail("distribution.engine = \"chaos\" trains whole samples per thread: it takes no grid or plan")
    if dist["engine"] == "chaos" and job["training"]["device"] != "cpu":
        fail(f"distribution.engine = \"chaos\" trains on CPU threads: it takes training.device = \"cpu\", "
             f"got {job['training']['device']!r}")

    # training
    tr = job["training"]
    if bool(tr["epochs"]) == bool(tr["steps"]):
        fail("training needs exactly one of epochs and steps, as a positive integer "
             f"(got epochs = {tr['epochs']}, steps = {tr['steps']})")
    tr["optimizer"] = _optimizer(tr["optimizer"] or {}, fail)
    if dist["engine"] == "chaos" and tr["optimizer"]["name"] != "sgd":
        fail(f"distribution.engine = \"chaos\" trains with SGD only (its threads write each layer's SGD update "
             f"as its gradient is ready): training.optimizer.name = {tr['optimizer']['name']!r} needs "
             "distribution.engine = \"spatial\"")
    if dist["engine"] == "chaos" and tr["optimizer"]["name"] == "sgd" and tr["optimizer"]["dampening"]:
        fail("distribution.engine = \"chaos\" has no momentum dampening: it takes "
             "training.optimizer.dampening = 0")
    schedule = dict(tr["schedule"] or {})
    schedule.setdefault("name", "constant")
    schedule.setdefault("base_lr", tr["optimizer"]["lr"])
    tr["schedule"] = schedule
    _check_schedule(schedule, fail)

    resolve_outputs(job, fail)   # checkpoint and logging paths (hpcnn.train.paths)
    return job


def _optimizer(given, fail):
    """[training.optimizer] checked against the fields of its name, defaults filled in."""
    name = given.get("name", "sgd")
    if name not in OPTIMIZERS:
        fail(f"training.optimizer.name must be one of {', '.join(repr(n) for n in OPTIMIZERS)}, got {name!r}")
    fields = OPTIMIZERS[name]
    rest = {k: v for k, v in given.items() if k != "name"}
    unknown = sorted(set(rest) - set(fields))
    if unknown:
        fail(f"training.optimizer.{unknown[0]} is not a field of optimizer {name!r} (fields: name, "
             f"{', '.join(fields)})")
    out = {"name": name}
    out.update(_fill("training.optimizer", rest, fields, fail))
    if name == "sgd" and out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
        fail("training.optimizer.nesterov needs momentum > 0 and dampening = 0, got "
             f"momentum = {out['momentum']}, dampening = {out['dampening']}")
    return out


def dataset_options(dataset, given):
    """Check the options of one dataset (as `hpcnn data generate` receives them) and fill in defaults."""
    from .. import data as hdata

    def fail(message):
        raise JobError(message)

    if dataset not in hdata.DATASETS:
        fail(f"dataset must be one of {', '.join(hdata.DATASETS)}, got {dataset!r}")
    bad = sorted(set(given) - set(hdata.OPTIONS[dataset]))
    if bad:
        fail(f"{bad[0]} is not an option of dataset {dataset!r} (options: {', '.join(hdata.OPTIONS[dataset])})")
    return _fill("data", given, hdata.OPTIONS[dataset], fail)


def _check_schedule(schedule, fail):
    from .schedule import build_schedule
    probe = dict(schedule)
    if probe.get("name") == "cosine":
        probe.setdefault("total_steps", 1)  # the trainer fills in the run's length
    try:
        build_schedule(probe)
    except (ValueError, TypeError) as e:
        fail(f"training.schedule: {e}")


def load_job(path, overrides=()):
    """Read, override and check the job file at `path`; a JobError names the file and the field."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise JobError(f"job file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise JobError(f"job file {path} is not valid TOML: {e}") from None
    try:
        raw = apply_overrides(raw, overrides)
    except JobError as e:
        raise JobError(f"job file {path}: {e}") from None
    return parse_job(raw, path)
