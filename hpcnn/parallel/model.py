"""`distribute(model, d)` / `distribute(model, plan=plan)`: an nn model (or loss) as a distributed one.

Every module of the tree becomes the distributed form its layer kind names in the registry
(`hpcnn.nn.registry`, field `distributed`), under the distribution of its grid.
"""
from ..nn import registry
from .distribution import Distribution
from .mpi import Communicator
from .norm import BN_STATS
from .reducer import GradientReducer

__all__ = ["distribute", "DistModel"]


class _Context:
    """What every distributed layer of one model shares: options and the gradient reducer."""

    def __init__(self, overlap, bn_stats):
        self.overlap = overlap
        self.bn_stats = bn_stats
        self.reducer = None

    def ready(self, layer):
        if self.reducer is not None:
            self.reducer.ready(layer)


class DistModel:
    """A distributed model: forward/backward on DistTensors; parameters() are the wrapped model's.

    After backward every rank holds the full, summed parameter gradients (each slice of a channel- or
    filter-split layer summed over the ranks that share it, then gathered: `hpcnn.parallel.reducer`).
    """

    def __init__(self, model, root, context, comm, bucket_bytes, overlap_allreduce):
        self.model = model
        self.root = root
        self.context = context
        owners = [m for m in model.modules() if m.params]
        # each layer's distributed form declares which pieces of its parameters this rank computes
        forms = {id(m.layer): m for m in root.modules()}
        self.reducer = GradientReducer(comm, owners, bucket_bytes=bucket_bytes, overlap=overlap_allreduce,
                                       slices=lambda layer: forms[id(layer)].gradient_slices())
        context.reducer = self.reducer

    def forward(self, t):
        """t: DistTensor (N, C, *S) -> DistTensor of the model's output."""
        return self.root.forward(t)

    __call__ = forward

    def backward(self, g):
        """g: DistTensor, gradient of the output -> gradient of the input; fills and sums parameter gradients."""
        self.reducer.begin()
        dx = self.root.backward(g)
        self.reducer.finish()
        return dx

    def parameters(self):
        return self.model.parameters()

    def zero_grad(self):
        self.model.zero_grad()

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def overlap(self):
        return self.context.overlap

    @overlap.setter
    def overlap(self, value):
        self.context.overlap = bool(value)

    def halo_exchanges(self):
        """Every HaloExchange built so far (for byte counts)."""
        return [ex for m in self.root.modules() for ex in m.exchanges.values()]


def _wrap(layer, name, grid_of, context):
    """The distributed form of `layer` (named `name` in the model) and, recursively, of its children."""
    kind = registry.kind_of(layer)
    form = kind.resolve("distributed")
    d = grid_of(name)
    if not kind.channel_splits and d.channels * d.filters > 1:
        raise ValueError(f"layer {name!r} ({kind.name}) has no channel or filter split: its grid "
                         f"{'x'.join(map(str, d.grid))} splits channels over {d.channels} and filters over "
                         f"{d.filters} ranks; give it a grid with C = F = 1")
    children = [_wrap(child, f"{name}.{cname}" if name else cname, grid_of, context)
                for cname, child in layer.children()]
    return form(layer, d, context, name, children)


def distribute(model, d=None, plan=None, overlap=True, bn_stats="global", bucket_bytes=1 << 22,
               overlap_allreduce=True, comm=None):
    """A distributed model (or loss) from an nn model and one Distribution `d` or a `Plan`.

    overlap: compute the interior of convolutions while their halos travel. bn_stats: 'global'
    (default; equal to single-process batch-norm), 'spatial' or 'local'. With a plan, every leaf
    layer gets the plan's grid for its name (the plan's default grid otherwise) and tensors are
    shuffled wherever consecutive layers' grids differ. comm defaults to d.comm or COMM_WORLD.
    """
    if (d is None) == (plan is None):
        raise ValueError("distribute: give exactly one of a Distribution `d` or `plan=`")
    if bn_stats not in BN_STATS:
        raise ValueError(f"distribute: bn_stats must be one of {BN_STATS}, received {bn_stats!r}")
    if d is not None:
        comm = d.comm

        def grid_of(name):
            return d
    else:
        comm = Communicator.world() if comm is None else Communicator.of(comm)
        # a loss has no layers to check: it takes the plan's default grid (its inputs arrive there)
        plan.validate(None if registry.kind_of(model).role == "loss" else model, comm.size)
        # every distribution is made up front, in the same order on every rank (Split is collective)
        by_grid = {grid: Distribution(comm, grid) for grid in plan.grids()}

        def grid_of(name):
            return by_grid[plan.grid_for(name)]
    kind = registry.kind_of(model)
    if kind.role == "loss":
        return kind.resolve("distributed")(model, grid_of(""))
    context = _Context(overlap, bn_stats)
    root = _wrap(model, "", grid_of, context)
    return DistModel(model, root, context, comm, bucket_bytes, overlap_allreduce)

