"""The emulated GPU is strict: a device array never meets numpy implicitly, so a numpy-only code path cannot come
back unnoticed; the explicit copies work, kernels round-trip through the host, MPI stages its arrays."""
import numpy as np
import pytest

from hpcnn import emulated, kernels, nn
from hpcnn.backend import DeviceUnavailable, array_module, host_scalars, open_device, to_host
from hpcnn.parallel import staging

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def x():
    return emulated.asarray(np.arange(12.0).reshape(3, 4))


IMPLICIT = {
    "np.asarray": lambda x: np.asarray(x),
    "np.array": lambda x: np.array(x),
    "np.ascontiguousarray": lambda x: np.ascontiguousarray(x),
    "np.sum": lambda x: np.sum(x),
    "np.zeros_like": lambda x: np.zeros_like(x),
    "np.concatenate": lambda x: np.concatenate([x, x]),
    "np.broadcast_to": lambda x: np.broadcast_to(x, (2, 3, 4)),
    "np.isfinite": lambda x: np.isfinite(x),
    "np.sqrt": lambda x: np.sqrt(x),
    "np.add": lambda x: np.add(x, 1),
    "np.float64()": lambda x: np.float64(x[0, 0]),
    "float()": lambda x: float(x[0, 0]),
    "int()": lambda x: int(x[0, 0]),
    "bool()": lambda x: bool(x[0, 0] > 0),
    "if x:": lambda x: 1 if x.sum() else 0,
    "host + device": lambda x: np.ones((3, 4)) + x,
    "device + host": lambda x: x + np.ones((3, 4)),
    "device[host index]": lambda x: x[np.array([0, 1])],
    "device[...] = host": lambda x: x.__setitem__(Ellipsis, np.zeros((3, 4))),
    "iteration": lambda x: list(x),
    "kernel with a host argument": lambda x: kernels.relu_backward(x, np.ones((3, 4))),
}


@pytest.mark.parametrize("conversion", list(IMPLICIT))
def test_implicit_conversions_raise(x, conversion):
    with pytest.raises(TypeError):
        IMPLICIT[conversion](x)


def test_explicit_copies_work(x):
    host = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(x.get(), host)
    np.testing.assert_array_equal(emulated.asnumpy(x), host)
    np.testing.assert_array_equal(to_host(x), host)
    out = np.empty((3, 4))
    assert x.get(out=out) is out
    x.set(host * 2)
    np.testing.assert_array_equal(x.get(), host * 2)
    assert host_scalars(x.sum(), 3.0) == (132.0, 3.0)


def test_arithmetic_stays_on_the_device(x):
    y = np.float32(2) * x + 1
    y += x
    y = emulated.where(y > 10, y, 0.0)
    assert type(y) is emulated.ndarray and type(x.sum()) is emulated.ndarray and x.sum().shape == ()
    np.testing.assert_array_equal(y.get(), np.where(3 * np.arange(12.0) + 1 > 10, 3 * np.arange(12.0) + 1, 0)
                                  .reshape(3, 4))
    assert array_module(x, y) is emulated
    with pytest.raises(TypeError, match="met"):
        array_module(x, np.zeros(2))


def test_kernels_round_trip_through_the_host():
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    wh = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = kernels.conv_forward(emulated.asarray(xh), emulated.asarray(wh), None, 1, 1)
    assert type(y) is emulated.ndarray
    np.testing.assert_array_equal(y.get(), kernels.conv_forward(xh, wh, None, 1, 1))
    loss_sum, dl, count = kernels.softmax_cross_entropy(emulated.asarray(xh[:, :, 0, 0]),
                                                         emulated.asarray(np.array([0, 2])))
    # a GPU kernel's sums are device scalars: reading them is an explicit copy
    assert type(loss_sum) is emulated.ndarray and loss_sum.shape == () and type(count) is emulated.ndarray
    with pytest.raises(TypeError):
        float(loss_sum)


def test_a_model_trains_the_same_on_the_emulated_device():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.GlobalAvgPool(), nn.Linear(3, 4))
    import copy
    dev = open_device("emulated-gpu")
    twin = copy.deepcopy(model).to(dev)
    assert all(type(p) is emulated.ndarray and type(g) is emulated.ndarray for _, p, g in twin.parameters())
    rng = np.random.default_rng(1)
    xh, labels = rng.standard_normal((4, 2, 8, 8)).astype(np.float32), rng.integers(0, 4, 4)
    loss, loss_e = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    value = loss(model.forward(xh), labels)
    model.backward(loss.backward())
    value_e = loss_e(twin.forward(dev.put(xh)), dev.put(labels))
    twin.backward(loss_e.backward())
    assert isinstance(value_e, float) and value_e == pytest.approx(value, rel=1e-6)
    for (name, _, g), (_, _, ge) in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(ge.get(), g, rtol=1e-5, atol=1e-6, err_msg=name)
    back = twin.to(open_device("cpu"))
    assert all(type(p) is np.ndarray for _, p, _ in back.parameters())


def test_mpi_stages_emulated_arrays_through_host_buffers(x):
    sends = staging.prepare_sends([x])
    assert type(sends[0]) is np.ndarray and sends[0] is not x
    np.testing.assert_array_equal(sends[0], x.get())
    staging.finish_send(sends[0])
    target = emulated.zeros((3, 4))
    recv, = staging.prepare_recvs([target])
    assert type(recv) is np.ndarray
    recv[...] = 5
    staging.finish_recv(target, recv)
    np.testing.assert_array_equal(target.get(), np.full((3, 4), 5.0))
    host = np.ones(3)
    assert staging.prepare_sends([host])[0] is host and staging.prepare_recvs([host])[0] is host


def test_pinned_pool_reuses_and_stays_bounded():
    pool = staging.PinnedPool(limit=4096)
    like = emulated.zeros(1)
    a = pool.take((100,), np.float32, like)        # 400 bytes: the 512-byte class
    pool.give_back(a)
    b = pool.take((120,), np.float32, like)        # 480 bytes: the same class, the same block
    assert b.base is a.base or np.shares_memory(a, b)
    pool.give_back(b)
    blocks = [pool.take((1024,), np.float32, like) for _ in range(3)]   # 4096 bytes each
    for blk in blocks:
        pool.give_back(blk)
    assert pool.idle_bytes <= 4096


def test_gpu_without_cupy_is_one_clear_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    with pytest.raises(DeviceUnavailable, match="needs CuPy"):
        open_device("gpu")
