"""`distribute(model, d)` / `distribute(model, plan=plan)`: an nn model (or loss) as a distributed one."""
from .. import nn
from ..nn.activation import LeakyReLU, ReLU
from ..nn.conv import _ConvNd
from ..nn.norm import _BatchNormNd
from ..nn.pool import _AvgPoolNd, _MaxPoolNd
from . import comm as _comm
from .distribution import Distribution
from .layers import (BN_STATS, DistAvgPool, DistBatchNorm, DistConv, DistCrossEntropyLoss, DistElementwise,
                     DistFlatten, DistGlobalAvgPool, DistLinear, DistMaxPool, DistMSELoss, DistResidual,
                     DistSequential, DistSkipConcat, DistUpsample)
from .reducer import GradientReducer

__all__ = ["distribute", "DistModel", "leaf_layers"]

_LEAVES = [(_ConvNd, DistConv), (_MaxPoolNd, DistMaxPool), (_AvgPoolNd, DistAvgPool),
           (_BatchNormNd, DistBatchNorm), ((ReLU, LeakyReLU), DistElementwise), (nn.Upsample, DistUpsample),
           (nn.GlobalAvgPool, DistGlobalAvgPool), (nn.Flatten, DistFlatten), (nn.Linear, DistLinear)]


def leaf_layers(model, prefix=""):
    """[(dotted name, layer)] of the layers that are not containers, in forward order."""
    children = model.children()
    if not children:
        return [(prefix.rstrip(".") or "", model)]
    out = []
    for name, child in children:
        out.extend(leaf_layers(child, prefix + name + "."))
    return out


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

    After backward every rank holds the full, summed parameter gradients.
    """

    def __init__(self, model, root, context, comm, bucket_bytes, overlap_allreduce):
        self.model = model
        self.root = root
        self.context = context
        owners = [m for m in model.modules() if m.params]
        self.reducer = GradientReducer(comm, owners, bucket_bytes=bucket_bytes, overlap=overlap_allreduce)
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
        out = []
        for m in self.root.modules():
            out.extend(getattr(m, "_exchanges", {}).values())
        return out


def _wrap(layer, name, grid_of, comm, context):
    d = grid_of(name)
    if isinstance(layer, nn.Sequential):
        children = [_wrap(child, f"{name}.{cname}" if name else cname, grid_of, comm, context)
                    for cname, child in layer.children()]
        return DistSequential(layer, d, context, children)
    if isinstance(layer, nn.Residual):
        body = _wrap(layer.body, f"{name}.body" if name else "body", grid_of, comm, context)
        shortcut = None if layer.shortcut is None else \
            _wrap(layer.shortcut, f"{name}.shortcut" if name else "shortcut", grid_of, comm, context)
        return DistResidual(layer, d, context, body, shortcut)
    if isinstance(layer, nn.SkipConcat):
        inner = _wrap(layer.inner, f"{name}.inner" if name else "inner", grid_of, comm, context)
        return DistSkipConcat(layer, d, context, inner)
    for kind, wrapper in _LEAVES:
        if isinstance(layer, kind):
            return wrapper(layer, d, context)
    raise ValueError(f"distribute: no distributed version of layer {name or '(root)'}: {layer.describe()}")


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
        comm = comm or _comm.world()
        plan.validate(model, comm.Get_size())
        # every distribution is made up front, in the same order on every rank (Split is collective)
        by_grid = {grid: Distribution(comm, grid) for grid in plan.grids()}

        def grid_of(name):
            return by_grid[plan.grid_for(name)]
    if isinstance(model, nn.CrossEntropyLoss):
        return DistCrossEntropyLoss(model, grid_of(""))
    if isinstance(model, nn.MSELoss):
        return DistMSELoss(model, grid_of(""))
    context = _Context(overlap, bn_stats)
    root = _wrap(model, "", grid_of, comm, context)
    return DistModel(model, root, context, comm, bucket_bytes, overlap_allreduce)

