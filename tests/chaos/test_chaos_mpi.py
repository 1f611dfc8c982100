"""CHAOS under MPI: each rank trains on its share, the ranks average weights every k steps (parallel SGD)."""
import math

import numpy as np
import pytest
from mpi4py import MPI

from hpcnn import chaos, models, nn
from hpcnn.data.digits import Digits
from hpcnn.train import SGD, CosineLR

pytestmark = pytest.mark.mpi


def _all(comm, flag):
    """A collective assert: every rank fails together."""
    return all(comm.allgather(bool(flag)))


def _simulate(ranks, x, y, *, epochs, k, lr, seed):
    """P ranks in one process: deterministic SGD on each share, weights averaged after every k steps."""
    replicas = [models.build("lenet", seed=0) for _ in range(ranks)]
    optimizers = [SGD(m, lr=lr) for m in replicas]
    loss = nn.CrossEntropyLoss()

    def average():
        for tensors in zip(*[[p for _, p, _ in m.parameters()] for m in replicas]):
            total = tensors[0].copy()
            for t in tensors[1:]:
                total += t
            total *= total.dtype.type(1.0 / ranks)
            for t in tensors:
                t[...] = total

    average()
    for epoch in range(epochs):
        orders = [chaos.epoch_order(len(x), epoch, seed)[r::ranks] for r in range(ranks)]
        steps = max(len(o) for o in orders) if k is None else k
        rounds = 1 if k is None else math.ceil(max(len(o) for o in orders) / k)
        for i in range(rounds):
            for model, opt, order in zip(replicas, optimizers, orders):
                for j in order[i * steps:(i + 1) * steps]:
                    out = model.forward(x[j:j + 1])
                    loss.forward(out, y[j:j + 1])
                    model.backward(loss.backward())
                    opt.step()
            average()
    return replicas[0]


@pytest.mark.parametrize("k", [7, None])
def test_ranks_average_their_weights_as_parallel_sgd(k):
    comm = MPI.COMM_WORLD
    (x, y), (xv, yv) = Digits("train").arrays(), Digits("val").arrays()
    x, y = x[:90], y[:90]
    model = models.build("lenet", seed=0)
    history = chaos.fit(model, nn.CrossEntropyLoss(), (x, y), (xv, yv), epochs=2, deterministic=True, lr=0.05,
                        seed=4, comm=comm, average_every=k)
    assert _all(comm, history[-1]["samples"] == len(y) and history[-1]["ranks"] == comm.size)
    mine = np.concatenate([p.ravel() for _, p, _ in model.parameters()])
    everyone = comm.allgather(mine)
    assert _all(comm, all(np.array_equal(mine, other) for other in everyone)), "ranks hold different weights"
    accuracies = comm.allgather(history[-1]["val_accuracy"])
    assert _all(comm, len(set(accuracies)) == 1)
    expected = _simulate(comm.size, x, y, epochs=2, k=k, lr=0.05, seed=4)
    reference = np.concatenate([p.ravel() for _, p, _ in expected.parameters()])
    if comm.size <= 2:      # a sum of two numbers does not depend on the order MPI adds them in
        ok = np.array_equal(mine, reference)
    else:
        ok = np.max(np.abs(mine - reference)) <= 1e-5 * np.max(np.abs(reference))
    assert _all(comm, ok), "the averaged weights differ from parallel SGD simulated in one process"


def test_fused_workers_on_every_rank_train_digits():
    comm = MPI.COMM_WORLD
    train, val = Digits("train").arrays(), Digits("val").arrays()
    model = models.build("lenet", seed=0)
    # each rank sees 1/P of an epoch: P times the epochs give every rank the updates of 3 sequential epochs
    epochs = 3 * comm.size
    history = chaos.fit(model, nn.CrossEntropyLoss(), train, val, epochs=epochs, threads=2, comm=comm,
                        schedule=CosineLR(0.05, epochs * len(train[1]) // comm.size), average_every=50)
    assert _all(comm, history[-1]["step"] == "fused")
    assert _all(comm, history[-1]["val_accuracy"] >= 0.9), history[-1]["val_accuracy"]
