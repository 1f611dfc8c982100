"""A second CUDA stream for the interior of a layer, so that its computation overlaps the halo exchange.

A distributed convolution posts its halo messages (packing on the current stream, one
synchronisation before MPI: `hpcnn.parallel.staging.synchronize`), computes the interior of its
block on the interior stream while MPI moves the halos, and adds the boundary pieces on the
current stream after the halos have arrived and the interior is done:

    overlap = Overlap(x)                 # the module of x decides: nothing happens for numpy arrays
    with overlap.interior():             # after everything queued on the current stream so far
        y = interior(x)
    ... wait for the halos ...
    overlap.join()                       # the current stream waits for the interior's kernels
    y[rows] += boundary(...)

The synchronisation before the next MPI call waits for the current stream only, so it does not
wait for the interior. On the emulated GPU the streams are hpcnn.emulated's no-ops: the same calls.

Memory: arrays allocated on the interior stream (the interior's output, im2col scratch) come from
that stream's part of CuPy's pool. They are used on the current stream only after `join`, and the
interior stream reuses freed memory only in a later `interior()` block, which first waits for
everything queued on the current stream, so no stream reads memory that the other has reused.
"""
from contextlib import contextmanager

import numpy as np

from ..backend import array_module

__all__ = ["Overlap"]

_streams = {}   # (array module, device) -> the interior stream, one per process and device


def _interior_stream(xp):
    runtime = getattr(xp.cuda, "runtime", None)
    key = (xp.__name__, runtime.getDevice() if runtime is not None else 0)
    stream = _streams.get(key)
    if stream is None:
        stream = _streams[key] = xp.cuda.Stream(non_blocking=True)
    return stream


class Overlap:
    """The interior stream of a layer call on `like`'s device (see the module docstring)."""

    def __init__(self, like):
        xp = array_module(like)
        self._cuda = None if xp is np else xp.cuda
        self._xp = xp
        self._done = None

    @contextmanager
    def interior(self):
        """Queue the block's kernels on the interior stream, after the work queued on the current stream."""
        if self._cuda is None:
            yield
            return
        stream = _interior_stream(self._xp)
        stream.wait_event(self._cuda.get_current_stream().record())
        with stream:
            yield
        self._done = stream.record()

    def join(self):
        """Make the current stream wait for the kernels of the last `interior()` block."""
        if self._done is not None:
            self._cuda.get_current_stream().wait_event(self._done)
            self._done = None
