"""Distributed transposed convolutions (ConvTranspose2d/3d): the adjoint of a distributed convolution.

The transposed layer's input is block-distributed like the output of the convolution it is the
adjoint of (`hpcnn.geometry.transposed_geometry`), and its output like that convolution's input.
So its halo is that convolution's (`hpcnn.geometry.window_halo` over the output's global shape),
used the other way round: forward computes each rank's contribution to the output rows its windows
write (the extended output block) and sends the halo part to the ranks that own those rows, which
add it (`HaloExchange.reverse`); backward fetches the halo of the output gradient
(`HaloExchange.forward`) and convolves the extended block, which also gives the filter gradient.
"""
from .. import kernels
from ..backend import array_module
from ..geometry import window_halo
from .halo import HaloExchange
from .module import DistModule, is_empty
from .tensor import DistTensor

__all__ = ["DistConvTranspose"]


class DistConvTranspose(DistModule):
    """ConvTranspose2d/3d on (N, C, *S) blocks: any stride, padding, output_padding and dilation."""

    def _exchange(self, in_spatial, out_spatial):
        key = (in_spatial, out_spatial)
        if key not in self.exchanges:
            # the adjoint convolution maps out_spatial to in_spatial (given: output_padding may leave rows unread)
            self.exchanges[key] = HaloExchange(self.d, window_halo(self.d.spatial_grid, out_spatial,
                                                                   self.layer.geometry, out_spatial=in_spatial))
        return self.exchanges[key]

    def _forward(self, t):
        layer = self.layer
        layer.check_input(t.local, ndim=self.d.nd + 2, channels=layer.in_channels)
        g = layer.geometry
        out_spatial = layer.output_shape(t.global_shape[2:])
        out_global = t.global_shape[:1] + (layer.out_channels,) + out_spatial
        ex = self._exchange(t.global_shape[2:], out_spatial)
        x = t.local
        lead = x.shape[:1] + (layer.out_channels,)
        if is_empty(x.shape):
            y_ext = array_module(x).zeros(lead + ex.need_shape, x.dtype)
        else:
            y_ext = kernels.conv_backward_data(x, layer.params["weight"], ex.need_shape, g.stride, ex.pads,
                                               g.dilation)
        y = ex.reverse(y_ext)
        if "bias" in layer.params and not is_empty(y.shape):
            y += layer.params["bias"].reshape((1, -1) + (1,) * self.d.nd)
        self.x, self._in_global, self._out_spatial = x, t.global_shape, out_spatial
        return DistTensor(y, self.d, out_global)

    def _backward(self, gt):
        layer = self.layer
        g = layer.geometry
        ex = self._exchange(self._in_global[2:], self._out_spatial)
        dy = gt.local
        ext = ex.forward(dy)
        w = layer.params["weight"]
        if is_empty(self.x.shape) or is_empty(ext.shape):
            dx = array_module(dy).zeros(self.x.shape, dy.dtype)
            layer.grads["weight"][...] = 0
        else:
            dx = kernels.conv_forward(ext, w, None, g.stride, ex.pads, g.dilation)
            layer.grads["weight"][...] = kernels.conv_backward_filter(ext, self.x, g.kernel, g.stride, ex.pads,
                                                                      g.dilation)
        if "bias" in layer.params:
            layer.grads["bias"][...] = kernels.conv_backward_bias(dy) if not is_empty(dy.shape) else 0
        return DistTensor(dx, self.d, self._in_global)
