"""Convolution kernels against torch.nn.functional.conv2d/conv3d and autograd: forward, dx, dw, db."""
import threading
import tracemalloc

import numpy as np
import pytest
import torch.nn.functional as F

from hpcnn import kernels as K
from hpcnn.geometry import WindowGeometry, normalize_padding
from hpcnn.kernels.cpu import _workers as cpu_workers
from hpcnn.kernels.cpu import conv as cpu_conv
from hpcnn.kernels.cpu._blas import gemm
from tests.oracle import assert_close, seeded, to_torch

# (x shape, out channels, kernel, stride, padding, dilation, bias): odd sizes, kernels 1/3/5/7,
# strides 1/2/3, dilation 1/2, padding 0 / 'same' / symmetric / per-side (lo, hi), 2-D and 3-D.
CASES = [
    ((2, 3, 13, 17), 4, 3, 1, 1, 1, True),
    ((1, 1, 13, 17), 2, 3, 1, 0, 1, False),
    ((3, 5, 13, 17), 6, 3, 2, 1, 1, True),
    ((2, 4, 37, 53), 3, 5, 1, "same", 1, True),
    ((2, 4, 37, 53), 8, 7, 2, 3, 1, False),
    ((1, 3, 37, 53), 5, 7, 3, 2, 1, True),
    ((1, 3, 37, 53), 2, 3, 3, 0, 1, False),           # stride 3: the last input row/col is read by no window
    ((1, 2, 13, 17), 3, 2, 2, 0, 1, True),            # even kernel, stride 2: leftover row and column
    ((2, 2, 13, 17), 3, 3, 1, "same", 2, True),
    ((2, 6, 13, 17), 5, 5, 2, 2, 2, False),
    ((3, 7, 13, 17), 8, 1, 1, 0, 1, True),            # pointwise: a plain GEMM
    ((2, 4, 13, 17), 3, 1, 2, 0, 1, True),            # strided 1x1
    ((2, 3, 13, 17), 4, 3, 2, ((0, 1), (2, 0)), 1, True),
    ((2, 8, 13, 17), 8, 5, 1, ((1, 3), (0, 2)), 2, False),
    ((1, 3, 13, 17), 2, 3, 1, ((4, 0), (0, 5)), 1, True),  # padding wider than the kernel reach
    ((1, 3, 13, 17), 2, (3, 5), (1, 2), (1, 2), (2, 1), True),
    ((9, 3, 5, 6), 4, 3, 1, 1, 1, True),              # many small images
    ((2, 3, 5, 5), 4, 5, 1, 0, 1, True),              # one output pixel
    ((1, 2, 7, 9), 3, 7, 3, 0, 1, False),
    ((2, 3, 7, 9, 11), 4, 3, 1, 1, 1, True),
    ((1, 2, 9, 8, 7), 3, 3, 2, 0, 1, False),
    ((2, 3, 7, 9, 11), 4, 3, 1, "same", 2, True),
    ((1, 2, 6, 7, 9), 2, 1, 1, 0, 1, True),
    ((2, 3, 7, 9, 11), 4, 3, 2, ((1, 0), (0, 1), (1, 1)), 1, True),
    ((1, 2, 8, 9, 7), 3, (1, 3, 5), (1, 1, 2), (0, 1, 2), (1, 2, 1), True),
    ((2, 3, 18, 5), 2, 1, 1, ((0, 1), (0, 2)), 1, True),    # 1x1 padded after only: not a plain GEMM
    ((2, 3, 18, 5), 2, 1, 1, 1, (2, 1), False),             # 1x1 padded on both sides
    ((1, 2, 6, 7, 9), 2, 1, 1, ((0, 0), (0, 2), (0, 1)), 1, True),
    ((2, 4, 40, 3), 3, 3, 1, ((1, 1), (1, 0)), 1, True),    # thin along the last axis (a W halo piece)
    ((1, 3, 9, 33, 4), 2, 3, (1, 2, 1), ((1, 1), (0, 1), (1, 0)), (1, 1, 2), True),
    # W taps as shifted GEMMs over one copy of each line (C*RD*RH >= 32, lines >= 16 (RW-1) dw long;
    # backward-filter: >= 64 (RW-1) dw):
    ((2, 16, 9, 40), 16, 3, 1, 1, 1, True),
    ((1, 16, 11, 70), 4, 3, (2, 1), (1, 2), (1, 2), True),
    ((1, 4, 6, 40), 16, 3, 1, ((0, 1), (4, 0)), 1, True),  # backward-data only, its W padding reaching past
    ((1, 12, 7, 5, 36), 3, 3, 1, 1, 1, False),
    ((2, 6, 5, 4, 48), 3, (2, 3, 4), (1, 2, 1), (1, 1, 2), (1, 1, 1), True),
    ((1, 16, 5, 130), 4, 3, 1, 1, 1, True),           # backward-filter too: lines >= 64 (RW-1) dw
    ((1, 4, 3, 3, 130), 2, 3, 1, 1, 1, False),
    # deep layers: a few output pixels per image, whole images per GEMM; 256 filters: dW accumulated as itself
    ((5, 24, 2, 2), 256, 3, 1, 1, 1, True),
    ((3, 16, 4, 3), 20, 3, 2, 1, 1, False),
    ((4, 6, 3, 2, 3), 5, 3, 1, 1, 1, True),
]


def _ids(case):
    shape, k, kernel, stride, padding, dilation, bias = case
    text = f"{'x'.join(map(str, shape))}-K{k}-k{kernel}-s{stride}-p{padding}-d{dilation}{'-b' if bias else ''}"
    return text.replace(" ", "").replace("(", "").replace(")", "").replace(",", "_")


def _torch_conv(x, w, b, stride, padding, dilation):
    """PyTorch's convolution; per-side padding through F.pad (which takes the last dimension first)."""
    nd = x.dim() - 2
    conv = F.conv2d if nd == 2 else F.conv3d
    if isinstance(padding, (int, str)):
        return conv(x, w, b, stride, padding, dilation)
    pairs = normalize_padding(padding, nd)
    x = F.pad(x, [p for lo_hi in reversed(pairs) for p in lo_hi])
    return conv(x, w, b, stride, 0, dilation)


def _check_case(case, dtype):
    shape, k, kernel, stride, padding, dilation, with_bias = case
    nd = len(shape) - 2
    kernel = (kernel,) * nd if isinstance(kernel, int) else kernel
    rng = seeded(0)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((k, shape[1]) + kernel).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if with_bias else None

    y = K.conv_forward(x, w, b, stride, padding, dilation)
    tx, tw = to_torch(x, True), to_torch(w, True)
    tb = to_torch(b, True) if with_bias else None
    ty = _torch_conv(tx, tw, tb, stride, padding, dilation)
    assert y.dtype == dtype
    assert_close(y, ty.detach().numpy(), dtype, "forward")

    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(to_torch(dy))
    dx = K.conv_backward_data(dy, w, shape[2:], stride, padding, dilation)
    dw = K.conv_backward_filter(x, dy, kernel, stride, padding, dilation)
    assert dx.dtype == dw.dtype == dtype
    assert_close(dx, tx.grad.numpy(), dtype, "dx")
    assert_close(dw, tw.grad.numpy(), dtype, "dw")
    if with_bias:
        assert_close(K.conv_backward_bias(dy), tb.grad.numpy(), dtype, "db")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_matches_torch(case, dtype):
    _check_case(case, dtype)


SPLIT_CASES = [CASES[i] for i in (0, 2, 5, 7, 10, 13, 16, 18, 21, 25, 26, 27, 28, 29, 30, 31)]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=_ids)
def test_conv_matches_torch_in_small_chunks(case, dtype, monkeypatch):
    """Blocks of a few pixels: they start and end inside output lines and split every image."""
    monkeypatch.setattr(cpu_conv, "_SMALL_GEMM", 0)
    monkeypatch.setattr(cpu_conv, "_GEMM_PIXELS", 7)
    monkeypatch.setattr(cpu_conv, "_FILTER_GEMM_PIXELS", 5)
    monkeypatch.setattr(cpu_conv, "_BLOCK_BYTES", 1)
    _check_case(case, dtype)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_matches_torch_whole_images_per_gemm(case, threads, monkeypatch):
    """Every case with more than one image through the whole-images blocks (each image's output taken
    as small), split over threads or not, dW accumulated as itself (as for 256 filters on)."""
    monkeypatch.setattr(cpu_workers, "thread_count", lambda: threads)
    monkeypatch.setattr(cpu_conv, "thread_count", lambda: threads)
    monkeypatch.setattr(cpu_workers, "_PARALLEL_FLOPS", 0)
    monkeypatch.setattr(cpu_conv, "_GEMM_PIXELS", 1 << 20)
    monkeypatch.setattr(cpu_conv, "_K_MAJOR_FILTERS", 1)
    _check_case(case, np.float64)


@pytest.mark.parametrize("case", SPLIT_CASES, ids=_ids)
def test_conv_matches_torch_split_over_threads(case, monkeypatch):
    """One call's blocks split over 3 threads (whole images each for the stride > 1 scatter), several
    GEMMs per block."""
    monkeypatch.setattr(cpu_workers, "thread_count", lambda: 3)
    monkeypatch.setattr(cpu_conv, "thread_count", lambda: 3)
    monkeypatch.setattr(cpu_workers, "_PARALLEL_FLOPS", 0)
    monkeypatch.setattr(cpu_conv, "_SMALL_GEMM", 0)
    monkeypatch.setattr(cpu_conv, "_GEMM_PIXELS", 16)
    monkeypatch.setattr(cpu_conv, "_FILTER_GEMM_PIXELS", 16)
    monkeypatch.setattr(cpu_conv, "_BLOCK_BYTES", 4096)
    _check_case(case, np.float64)


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,parts", [
    ((1, 3, 64, 60), 3, 2, 1, 1, 6),
    ((1, 2, 80, 33), 5, (2, 3), 2, 2, 6),
    ((1, 2, 30, 12, 10), 3, 2, 1, 1, 6),
    ((2, 2, 9, 16, 10), 3, (1, 2, 2), (1, 0, 1), 1, 6),
    ((1, 2, 12, 20, 18), 3, 2, 1, 1, 0),  # bands thinner than the window: one part on the calling thread
], ids=["2d", "2d-dilated", "3d", "3d-mixed", "3d-thin"])
def test_conv_backward_data_strided_one_image_over_threads(shape, kernel, stride, padding, dilation, parts,
                                                           monkeypatch):
    """Stride > 1 backward-data of one image split over threads: bands of blocks in two rounds, each
    round's bands writing disjoint input lines."""
    monkeypatch.setattr(cpu_workers, "thread_count", lambda: 3)
    monkeypatch.setattr(cpu_conv, "thread_count", lambda: 3)
    monkeypatch.setattr(cpu_workers, "_PARALLEL_FLOPS", 0)
    monkeypatch.setattr(cpu_conv, "_GEMM_PIXELS", 16)
    monkeypatch.setattr(cpu_conv, "_SMALL_GEMM", 0)
    monkeypatch.setattr(cpu_conv, "_BLOCK_BYTES", 1)
    nd = len(shape) - 2
    rng = seeded(11)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, shape[1]) + (kernel,) * nd)
    tx = to_torch(x, True)
    ty = _torch_conv(tx, to_torch(w), None, stride, padding, dilation)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(to_torch(dy))
    pool = cpu_workers._worker_pool()
    submitted = []
    monkeypatch.setattr(cpu_workers, "_worker_pool", lambda: type("Spy", (), {
        "submit": lambda self, fn, *args: submitted.append(args) or pool.submit(fn, *args)})())
    dx = K.conv_backward_data(dy, w, shape[2:], stride, padding, dilation)
    assert_close(dx, tx.grad.numpy(), np.float64, "dx")
    assert len(submitted) == parts, submitted  # two rounds of three bands


@pytest.mark.parametrize("shape,kernel,padding", [
    ((0, 3, 9, 9), 3, 1),          # empty batch
    ((2, 3, 2, 9), 3, 0),          # the window does not fit: output height 0
    ((1, 2, 2, 3, 4), 3, 0),
], ids=["empty-batch", "no-output-2d", "no-output-3d"])
def test_conv_empty_output(shape, kernel, padding, dtype):
    nd = len(shape) - 2
    x = np.ones(shape, dtype)
    w = np.ones((4, shape[1]) + (kernel,) * nd, dtype)
    y = K.conv_forward(x, w, np.ones(4, dtype), 1, padding)
    out = WindowGeometry(nd, kernel, 1, padding).output_shape(shape[2:])
    assert y.shape == (shape[0], 4) + out and y.dtype == dtype
    dx = K.conv_backward_data(y, w, shape[2:], 1, padding)
    assert dx.shape == shape and not dx.any()
    dw = K.conv_backward_filter(x, y, (kernel,) * nd, 1, padding)
    assert dw.shape == w.shape and not dw.any()
    assert K.conv_backward_bias(y).shape == (4,)


def test_conv_rejects_mismatched_shapes():
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="3 input channels"):
        K.conv_forward(x, np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="does not match input"):
        K.conv_backward_data(np.zeros((1, 4, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32), (8, 8))
    with pytest.raises(ValueError, match="stride 1"):
        K.conv_forward(x, np.zeros((4, 3, 3, 3), np.float32), stride=2, padding="same")


def test_conv_takes_non_contiguous_views(dtype):
    rng = seeded(4)
    x = rng.standard_normal((2, 9, 4, 26)).astype(dtype).transpose(0, 2, 1, 3)[:, :, :, ::2]
    w = rng.standard_normal((3, 5, 4, 3)).astype(dtype).transpose(3, 2, 1, 0)[:, :, ::-1]
    dy = rng.standard_normal((2, 7, 3, 13)).astype(dtype).transpose(0, 2, 1, 3)
    xc, wc, dyc = (np.ascontiguousarray(a) for a in (x, w, dy))
    np.testing.assert_array_equal(K.conv_forward(x, w, None, 1, 1), K.conv_forward(xc, wc, None, 1, 1))
    np.testing.assert_array_equal(K.conv_backward_data(dy, w, (9, 13), 1, 1),
                                  K.conv_backward_data(dyc, wc, (9, 13), 1, 1))
    np.testing.assert_array_equal(K.conv_backward_filter(x, dy, (5, 3), 1, 1),
                                  K.conv_backward_filter(xc, dyc, (5, 3), 1, 1))


def test_conv_from_several_threads():
    """Concurrent calls (per-thread scratch) give the same results as serial ones."""
    rng = seeded(5)
    inputs = [rng.standard_normal((2, 4, 33, 29)).astype(np.float32) for _ in range(4)]
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    expected = [(K.conv_forward(x, w, None, 1, 1), K.conv_backward_filter(x, x[:, :1].repeat(5, 1), (3, 3), 1, 1))
                for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            x = inputs[i]
            results[i] = (K.conv_forward(x, w, None, 1, 1), K.conv_backward_filter(x, x[:, :1].repeat(5, 1), (3, 3), 1, 1))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (y, dw), (y_ref, dw_ref) in zip(results, expected):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dw, dw_ref)


def test_conv_scratch_stays_bounded():
    """A 1024^2 image: beyond the arrays it returns, each kernel allocates a few MB, not an im2col of the image."""
    rng = seeded(6)
    x = rng.standard_normal((1, 4, 1024, 1024)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((1, 4, 1024, 1024)).astype(np.float32)
    x16 = rng.standard_normal((1, 16, 256, 1024)).astype(np.float32)
    w16 = rng.standard_normal((64, 16, 3, 3)).astype(np.float32)
    dy16 = rng.standard_normal((1, 64, 256, 1024)).astype(np.float32)
    limit = 8 << 20   # a full im2col would be 9 * x.nbytes = 144 MiB
    for name, call in [("forward", lambda: K.conv_forward(x, w, None, 1, 1)),
                       ("backward-data", lambda: K.conv_backward_data(dy, w, (1024, 1024), 1, 1)),
                       ("backward-data, stride 2", lambda: K.conv_backward_data(dy[:, :, :512, :512], w, (1024, 1024), 2, 1)),
                       ("backward-filter", lambda: K.conv_backward_filter(x, dy, (3, 3), 1, 1)),
                       # the W taps as shifted GEMMs (16 channels): line columns and 64 output lines
                       ("forward, shifted taps", lambda: K.conv_forward(x16, w16, None, 1, 1)),
                       ("backward-filter, shifted taps", lambda: K.conv_backward_filter(x16, dy16, (3, 3), 1, 1))]:
        tracemalloc.start()
        try:
            out = call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - out.nbytes < limit, f"{name}: peak {peak / 2**20:.1f} MiB for a {out.nbytes / 2**20:.1f} MiB result"


def test_gemm_strided_views_and_accumulate(dtype):
    rng = seeded(7)
    for a, b in [(rng.standard_normal((7, 5)), rng.standard_normal((5, 9))),
                 (rng.standard_normal((5, 7)).T, rng.standard_normal((9, 5)).T)]:
        a, b = a.astype(dtype), b.astype(dtype)
        c_full = rng.standard_normal((7, 20)).astype(dtype)
        c = c_full[:, 3:12]
        expected = 2.0 * a @ b + 0.5 * c
        gemm(a, b, c, alpha=2.0, beta=0.5)
        assert_close(c, expected, dtype, "gemm")


def _forward_in_child(queue):
    x = seeded(8).standard_normal((2, 3, 9, 9))
    w = seeded(9).standard_normal((2, 3, 3, 3))
    queue.put(K.conv_forward(x, w, None, 1, 1))


def test_conv_threads_after_fork(monkeypatch):
    """A child forked after the kernels started their worker threads still runs split calls."""
    import multiprocessing
    monkeypatch.setattr(cpu_workers, "thread_count", lambda: 2)
    monkeypatch.setattr(cpu_workers, "_PARALLEL_FLOPS", 0)
    x = seeded(8).standard_normal((2, 3, 9, 9))
    w = seeded(9).standard_normal((2, 3, 3, 3))
    expected = K.conv_forward(x, w, None, 1, 1)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_forward_in_child, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(result, expected)


def test_conv_with_a_32_bit_integer_blas(tmp_path):
    """HPCNN_BLAS naming scipy's OpenBLAS (32-bit integer cblas) gives the same results."""
    import glob
    import os
    import subprocess
    import sys
    import scipy
    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs", "*openblas*"))
    if not libs:
        pytest.skip("scipy has no bundled OpenBLAS here")
    rng = seeded(10)
    x, w, dy = rng.standard_normal((2, 3, 9, 11)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((2, 4, 5, 6))
    np.savez(tmp_path / "in.npz", x=x, w=w, dy=dy)
    script = (
        "import numpy as np, sys\n"
        "from hpcnn import kernels as K\n"
        "from hpcnn.kernels.cpu import _blas\n"
        "assert _blas.BLAS_INT is np.int32, _blas.BLAS_SOURCE\n"
        f"d = np.load({str(tmp_path / 'in.npz')!r})\n"
        "np.savez(sys.argv[1], y=K.conv_forward(d['x'], d['w'], None, 1, 1), "
        "dx=K.conv_backward_data(d['dy'], d['w'], (9, 11), 2, 1), "
        "dw=K.conv_backward_filter(d['x'], d['dy'], (3, 3), 2, 1))\n")
    env = dict(os.environ, HPCNN_BLAS=libs[0])
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npz")], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = np.load(tmp_path / "out.npz")
    assert_close(out["y"], K.conv_forward(x, w, None, 1, 1), np.float64, "forward")
    assert_close(out["dx"], K.conv_backward_data(dy, w, (9, 11), 2, 1), np.float64, "dx")
    assert_close(out["dw"], K.conv_backward_filter(x, dy, (3, 3), 2, 1), np.float64, "dw")


def test_serial_blas_restores_the_thread_count_when_the_last_context_closes():
    from threadpoolctl import threadpool_limits
    from hpcnn.kernels.cpu._blas import blas_threads, serial_blas
    if blas_threads() is None:
        pytest.skip("this BLAS does not report its thread count")
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != 2:
            pytest.skip("this BLAS does not take a thread limit of 2")
        first, second = serial_blas(), serial_blas()
        first.__enter__()
        second.__enter__()
        assert blas_threads() == 1
        first.__exit__(None, None, None)
        assert blas_threads() == 1  # the second is still open
        second.__exit__(None, None, None)
        assert blas_threads() == 2
        x = seeded(12).standard_normal((4, 3, 17, 19))
        w = seeded(13).standard_normal((5, 3, 3, 3))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpu_workers, "thread_count", lambda: 2)
            mp.setattr(cpu_workers, "_PARALLEL_FLOPS", 0)
            K.conv_forward(x, w, None, 1, 1)
        assert blas_threads() == 2
