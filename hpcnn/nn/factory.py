"""Users' own networks: "FILE.py:FUNCTION", a Python file and a function in it that returns an hpcnn.nn module.

A job file names one with `[model] factory = "nets/mynet.py:build"` (the file relative to the job
file), `hpcnn plan` with `--factory`. The function's keyword arguments are the network's options,
like a zoo model's: in_channels, num_classes / num_outputs and input_size (where it takes them) come
from the data, `seed` and `dtype` from the job; every other argument may be set. Before the call,
hpcnn.nn.manual_seed(seed) seeds the layers' default generator, so every rank builds the same
weights. What the function returns must be a tree of registered layer kinds (hpcnn.nn.registry):
the network is then distributed, planned and costed exactly as a zoo model is.
"""
import importlib.util
import inspect
import os
import sys

from .module import Module, manual_seed
from .registry import kind_of

__all__ = ["Factory", "FactoryError", "load_factory"]


class FactoryError(ValueError):
    """A factory that cannot be loaded or returned no hpcnn network; the message names the file and function."""


class Factory:
    """A network factory loaded from "FILE.py:FUNCTION" (`load_factory`).

    spec: the spec as given; path: the file's absolute path; function: the callable;
    label: "FILE.py:FUNCTION" as a name for the model (start line, checkpoints, plans).
    """

    def __init__(self, spec, path, function):
        self.spec = spec
        self.path = path
        self.function = function
        self.label = f"{os.path.basename(path)}:{function.__name__}"
        params = inspect.signature(function).parameters.values()
        self._options = {p.name: p.default for p in params
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self._required = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                          and p.default is inspect.Parameter.empty}
        if any(p.kind == p.POSITIONAL_ONLY for p in params):
            raise FactoryError(f"network factory {spec}: {self.label} takes positional-only arguments; hpcnn "
                               "passes options by keyword")

    def options(self):
        """{option: default} of the function's keyword arguments (inspect.Parameter.empty: no default)."""
        return dict(self._options)

    def build(self, seed=0, dtype=None, **options):
        """The network with `options`; seed and dtype go to the function where it takes them, and seed always
        seeds hpcnn.nn's default generator first. A missing required option or an unknown one is refused."""
        unknown = sorted(set(options) - set(self._options))
        if unknown:
            raise FactoryError(f"network factory {self.spec}: {unknown[0]} is not an argument of "
                               f"{self.label} (arguments: {', '.join(self._options) or 'none'})")
        call = dict(options)
        for key, value in (("seed", seed), ("dtype", dtype)):
            if key in self._options:
                call[key] = value
        missing = sorted(self._required - set(call))
        if missing:
            raise FactoryError(f"network factory {self.spec}: {self.label} needs {', '.join(missing)}: give "
                               f"{'it' if len(missing) == 1 else 'them'} in [model] (or --set)")
        manual_seed(seed)
        try:
            model = self.function(**call)
        except (ValueError, TypeError) as e:
            raise FactoryError(f"network factory {self.spec}: {self.label} raised {type(e).__name__}: {e}") from None
        if not isinstance(model, Module):
            raise FactoryError(f"network factory {self.spec}: {self.label} returned {type(model).__name__}, "
                               "not an hpcnn.nn module")
        for name, module in model.named_modules():
            try:
                kind_of(module)
            except ValueError as e:
                raise FactoryError(f"network factory {self.spec}: layer {name or '(the model)'}: {e}") from None
        if dtype is not None and "dtype" not in self._options:
            model.astype(dtype)
        return model


def load_factory(spec, base=None):
    """The Factory of "FILE.py:FUNCTION"; FILE relative to the folder `base` (a job file's folder) unless
    absolute. The file is run as a module named after its path, once per process."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not spec.partition(":")[2].isidentifier():
        raise FactoryError(f"network factory {spec!r}: expected \"FILE.py:FUNCTION\", e.g. \"nets/mynet.py:build\"")
    file, _, func = spec.rpartition(":")
    path = os.path.abspath(file if os.path.isabs(file) or base is None else os.path.join(base, file))
    if not path.endswith(".py"):
        raise FactoryError(f"network factory {spec}: {file} is not a Python file (.py)")
    if not os.path.isfile(path):
        raise FactoryError(f"network factory {spec}: {path} does not exist")
    module_name = "hpcnn_factory_" + "".join(c if c.isalnum() else "_" for c in path)
    module = sys.modules.get(module_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise FactoryError(f"network factory {spec}: running {path} raised {type(e).__name__}: {e}") from None
        sys.modules[module_name] = module
    function = getattr(module, func, None)
    if not callable(function):
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
                         and v.__module__ == module_name)
        raise FactoryError(f"network factory {spec}: {path} defines no function {func!r} (functions: "
                           f"{', '.join(defined) or 'none'})")
    return Factory(spec, path, function)
