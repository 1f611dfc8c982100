"""The communication clock (the Communicator's Clock) and the per-layer probe: each kind of communication is
counted where it happens, and the probe's per-layer parts add up to the layer's wall time."""
import time

import numpy as np
import pytest

from hpcnn import models, parallel
from hpcnn.calibrate.probe import KINDS, LayerProbe, training_step
from hpcnn.parallel.mpi import Clock
from tests.mpi.collective import check_all, world

pytestmark = pytest.mark.mpi


def _model_and_input(grid):
    w = world()
    model = models.build("meshnet", in_channels=3, num_classes=2, widths=(4, 4), dilations=(1, 2), seed=0)
    d = parallel.Distribution(w, grid)
    shape = (max(grid[0], 2), 3, 24, 20)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return model, d, parallel.scatter(x, d)


def test_each_kind_is_counted_where_it_happens():
    w = world()
    p = w.Get_size()
    model, d, xt = _model_and_input((1, p, 1))
    dm = parallel.distribute(model, d)
    momentum = {name: np.zeros_like(v) for name, v, _ in model.parameters()}
    clock = d.comm.clock
    before = clock.snapshot()
    t0 = time.perf_counter()
    training_step(dm, xt, momentum)
    wall = time.perf_counter() - t0
    spent = Clock.difference(before, clock.snapshot())
    # each second is counted under one kind at most: together they fit in the step's wall time
    check_all(sum(spent[k] for k in KINDS) <= wall, f"{sum(spent.values())} s counted in a {wall} s step: {spent}")
    # halos are exchanged (padding copies on one rank too); more than one rank: statistics and gradients reduce
    check_all(spent["halo"] > 0, f"no halo time: {spent}")
    if p > 1:
        check_all(spent["collective"] > 0 and spent["gradient_allreduce"] > 0, f"no collective time: {spent}")
    else:
        check_all(spent["collective"] == 0 and spent["gradient_allreduce"] == 0, f"one rank reduced: {spent}")
    check_all(spent["shuffle"] == 0, f"shuffle time without a shuffle: {spent}")
    other = parallel.Distribution(w, (1, 1, p))
    before = clock.snapshot()
    parallel.shuffle(xt, other)
    moved = Clock.difference(before, clock.snapshot())
    check_all(moved["shuffle"] > 0 and moved["halo"] == 0, f"shuffle not counted: {moved}")


def test_probe_parts_add_up_per_layer():
    w = world()
    p = w.Get_size()
    model, d, xt = _model_and_input((1, 1, p))
    dm = parallel.distribute(model, d)
    probe = LayerProbe(dm)
    momentum = {name: np.zeros_like(v) for name, v, _ in model.parameters()}
    training_step(dm, xt, momentum)
    probe.clear()
    for _ in range(2):
        training_step(dm, xt, momentum)
    local = probe.local_summary()
    table = probe.summary(d.comm)
    names = [n for n, _ in model.named_leaves()]
    check_all(list(table) == names, f"layers {list(table)}")
    ok = True
    for name in names:
        v = local[name]
        parts = v["compute_s"] + v["halo_s"] + v["collective_s"] + v["shuffle_s"]
        ok &= abs(parts - (v["forward_s"] + v["backward_s"])) < 1e-9 and v["forward_s"] > 0 and v["backward_s"] > 0
        # the summary is the whole entry of the rank slowest at this layer
        ok &= table[name]["forward_s"] + table[name]["backward_s"] >= v["forward_s"] + v["backward_s"]
        ok &= abs(sum(table[name][f"{k}_s"] for k in ("compute", "halo", "collective", "shuffle"))
                  - table[name]["forward_s"] - table[name]["backward_s"]) < 1e-9
    check_all(ok, f"per-layer parts do not add up: {local}")
    check_all(local["block2.conv"]["halo_s"] > 0, "a dilated convolution spent no time on halos")


def test_node_first_runs_the_first_rank_of_each_node_before_the_others():
    from hpcnn.parallel.mpi import Communicator
    comm = Communicator.of(world())

    def record():
        start = time.monotonic()
        time.sleep(0.2)
        return start, time.monotonic()

    start, end = comm.node_first(record)
    node = comm._node()
    spans = node.allgather((node.Get_rank(), start, end))
    first_end = [e for r, s, e in spans if r == 0][0]
    others = [s for r, s, e in spans if r != 0]
    check_all(all(s >= first_end for s in others), f"a rank started at {others} before the first ended at {first_end}")
    check_all(comm.node_first(lambda: 7) == 7, "node_first returns fn's result")


def test_idle_barrier_waits_for_every_rank_without_spinning():
    """The ranks that reach it first sleep until the last arrives: little CPU time while they wait."""
    from hpcnn.parallel.mpi import Communicator
    comm = Communicator.of(world())
    comm.barrier()
    if comm.rank == 0:
        time.sleep(0.3)
    cpu0, wall0 = time.process_time(), time.monotonic()
    comm.idle_barrier()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    waited = comm.allgather_object((comm.rank, wall, cpu))
    late = [w for r, w, _ in waited if r != 0]
    check_all(all(w >= 0.25 for w in late), f"a rank left the barrier before rank 0 arrived: {waited}")
    check_all(all(c < 0.5 * w for r, w, c in waited if r != 0), f"a waiting rank spun: {waited}")


def test_yielding_waits_give_what_blocking_ones_give_and_sleep():
    """With yield_when_idle (oversubscribed nodes) every collective on arrays, message wait and barrier
    completes with the same values, and a rank waiting for a late one sleeps instead of spinning."""
    from hpcnn.parallel.mpi import Communicator
    comm = Communicator.of(world())
    p, r = comm.size, comm.rank

    def run():
        a = np.arange(6, dtype=np.float64) * (r + 1)
        comm.allreduce_(a)
        send = np.concatenate([np.full(q + 1, 10.0 * r + q) for q in range(p)])
        recv = np.empty(p * (r + 1))
        comm.alltoallv(send, [q + 1 for q in range(p)], recv, [r + 1] * p)
        gathered = np.empty(sum(q + 1 for q in range(p)))
        comm.allgatherv(np.full(r + 1, float(r)), gathered, [q + 1 for q in range(p)])
        ring = np.empty(3)
        requests = [comm.irecv(ring, (r - 1) % p, tag=5), comm.isend(np.full(3, float(r)), (r + 1) % p, tag=5)]
        comm.wait_all(requests)
        comm.barrier()
        return np.concatenate([a, recv, gathered, ring])

    blocking = run()
    Communicator.yield_when_idle(True)
    try:
        yielded = run()
        comm.barrier()
        if r == 0:
            time.sleep(0.3)
        cpu0, wall0 = time.process_time(), time.monotonic()
        comm.allreduce_(np.ones(4))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        Communicator.yield_when_idle(False)
    check_all(np.array_equal(blocking, yielded), f"yielding waits changed the results: {blocking} != {yielded}")
    check_all(r == 0 or p == 1 or (wall >= 0.25 and cpu < 0.5 * wall), f"a waiting rank spun: {wall} s, {cpu} s CPU")
