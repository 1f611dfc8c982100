"""Spatial and hybrid parallelism under MPI: process grids, halo exchange, shuffles, distributed layers.

    d = dist.Distribution(MPI.COMM_WORLD, grid=(2, 2, 1))   # ranks over (N, H, W) or (N, D, H, W)
    xt = dist.scatter(x_global, d)
    dm = dist.distribute(model, d)          # or dist.distribute(model, plan=dist.Plan.load(path))
    yt = dm.forward(xt); dxt = dm.backward(dyt); y = yt.gather()
"""
from . import comm
from .distribution import Distribution, block_range
from .halo import HaloExchange, upsample_halo, window_halo, window_input_range
from .model import DistModel, distribute, leaf_layers
from .plan import Plan
from .reducer import GradientReducer
from .shuffle import Shuffle, shuffle
from .tensor import DistTensor, gather, scatter

__all__ = [
    "comm", "Distribution", "block_range", "DistTensor", "scatter", "gather", "distribute", "DistModel",
    "Plan", "leaf_layers", "Shuffle", "shuffle", "HaloExchange", "window_halo", "upsample_halo",
    "window_input_range", "GradientReducer",
]
