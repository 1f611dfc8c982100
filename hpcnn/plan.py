"""A plan: which process grid each layer runs on (data: a JSON file handed from the planner to the trainer, no MPI).

Format (version 1), one JSON object:

    {
      "format": "hpcnn-plan",          required, this exact string
      "version": 1,                    required
      "ranks": 4,                      required: the number of MPI ranks the plan is for
      "model": "unet2d",               optional: the model name (models.build), for the reader
      "model_options": {...},          optional: its build options
      "input": [8, 1, 2048, 2048],     optional: the global input shape (N, C, *S)
      "default_grid": [1, 2, 2],       required: the grid of layers not listed (see below)
      "layers": [                      optional: per leaf layer, by its dotted name in the model
        {"name": "body.encode.conv1", "grid": [1, 2, 2],
         "predicted": {"time_s": 0.012, "memory_bytes": 1.2e8}},   optional, filled by the planner
        {"name": "head.fc", "grid": [4, 1, 1]}
      ]
    }

Leaf layer names are those of `model.named_leaves()` (the prefixes of the
parameter names, e.g. "layer1.0.residual.body.conv1"). A grid (`hpcnn.grids.GRID_NOTATION`) is
(N, [D,] H, W): one entry for the batch and one per spatial dimension, or the long form
(N, [D,] H, W, C, F) that adds the ranks splitting channels (C) and a convolution's filters (F); it
multiplies to `ranks`. Short and long grids mix in one plan when they have the same spatial
dimensions; a long grid with C = F = 1 is written short. Where consecutive layers' grids differ,
`distribute(model, plan=plan)` inserts a shuffle.
"""
import json
import os
import tempfile

from .grids import GRID_NOTATION, grid_parts, short_grid

__all__ = ["Plan", "PLAN_FORMAT", "PLAN_VERSION"]

PLAN_FORMAT = "hpcnn-plan"
PLAN_VERSION = 1


def _grid(value, where):
    if not isinstance(value, (list, tuple)) or len(value) not in (3, 4, 5, 6) or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(f"plan: {where} must be a list of positive ints ({GRID_NOTATION}), received {value!r}")
    return short_grid(value)


class Plan:
    """Per-layer process grids. `layers` maps dotted leaf-layer names to grids; others get `default_grid`."""

    def __init__(self, ranks, default_grid, layers=None, model=None, model_options=None, input_shape=None,
                 predicted=None):
        if not isinstance(ranks, int) or ranks < 1:
            raise ValueError(f"plan: 'ranks' must be a positive int, received {ranks!r}")
        self.ranks = ranks
        self.default_grid = _grid(default_grid, "'default_grid'")
        self.layers = {str(k): _grid(v, f"the grid of layer {k!r}") for k, v in (layers or {}).items()}
        self.model = model
        self.model_options = dict(model_options or {})
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self.predicted = dict(predicted or {})
        for name, grid in [("default_grid", self.default_grid)] + list(self.layers.items()):
            if grid_parts(grid).nd != grid_parts(self.default_grid).nd:
                raise ValueError(f"plan: layer {name!r} has grid {grid} but the default grid is "
                                 f"{self.default_grid}: every grid needs the same spatial dimensions")
            product = 1
            for g in grid:
                product *= g
            if product != ranks:
                raise ValueError(f"plan: the grid of {name!r}, {list(grid)}, has {product} places, but the "
                                 f"plan is for {ranks} ranks")

    def grid_for(self, name):
        return self.layers.get(name, self.default_grid)

    def grids(self):
        """Every distinct grid, in a fixed order."""
        return sorted({self.default_grid, *self.layers.values()})

    def validate(self, model, ranks=None):
        """Refuse a plan for another rank count or naming layers the model (None: no model) does not have."""
        if ranks is not None and ranks != self.ranks:
            raise ValueError(f"plan: written for {self.ranks} ranks ('ranks'), but the job has {ranks}")
        if model is None:
            return
        names = {n for n, _ in model.named_leaves()}
        unknown = sorted(set(self.layers) - names)
        if unknown:
            raise ValueError(f"plan: 'layers' names {unknown[:5]} which the model does not have; its layers are "
                             f"e.g. {sorted(names)[:5]}")

    def check_job(self, model, input_shape, ranks, where="the job"):
        """Refuse (ValueError, naming the difference) a plan made for another model, global input shape
        (N, C, *S: the batch and one sample's shape) or rank count than `where`'s."""
        if ranks != self.ranks:
            raise ValueError(f"plan: made for {self.ranks} ranks, {where} runs on {ranks}")
        if self.model is not None and self.model != model:
            raise ValueError(f"plan: made for model {self.model!r}, {where} trains {model!r}")
        if self.input_shape is not None:
            got = tuple(int(s) for s in input_shape)
            if self.input_shape[0] != got[0]:
                raise ValueError(f"plan: made for batch {self.input_shape[0]}, {where} has batch {got[0]}")
            if self.input_shape[1:] != got[1:]:
                raise ValueError(f"plan: made for samples of shape {'x'.join(map(str, self.input_shape[1:]))}, "
                                 f"{where}'s are {'x'.join(map(str, got[1:]))}")

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self):
        out = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "ranks": self.ranks}
        if self.model is not None:
            out["model"] = self.model
        if self.model_options:
            out["model_options"] = self.model_options
        if self.input_shape is not None:
            out["input"] = list(self.input_shape)
        out["default_grid"] = list(self.default_grid)
        entries = []
        for name, grid in self.layers.items():
            entry = {"name": name, "grid": list(grid)}
            if name in self.predicted:
                entry["predicted"] = self.predicted[name]
            entries.append(entry)
        out["layers"] = entries
        return out

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ValueError("plan: expected a JSON object")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"plan: 'format' must be {PLAN_FORMAT!r}, received {data.get('format')!r}")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"plan: 'version' must be {PLAN_VERSION}, received {data.get('version')!r}")
        known = {"format", "version", "ranks", "model", "model_options", "input", "default_grid", "layers"}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"plan: unknown field(s) {extra}; the fields are {sorted(known)}")
        for key in ("ranks", "default_grid"):
            if key not in data:
                raise ValueError(f"plan: missing field {key!r}")
        layers, predicted = {}, {}
        for i, entry in enumerate(data.get("layers", [])):
            if not isinstance(entry, dict) or "name" not in entry or "grid" not in entry:
                raise ValueError(f"plan: 'layers'[{i}] must be an object with 'name' and 'grid'")
            if entry["name"] in layers:
                raise ValueError(f"plan: layer {entry['name']!r} is listed twice in 'layers'")
            layers[entry["name"]] = entry["grid"]
            if "predicted" in entry:
                predicted[entry["name"]] = entry["predicted"]
        return cls(data["ranks"], data["default_grid"], layers, data.get("model"), data.get("model_options"),
                   data.get("input"), predicted)

    def save(self, path):
        """Write atomically (a temporary file renamed over `path`)."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"plan: {path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def __eq__(self, other):
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Plan(ranks={self.ranks}, default_grid={self.default_grid}, {len(self.layers)} layer grids)"
