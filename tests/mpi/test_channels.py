"""Channel and filter splits (long grids (N, *S, C, F)) equal one process: forward, dx and every parameter
gradient, alone and mixed with sample and spatial splits, odd channel counts and uneven blocks."""
import copy

import numpy as np
import pytest

from hpcnn import nn, parallel
from hpcnn.backend import to_host
from tests.devices import device_params
from tests.mpi.collective import SIZE, assert_close_all, check_all, grid_id, grids_for, world
from tests.mpi.compare import run_both

pytestmark = pytest.mark.mpi

F64 = np.float64


def long_grids(size, nd=2, limit=None):
    """Grids of `size` ranks in the long form with C x F > 1: every factorization over (N, *S, C, F) that splits
    channels or filters (all of them at 1 rank: the long grid (1, .., 1))."""
    grids = [g for g in grids_for(size, nd + 2) if g[-2] * g[-1] > 1] or [(1,) * (nd + 3)]
    if limit is not None and len(grids) > limit:
        # keep the pure C and pure F splits and an even spread of the mixed ones
        keep = [g for g in grids if g[:-2] == (1,) * (nd + 1)]
        rest = [g for g in grids if g not in keep]
        step = max(1, len(rest) // max(1, limit - len(keep)))
        grids = keep + rest[::step][:max(0, limit - len(keep))]
    return grids


GRIDS = long_grids(SIZE, limit=12)
GRIDS_3D = long_grids(SIZE, nd=3, limit=4)


def _x(shape, dtype=F64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CONV = [  # (in, out, kernel, stride, padding, input spatial): odd channel counts, fewer channels than ranks
    (3, 5, 3, 1, 1, (9, 7)),
    (5, 3, 1, 1, 0, (6, 5)),
    (2, 7, 3, 2, 1, (11, 8)),
    (7, 2, 5, 1, "same", (8, 9)),
    (1, 4, 3, 1, 0, (7, 7)),
]


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("case", CONV, ids=[f"c{c[0]}k{c[1]}r{c[2]}s{c[3]}" for c in CONV])
@pytest.mark.parametrize("device", device_params())
def test_conv_channels_filters(case, grid, device):
    cin, cout, k, s, p, spatial = case
    layer = nn.Conv2d(cin, cout, k, stride=s, padding=p, rng=np.random.default_rng(1), dtype=F64)
    run_both(layer, _x((3, cin) + spatial), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_conv_no_bias_float32(grid, device):
    layer = nn.Conv2d(5, 6, 3, padding=1, bias=False, rng=np.random.default_rng(2))
    run_both(layer, _x((2, 5, 13, 10), np.float32), grid, np.float32, device=device)


@pytest.mark.parametrize("grid", GRIDS_3D, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_conv3d_channels(grid, device):
    layer = nn.Conv3d(3, 5, 3, padding=1, rng=np.random.default_rng(3), dtype=F64)
    run_both(layer, _x((2, 3, 5, 4, 6)), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_batchnorm_channels(grid, device):
    layer = nn.BatchNorm2d(5, dtype=F64)
    layer.params["weight"][...] = np.linspace(0.5, 1.5, 5)
    layer.params["bias"][...] = np.linspace(-1, 1, 5)
    run_both(layer, _x((3, 5, 6, 5)) * 2 + 1, grid, F64, steps=2, device=device)
    layer.eval()
    run_both(layer, _x((3, 5, 6, 5), seed=4), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS + [(SIZE, 1, 1)], ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_conv_reduces_only_its_slice(grid, device):
    """Each rank's gradient allreduce carries only its weight slice W[f-range, c-range] (and the bias of its
    filters on c = 0), over the P / (Pc x Pf) ranks that share it; the allgather brings the rest of the weight."""
    from hpcnn.geometry import block_range
    from tests.devices import device as open_device
    cin, cout, k = 5, 6, 3
    layer = nn.Conv2d(cin, cout, k, padding=1, rng=np.random.default_rng(2), dtype=F64)
    d = parallel.Distribution(world(), grid)
    dm = parallel.distribute(nn.Sequential(layer).to(open_device(device)), d)
    c0, c1 = block_range(cin, d.channels, d.channel_coord)
    f0, f1 = block_range(cout, d.filters, d.filter_coord)
    piece = ((f1 - f0) * (c1 - c0) * k * k + ((f1 - f0) if d.channel_coord == 0 else 0)) * 8
    whole = (cout * cin * k * k + cout) * 8
    sharing = SIZE // (d.channels * d.filters)
    expected = (piece if sharing > 1 else 0, whole - piece if d.channels * d.filters > 1 else 0)
    got = (dm.reducer.reduce_bytes, dm.reducer.gather_bytes)
    check_all(got == expected, f"grid {grid}: (reduced, gathered) bytes {got}, expected {expected}")


@pytest.mark.parametrize("grid", GRIDS + grids_for(SIZE, 2), ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_linear_reduces_over_the_sample_line(grid, device):
    """A Linear head on rows replicated over the spatial, C and F axes: every replica computes the same whole
    gradient, summed over only the ranks of other samples (none when the samples are not split): exact over two
    steps, and its bytes sent only where the sample line has several ranks."""
    rng = np.random.default_rng(11)
    head = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64), nn.GlobalAvgPool(), nn.Flatten(),
                         nn.Linear(3, 4, rng=rng, dtype=F64))
    dm = run_both(head, _x((4, 2, 6, 5)), grid, F64, steps=2, device=device)
    entries = [(b, e) for b in dm.reducer.buckets for e in b.entries]
    groups = {e[2].group.size for _, e in entries if e[0] is head[3]}
    check_all(groups == {grid[0]}, f"grid {grid}: Linear summed over {groups} ranks, expected {grid[0]}")
    linear = sum(e[4] * 8 for b, e in entries if e[0] is head[3] and b.group.size > 1)
    check_all(linear == ((3 * 4 + 4) * 8 if grid[0] > 1 else 0), f"grid {grid}: Linear reduced {linear} B")


def _network(rng):
    """conv, batch-norm (after a conv without bias: its bias gradient would be zero), ReLU, a residual block with a projection, pooling and a linear head."""
    body = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False, rng=rng, dtype=F64),
                         nn.BatchNorm2d(5, dtype=F64),
                         nn.ReLU(), nn.Conv2d(5, 5, 3, padding=1, rng=rng, dtype=F64))
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64), nn.LeakyReLU(0.1),
                         nn.Residual(body, nn.Conv2d(3, 5, 1, stride=2, rng=rng, dtype=F64)), nn.MaxPool2d(2),
                         nn.Conv2d(5, 3, 1, rng=rng, dtype=F64), nn.GlobalAvgPool(), nn.Flatten(),
                         nn.Linear(3, 4, rng=rng, dtype=F64))


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_network_channels(grid, device):
    run_both(_network(np.random.default_rng(5)), _x((3, 2, 11, 9)), grid, F64, device=device)


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
def test_flatten_head_channels(grid):
    rng = np.random.default_rng(7)
    head = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=F64), nn.Flatten(),
                         nn.Linear(3 * 5 * 7, 3, rng=rng, dtype=F64))
    run_both(head, _x((3, 2, 5, 7)), grid, F64)


def _short_grids():
    return grids_for(SIZE, 2)[:3]


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("device", device_params())
def test_shuffle_between_long_and_short(grid, device):
    """A tensor moved to a long grid and back to each short grid is unchanged (activations, labels, rows)."""
    from tests.devices import device as open_device
    dev = open_device(device)
    w = world()
    src = parallel.Distribution(w, grid)
    for shape in [(3, 5, 7, 6), (3, 7, 6), (3, 5)]:
        x = _x(shape)
        t = parallel.scatter(dev.put(x), src)
        for other in _short_grids() + [tuple(reversed(grid))]:
            there = parallel.shuffle(t, parallel.Distribution(w, other))
            assert_close_all(to_host(there.gather()), x, F64, f"{shape} {grid} -> {other}")
            back = parallel.shuffle(there, src)
            assert_close_all(to_host(back.local), x[src.local_slices(shape)], F64, f"{shape} {other} -> {grid}")


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
def test_loss_on_channel_split(grid):
    """Per-pixel cross-entropy and MSE on channel-split logits give the single-process loss and gradient."""
    w = world()
    d = parallel.Distribution(w, grid)
    logits = _x((3, 5, 6, 7))
    labels = np.random.default_rng(3).integers(0, 5, (3, 6, 7))
    for loss, target in [(nn.CrossEntropyLoss(), labels), (nn.MSELoss(), _x((3, 5, 6, 7), seed=2))]:
        ref_value = loss.forward(logits, target)
        ref_grad = loss.backward()
        dl = parallel.distribute(loss, d)
        value = dl.forward(parallel.scatter(logits, d), parallel.scatter(target, d))
        assert_close_all(np.array([value]), np.array([ref_value]), F64, f"{type(loss).__name__} {grid}")
        assert_close_all(dl.backward().gather(), ref_grad, F64, f"{type(loss).__name__} grad {grid}")


def test_plan_mixes_long_and_short_grids():
    """A plan whose layers run on a channel split, a filter split and a spatial split."""
    from hpcnn.plan import Plan
    rng = np.random.default_rng(9)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, bias=False, rng=rng, dtype=F64), nn.BatchNorm2d(5, dtype=F64),
                          nn.ReLU(), nn.Conv2d(5, 3, 3, padding=1, rng=rng, dtype=F64))
    layers = {"0": [1, 1, 1, SIZE, 1], "1": [1, 1, 1, SIZE, 1], "3": [1, 1, 1, 1, SIZE]}
    plan = Plan(SIZE, (1, SIZE, 1), layers)
    reference = copy.deepcopy(model)
    d0 = parallel.Distribution(world(), (1, SIZE, 1))
    dm = parallel.distribute(model, plan=plan)
    x = _x((2, 2, 7, 6))
    y_ref = reference.forward(x)
    dy = _x(y_ref.shape, seed=8)
    dx_ref = reference.backward(dy)
    yt = dm.forward(parallel.scatter(x, d0))
    assert_close_all(yt.gather(), y_ref, F64, "plan forward")
    dxt = dm.backward(parallel.scatter(dy, yt.distribution))
    assert_close_all(dxt.gather(), dx_ref, F64, "plan dx")
    for (name, _, g), (_, _, rg) in zip(dm.parameters(), reference.parameters()):
        assert_close_all(g, rg, F64, f"plan d{name}")


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("case", ["residual", "projection", "skipconcat"])
def test_residual_and_skipconcat_channels(case, grid):
    from tests.mpi.test_layers import _residual_and_skipconcat_cases
    model, x = _residual_and_skipconcat_cases()[case]
    run_both(model, x, grid, F64)


def test_kinds_without_channel_splits_are_refused():
    """GroupNorm and ConvTranspose run only on grids with C = F = 1: a channel grid is refused by name."""
    if SIZE == 1:
        pytest.skip("one rank has no channel split")
    for layer in (nn.GroupNorm(2, 4), nn.ConvTranspose2d(4, 2, 2, stride=2)):
        model = nn.Sequential(layer)
        d = parallel.Distribution(world(), (1, 1, 1, SIZE, 1))
        try:
            parallel.distribute(model, d)
            message = ""
        except ValueError as e:
            message = str(e)
        check_all("has no channel or filter split" in message, f"not refused: {message!r}")
