"""Spatial and hybrid parallelism under MPI: distributions, halo exchange, shuffles, distributed layers.

    d = parallel.Distribution(MPI.COMM_WORLD, grid=(2, 2, 1))   # ranks over (N, H, W) or (N, D, H, W)
    xt = parallel.scatter(x_global, d)
    dm = parallel.distribute(model, d)          # or parallel.distribute(model, plan=parallel.Plan.load(path))
    yt = dm.forward(xt); dxt = dm.backward(dyt); y = yt.gather()

The only package of hpcnn that talks to MPI, through one object: `mpi.Communicator`.
"""
from . import mpi
from .distribution import Distribution
from .halo import HaloExchange
from .model import DistModel, distribute
from .mpi import Communicator
from ..plan import Plan
from .reducer import GradientReducer, GradientSlice
from .shuffle import Shuffle, shuffle
from .tensor import DistTensor, gather, scatter

__all__ = [
    "mpi", "Communicator", "Distribution", "DistTensor", "scatter", "gather", "distribute", "DistModel", "Plan",
    "Shuffle", "shuffle", "HaloExchange", "GradientReducer", "GradientSlice",
]
