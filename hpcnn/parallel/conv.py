"""Distributed convolutions (Conv2d, Conv3d) on (N, C, *S) blocks: any stride, dilation, kernel and padding."""
from .. import kernels
from ..backend import array_module
from ..geometry import block_range, box_pieces, own_rows_suffice
from .channels import ChannelMove, filter_ranges, standard_ranges
from .module import is_empty
from .reducer import GradientSlice
from .streams import Overlap
from .tensor import DistTensor
from .windows import WindowLayer

__all__ = ["DistConv"]


class DistConv(WindowLayer):
    """Conv2d/Conv3d on (N, C, *S) blocks: any stride, dilation, kernel and per-side padding.

    When every block of the split lines reads all of its own rows, the convolution uses its linearity
    instead of an extended block (`hpcnn.geometry.box_pieces`): the owned block is convolved with the
    halo rows counted as zero padding while the halos travel, then the thin halo boxes (along the
    first split dim spanning the others' halos, corners included; along a later one only the earlier
    dims' own rows) add their part to the few outputs they reach, each through only the kernel taps that
    reach its rows (one of a 3-wide kernel's three: `hpcnn.geometry.piece_taps`); on a GPU the owned block is convolved
    on a second stream (`hpcnn.parallel.streams.Overlap`), so that the synchronisation before the next
    message does not wait for it. Backward likewise: the data gradient of the owned block comes
    straight from the kernel, the halo boxes' part goes back to their owners as thin pieces through
    the adjoint, and the filter gradient is the owned block's plus the halo pieces'. No copy of the
    owned block is made, and no activation-sized buffer is added. Otherwise (trimmed rows, empty
    blocks) the extended block is assembled and used. `path` says which one the last forward took:
    "pieces", "extended" or "idle" (an empty weight slice).

    Channels and filters (a long grid with Pc x Pf > 1): rank (c, f) holds the input channels
    block_range(C, Pc, c) (the same on every f) and computes, with the weight slice
    W[block_range(K, Pf, f), block_range(C, Pc, c)], a partial sum of its filters' outputs; one sum
    over the C x F ranks (`ChannelMove`: a reduce-scatter over C, and an allgather over F where
    Pf > 1) gives every rank its output channels block_range(K, Pc, c). Backward: dy's filters
    block come from their owners (the adjoint), the data gradient of the input channels is summed
    over the F line, and the weight and bias gradients are those of the rank's slice (bias on c = 0),
    zero elsewhere; `gradient_slices` declares them, so that the gradient reducer sums each slice over
    only the ranks that share it (`hpcnn.parallel.reducer`).
    """

    def gradient_slices(self):
        """W[f-range, c-range] and bias[f-range] (on c = 0) of rank (c, f), on a C x F split."""
        if not self._split:
            return {}
        d, layer = self.d, self.layer

        def weight(c, f):
            return (slice(*block_range(layer.out_channels, d.filters, f)),
                    slice(*block_range(layer.in_channels, d.channels, c)))

        def bias(c, f):
            return (slice(*block_range(layer.out_channels, d.filters, f)) if c == 0 else slice(0, 0),)
        out = {"weight": GradientSlice.channel_filter(d, weight)}
        if "bias" in layer.params:
            out["bias"] = GradientSlice.channel_filter(d, bias)
        return out

    def _slices(self):
        """(filter range, input channel range) of this rank's weight slice."""
        return self.d.filter_range(self.layer.out_channels), self.d.channel_range(self.layer.in_channels)

    def _take_weights(self):
        """The weight (and bias) slice this rank computes with, for this pass."""
        layer = self.layer
        (f0, f1), (c0, c1) = self._slices()
        w, b = layer.params["weight"], layer.params.get("bias")
        if not self._split:
            self._w, self._b = w, b
            return
        xp = array_module(w)
        self._w = xp.ascontiguousarray(w[f0:f1, c0:c1])
        self._b = None if b is None or self.d.channel_coord != 0 else xp.ascontiguousarray(b[f0:f1])

    @property
    def _split(self):
        return self.d.channels * self.d.filters > 1

    def _moves(self):
        """(partial filter outputs -> standard output channels (sum), standard dy -> filter layout (copy))."""
        if getattr(self, "_channel_moves", None) is None:
            d, k = self.d, self.layer.out_channels
            fr, _ = filter_ranges(k, d.channels, d.filters)
            sr, senders = standard_ranges(k, d.channels, d.filters)
            self._channel_moves = (ChannelMove(d.cf_comm, fr, sr, reduce=True),
                                   ChannelMove(d.cf_comm, sr, fr, senders))
        return self._channel_moves

    def _kernel(self, x, pads):
        g = self.geometry
        return kernels.conv_forward(x, self._w, self._b, g.stride, pads, g.dilation)

    def _pieces(self, ex, batch):
        """(own box, its padding, halo pieces) of `hpcnn.geometry.box_pieces` when the decomposition
        applies on every exchanged line, else None (the extended block is used)."""
        if not ex.comm_dims or batch == 0 or not all(own_rows_suffice(ex.halo[k]) for k in ex.comm_dims):
            return None
        return box_pieces(ex.mine, ex.comm_dims, self._spatial, self.geometry)

    def _cut(self, taps):
        """The weight slice cut to `taps` ((t0, t1) per spatial dim), the index of that cut, and its kernel
        size: a halo piece convolves only with the taps that reach its rows (`hpcnn.geometry.piece_taps`).
        Cut once per pass (the weights do not change between forward and backward)."""
        index = (slice(None), slice(None)) + tuple(slice(t0, t1) for t0, t1 in taps)
        kernel = tuple(t1 - t0 for t0, t1 in taps)
        if kernel == tuple(self._w.shape[2:]):
            return self._w, index, kernel
        cuts = self._cuts
        if taps not in cuts:
            cuts[taps] = array_module(self._w).ascontiguousarray(self._w[index])
        return cuts[taps], index, kernel

    @staticmethod
    def _out_index(out_box, origin):
        """Index of the outputs out_box in this rank's output block (starting at global `origin`)."""
        return (slice(None), slice(None)) + tuple(slice(o[0] - s, o[1] - s) for o, s in zip(out_box, origin))

    def _forward_pieces(self, x, ex, decomposition):
        geo = self.geometry
        _, pads_own, pieces = decomposition
        origin = [h.out[0] for h in ex.mine]
        overlap = self.context.overlap
        streams = Overlap(x)
        ex.start(x)
        if not overlap:
            ex.wait_halo()
        with streams.interior():
            y = self._kernel(ex.trimmed(x), pads_own)
        if overlap:
            ex.wait_halo()
        streams.join()
        for out_box, in_box, pads, taps in pieces:
            part = kernels.conv_forward(ex.box(in_box), self._cut(taps)[0], None, geo.stride, pads, geo.dilation)
            y[self._out_index(out_box, origin)] += part
        return y

    def _backward_pieces(self, dy, ex, decomposition):
        geo = self.geometry
        w = self._w
        _, pads_own, boxes = decomposition
        origin = [h.out[0] for h in ex.mine]
        overlap = self.context.overlap
        streams = Overlap(dy)
        xp = array_module(dy)
        xt = ex.trimmed(self.x)
        # the input's halo travels again (for the filter gradient) while the data gradients are computed
        ex.start(self.x)
        pieces = []
        for out_box, in_box, pads, taps in boxes:
            dy_part = xp.ascontiguousarray(dy[self._out_index(out_box, origin)])
            dx_part = kernels.conv_backward_data(dy_part, self._cut(taps)[0], tuple(hi - lo for lo, hi in in_box),
                                                 geo.stride, pads, geo.dilation)
            pieces.append((in_box, pads, taps, dy_part, dx_part))
        if overlap:
            # the halo boxes' data gradient travels to its owners while the owned block's is computed
            ex.reverse_pieces_start([(box, dx_part) for box, _, _, _, dx_part in pieces], xt.shape[:2], dy)
        with streams.interior():
            dx_own = kernels.conv_backward_data(dy, w, xt.shape[2:], geo.stride, pads_own, geo.dilation)
            dw = kernels.conv_backward_filter(xt, dy, geo.kernel, geo.stride, pads_own, geo.dilation)
        ex.wait_halo()
        streams.join()
        for in_box, pads, taps, dy_part, _ in pieces:
            _, index, kernel = self._cut(taps)
            dw[index] += kernels.conv_backward_filter(ex.box(in_box), dy_part, kernel, geo.stride, pads, geo.dilation)
        self._set_grads(dw, dy)
        if not overlap:
            ex.reverse_pieces_start([(box, dx_part) for box, _, _, _, dx_part in pieces], xt.shape[:2], dy)
        return ex.reverse_pieces_finish(dx_own)

    def _set_grads(self, dw, dy):
        """This rank's weight (and bias) gradient: its slice, zero elsewhere (dw None: no work, zeros)."""
        layer = self.layer
        if not self._split:
            if dw is None:
                layer.grads["weight"][...] = 0
            else:
                layer.grads["weight"][...] = dw
            if "bias" in layer.params:
                layer.grads["bias"][...] = kernels.conv_backward_bias(dy) if dw is not None else 0
            return
        (f0, f1), (c0, c1) = self._slices()
        layer.grads["weight"][...] = 0
        if dw is not None:
            layer.grads["weight"][f0:f1, c0:c1] = dw
        if "bias" in layer.params:
            layer.grads["bias"][...] = 0
            if dw is not None and self.d.channel_coord == 0:
                layer.grads["bias"][f0:f1] = kernels.conv_backward_bias(dy)

    def _forward(self, t):
        d, layer = self.d, self.layer
        (f0, f1), (c0, c1) = self._slices()
        self.layer.check_input(t.local, ndim=d.nd + 2, channels=c1 - c0)
        if t.global_shape[1] != layer.in_channels:
            raise ValueError(f"{layer.describe()}: expects {layer.in_channels} channels, received global "
                             f"shape {t.global_shape}")
        self._take_weights()
        self._cuts = {}
        self._spatial = t.global_shape[2:]
        out_global = self._global_out(t, layer.out_channels)
        out_local = d.local_shape(out_global)[2:]
        # the ranks of a spatial line share (c, f), hence whether their slice is empty
        self._idle = self._w.size == 0
        if self._idle:
            self._decomposition, self.path = None, "idle"
            y = array_module(t.local).zeros(t.local.shape[:1] + (f1 - f0,) + out_local, t.local.dtype)
        else:
            ex = self._exchange(self._spatial)
            self._decomposition = self._pieces(ex, t.local.shape[0])
            if self._decomposition is not None:
                self.path = "pieces"
                y = self._forward_pieces(t.local, ex, self._decomposition)
            else:
                self.path = "extended"
                y = self._compute(t.local, self._spatial, out_local, t.local.shape[:1] + (f1 - f0,),
                                  t.local.dtype)
        if self._split:
            y = self._moves()[0].forward(y)
        # the owned block only: the halo is fetched again in backward rather than kept
        self.x = t.local
        self._in_global = t.global_shape
        return DistTensor(y, d, out_global)

    def _backward(self, g):
        dy = g.local
        if self._split:
            dy = self._moves()[1].forward(dy)
        dx = self._input_gradient(dy)
        if self._split and self.d.filters > 1:
            dx = array_module(dx).ascontiguousarray(dx)
            self.d.filter_comm.allreduce_(dx)
        return DistTensor(dx, self.d, self._in_global)

    def _input_gradient(self, dy):
        """The data gradient of this rank's input block (a partial sum over F when filters are split);
        fills this rank's weight gradients."""
        geo = self.geometry
        if self._idle:
            self._set_grads(None, dy)
            return array_module(dy).zeros(self.x.shape, dy.dtype)
        ex = self._exchange(self._spatial)
        if self._decomposition is not None:
            return self._backward_pieces(dy, ex, self._decomposition)
        w = self._w
        compute = not is_empty(dy.shape)
        ext = ex.forward(self.x)
        pads = ex.pads
        if compute:
            dx_ext = kernels.conv_backward_data(dy, w, ex.need_shape, geo.stride, pads, geo.dilation)
            self._set_grads(kernels.conv_backward_filter(ext, dy, geo.kernel, geo.stride, pads, geo.dilation), dy)
        else:
            dx_ext = array_module(dy).zeros(self.x.shape[:2] + ex.need_shape, dy.dtype)
            self._set_grads(None, dy)
        del ext  # before the adjoint allocates dx: one activation less at the peak
        return ex.reverse(dx_ext)
