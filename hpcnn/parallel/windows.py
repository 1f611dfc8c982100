"""Distributed pooling and upsampling, and the window-layer base that convolutions share.

A window layer (convolution or pooling) exchanges the halo its output block's windows read
(`hpcnn.geometry.window_halo`), then runs the kernel on the extended block with padding only at
the global edges. Upsampling reads the input rows under its output block (a halo of at most one
row). Empty blocks compute empty outputs and still take part in every exchange.
"""
from .. import kernels
from ..backend import array_module
from ..geometry import bilinear_halo, upsample_halo, window_halo, window_input_range
from .halo import HaloExchange
from .module import DistModule, is_empty
from .tensor import DistTensor

__all__ = ["WindowLayer", "DistMaxPool", "DistAvgPool", "DistUpsample"]


class WindowLayer(DistModule):
    """Convolution or pooling: halo exchange, then the kernel on the extended block."""

    def __init__(self, layer, d, context, name="", children=()):
        super().__init__(layer, d, context, name, children)
        self.geometry = layer.geometry

    def _exchange(self, spatial):
        if spatial not in self.exchanges:
            self.exchanges[spatial] = HaloExchange(self.d, window_halo(self.d.spatial_grid, spatial, self.geometry))
        return self.exchanges[spatial]

    def _input_box(self, out_box, spatial, origin):
        """Slices (relative to an array starting at global rows `origin`) and per-side padding for outputs `out_box`."""
        g = self.geometry
        index, pads = [slice(None), slice(None)], []
        for k, ((o0, o1), size) in enumerate(zip(out_box, spatial)):
            a, b, plo, phi = window_input_range(o0, o1, size, g.kernel[k], g.stride[k], g.dilation[k],
                                                g.padding[k][0])
            index.append(slice(a - origin[k], b - origin[k]))
            pads.append((plo, phi))
        return tuple(index), tuple(pads)

    def _compute(self, x, spatial, out_shape_local, lead, dtype):
        """y over this rank's output block from the extended block (every rank of a line exchanges)."""
        ex = self._exchange(spatial)
        if is_empty(lead + out_shape_local):
            ex.forward(x)
            return array_module(x).zeros(lead + out_shape_local, dtype)
        ext = ex.forward(x)
        index, pads = self._input_box([h.out for h in ex.mine], spatial, [h.need[0] for h in ex.mine])
        return self._kernel(ext[index], pads)

    def _global_out(self, t, channels):
        return t.global_shape[:1] + (channels,) + self.geometry.output_shape(t.global_shape[2:])


class DistMaxPool(WindowLayer):
    """MaxPool2d/3d: windows that cross blocks read the halo; padding is -inf at the global edges only."""

    def _kernel(self, x, pads):
        g = self.geometry
        y, self.argmax = kernels.maxpool_forward(x, g.kernel, g.stride, pads)
        return y

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=self.d.nd + 2)
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, t.global_shape[1])
        ex = self._exchange(self._spatial)
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        if is_empty(out_local):
            self.argmax = None
            return DistTensor(array_module(t.local).zeros(out_local, t.local.dtype), self.d, out_global)
        return DistTensor(self._kernel(ext, ex.pads), self.d, out_global)

    def _backward(self, g):
        ex = self._exchange(self._spatial)
        if self.argmax is None:
            dx_ext = array_module(g.local).zeros(self._in_shape[:2] + ex.need_shape, g.local.dtype)
        else:
            dx_ext = kernels.maxpool_backward(g.local, self.argmax, ex.need_shape)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistAvgPool(WindowLayer):
    """AvgPool2d/3d with count_include_pad=True: the divisor is the full window everywhere."""

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=self.d.nd + 2)
        g = self.geometry
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, t.global_shape[1])
        ex = self._exchange(self._spatial)
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        self._empty = is_empty(out_local)
        if self._empty:
            return DistTensor(array_module(t.local).zeros(out_local, t.local.dtype), self.d, out_global)
        return DistTensor(kernels.avgpool_forward(ext, g.kernel, g.stride, ex.pads), self.d, out_global)

    def _backward(self, gt):
        g = self.geometry
        ex = self._exchange(self._spatial)
        if self._empty:
            dx_ext = array_module(gt.local).zeros(self._in_shape[:2] + ex.need_shape, gt.local.dtype)
        else:
            dx_ext = kernels.avgpool_backward(gt.local, ex.need_shape, g.kernel, g.stride, ex.pads)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)


class DistUpsample(DistModule):
    """Nearest upsampling: each output block reads the input rows under it (a halo of at most one row).
    Linear (bilinear, trilinear): also one row on either side (`hpcnn.geometry.bilinear_halo`), the edge row
    repeated at the global edges only."""

    def _scale(self, nd):
        s = self.layer.scale_factor
        return (s,) * nd if isinstance(s, int) else tuple(s)

    def forward_linear(self, t):
        nd = self.d.nd
        scale = self._scale(nd)
        spatial = t.global_shape[2:]
        key = ("linear", spatial, scale)
        if key not in self.exchanges:
            self.exchanges[key] = HaloExchange(self.d, bilinear_halo(self.d.spatial_grid, spatial, scale))
        self.ex = ex = self.exchanges[key]
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_global = t.global_shape[:2] + tuple(s * f for s, f in zip(spatial, scale))
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        if is_empty(out_local) or is_empty(ext.shape):
            self._index = None
            return DistTensor(array_module(t.local).zeros(out_local, t.local.dtype), self.d, out_global)
        # the rows that frame the centre rows [c0, c1) under this output block: a neighbour's or a repeated edge
        self._edges, index = [], [slice(None), slice(None)]
        for h, f, size in zip(ex.mine, scale, spatial):
            c0, c1 = h.out[0] // f, (h.out[1] - 1) // f + 1
            self._edges.append((h.need[0] == c0, h.need[1] == c1))
            index.append(slice(h.out[0] - c0 * f, h.out[1] - c0 * f))
        self._index = tuple(index)
        xp = array_module(ext)
        y = kernels.upsample_linear_forward(xp.ascontiguousarray(ext), scale, self._edges)
        self._centre = y.shape
        return DistTensor(xp.ascontiguousarray(y[self._index]), self.d, out_global)

    def backward_linear(self, g):
        ex = self.ex
        xp = array_module(g.local)
        if self._index is None:
            dx_ext = xp.zeros(self._in_shape[:2] + ex.need_shape, g.local.dtype)
        else:
            full = xp.zeros(self._centre, g.local.dtype)
            full[self._index] = g.local
            dx_ext = kernels.upsample_linear_backward(full, self._scale(self.d.nd), ex.need_shape, self._edges)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)

    def _forward(self, t):
        self.layer.check_input(t.local, ndim=(4, 5) if self.layer.mode == "nearest" else self.d.nd + 2)
        if self.layer.mode != "nearest":
            return self.forward_linear(t)
        nd = self.d.nd
        scale = self._scale(nd)
        spatial = t.global_shape[2:]
        key = (spatial, scale)
        if key not in self.exchanges:
            self.exchanges[key] = HaloExchange(self.d, upsample_halo(self.d.spatial_grid, spatial, scale))
        self.ex = ex = self.exchanges[key]
        self._in_shape, self._in_global = t.local.shape, t.global_shape
        out_global = t.global_shape[:2] + tuple(s * f for s, f in zip(spatial, scale))
        out_local = self.d.local_shape(out_global)
        ext = ex.forward(t.local)
        if is_empty(out_local):
            return DistTensor(array_module(t.local).zeros(out_local, t.local.dtype), self.d, out_global)
        xp = array_module(ext)
        y = kernels.upsample_nearest_forward(xp.ascontiguousarray(ext), scale)
        index = (slice(None), slice(None)) + tuple(slice(h.out[0] - h.need[0] * f, h.out[1] - h.need[0] * f)
                                                   for h, f in zip(ex.mine, scale))
        return DistTensor(xp.ascontiguousarray(y[index]), self.d, out_global)

    def _backward(self, g):
        if self.layer.mode != "nearest":
            return self.backward_linear(g)
        ex = self.ex
        scale = self._scale(self.d.nd)
        if is_empty(g.local.shape):
            dx_ext = array_module(g.local).zeros(self._in_shape[:2] + ex.need_shape, g.local.dtype)
        else:
            # place dy in the scale-aligned frame of the extended block, then sum each scale block
            full = array_module(g.local).zeros(g.local.shape[:2] + tuple(n * f for n, f in zip(ex.need_shape, scale)), g.local.dtype)
            index = (slice(None), slice(None)) + tuple(slice(h.out[0] - h.need[0] * f, h.out[1] - h.need[0] * f)
                                                       for h, f in zip(ex.mine, scale))
            full[index] = g.local
            dx_ext = kernels.upsample_nearest_backward(full, scale)
        return DistTensor(ex.reverse(dx_ext), self.d, self._in_global)
