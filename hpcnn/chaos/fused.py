"""A chain of layers compiled to one nogil numba call per chunk of mini-batches (the fast CHAOS step).

Per-sample work on small images (8x8 digits) is a few microseconds per layer, less than the
Python glue of a layer call; with several threads that glue runs under the GIL and serializes
them. The fused step runs forward, backward and the per-layer SGD update of a whole chunk of
mini-batches inside one `@numba.njit(nogil=True)` call (`hpcnn.chaos.kernels.train_chunk`), so a
worker holds the GIL only to take the next chunk from the shared counter. `FusedNetwork` lays a
model out for it: each layer's row comes from its kind's fused op (`hpcnn.chaos.ops`, named in the
layer registry); containers other than chains (Sequential) are not fusable.
"""
import numpy as np

from .. import nn
from ..nn import registry
from .kernels import _OC, _OH, _OW, LAYER_COLUMNS
from .ops import NotFusable, describe

__all__ = ["FusedNetwork", "NotFusable", "CACHE_LINE", "line_aligned_zeros"]

CACHE_LINE = 64     # bytes: the unit in which cores hand memory to each other (x86-64, arm64)


def line_aligned_zeros(n, dtype):
    """n zeros of `dtype` that start at a cache-line boundary and own every cache line they touch.

    The allocation is padded to whole lines, so no other array (another worker's buffer, another
    shared array) shares a line with it: a write to it never invalidates a line that another core
    is reading for something else (false sharing).
    """
    dtype = np.dtype(dtype)
    nbytes = -(-max(int(n), 1) * dtype.itemsize // CACHE_LINE) * CACHE_LINE
    raw = np.zeros(nbytes + CACHE_LINE, dtype=np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + nbytes].view(dtype)[:int(n)]


def _is_chain(module):
    try:
        return registry.kind_of(module).structure == "chain"
    except ValueError:      # a container class of the user's, without a registry entry
        return False


def _chain_leaves(model):
    """(dotted prefix, leaf) in forward order through nested chains; other containers raise NotFusable."""
    for name, m in model.named_modules():
        if m.children() and not _is_chain(m):
            raise NotFusable(f"{name or 'model'} ({describe(m)}) is a container other than Sequential")
    return [(name + "." if name else "", m) for name, m in model.named_leaves()]


class FusedNetwork:
    """An hpcnn Sequential model laid out for `train_chunk`: the layer table, shared flat weights, shapes.

    Built by `FusedNetwork.from_model(model, loss, sample_shape, batch)`; raises `NotFusable` naming
    the first layer it cannot run. `load_from(model)` / `store_to(model)` copy the weights between
    the model's arrays and the shared flat buffer; `workspace()` gives one worker's private buffers.

    Parameter tensor j occupies params[p_span[j, 0]:p_span[j, 1]]; every tensor starts on its own
    cache line (the gaps hold zeros that nothing reads), so the update of one layer's weights never
    writes a line holding another layer's, which the other workers may be reading at that moment.
    """

    def __init__(self, layers, slopes, names, kinds, shapes, dtype, batch, act_size, argmax_size):
        self.layers = layers
        self.slopes = slopes
        self.names = names                      # dotted parameter names, in table order
        self.kinds = kinds                      # ("conv",), ("linear", input permutation or None), ("bias",)
        self.shapes = shapes                    # in the fused layout
        per_line = max(1, CACHE_LINE // np.dtype(dtype).itemsize)
        self.p_span = np.zeros((max(len(shapes), 1), 2), dtype=np.int64)
        self.p_shape = np.zeros((max(len(shapes), 1), 4), dtype=np.int64)
        end = 0
        for j, s in enumerate(shapes):
            start = -(-end // per_line) * per_line
            end = start + int(np.prod(s))
            self.p_span[j] = start, end
            self.p_shape[j, :len(s)] = s
        self.params = line_aligned_zeros(end, dtype)
        self.velocity = line_aligned_zeros(end, dtype)
        self.started = line_aligned_zeros(max(len(shapes), 1), np.uint8)
        self.batch = batch
        self.act_size = act_size
        self.argmax_size = argmax_size

    @classmethod
    def from_model(cls, model, loss, sample_shape, batch):
        if not isinstance(loss, nn.CrossEntropyLoss):
            raise NotFusable(f"the fused step computes softmax cross-entropy; received {describe(loss)}")
        leaves = _chain_leaves(model)
        if not leaves:
            raise NotFusable("the model has no layers")
        dtype = next((p.dtype for _, p, _ in model.parameters()), np.dtype(np.float32))
        shape = tuple(int(s) for s in sample_shape)
        if len(shape) != 3:
            raise NotFusable(f"the fused step takes (C, H, W) samples; received sample shape {shape}")
        rows, slopes, names, kinds, shapes = [], [], [], [], []
        perm = None     # set by a Flatten of (C, H, W): the fused order (H, W, C) differs from PyTorch's
        in_off, act_off = 0, batch * int(np.prod(shape))
        argmax_off = 0
        for prefix, layer in leaves:
            try:
                make = registry.kind_of(layer).resolve("fused")
            except ValueError:      # a layer class of the user's, without a registry entry
                make = None
            if make is None:
                raise NotFusable(f"layer {prefix.rstrip('.') or 'model'} ({describe(layer)}) has no fused version")
            op = make(layer, shape)
            if not op.row:
                if len(shape) == 3 and shape[1] * shape[2] > 1:
                    perm = np.arange(int(np.prod(shape))).reshape(shape).transpose(1, 2, 0).ravel()
                shape = op.out
                continue                            # same memory, no row
            row = dict.fromkeys(LAYER_COLUMNS, 0)
            row.update(w_param=-1, b_param=-1, kh=1, kw=1, sh=1, sw=1, dh=1, dw=1, need_dx=int(bool(rows)))
            row.update(op.fields)
            if op.switches:
                row["aux_off"] = argmax_off
                argmax_off += batch * int(np.prod(op.out))
            extra = sorted(set(layer.params) - set(op.layout))
            if extra:
                raise NotFusable(f"layer {prefix} has parameters {extra} the fused step does not know")
            for key, layout in op.layout.items():
                if key not in layer.params:
                    continue
                p = layer.params[key]
                if p.dtype != dtype:
                    raise NotFusable(f"parameters of mixed dtypes ({p.dtype} and {dtype})")
                row["w_param" if key == "weight" else "b_param"] = len(names)
                names.append(prefix + key)
                if layout == "bias":
                    kinds.append(("bias",))
                    shapes.append(tuple(p.shape))
                elif layout == "conv":
                    kinds.append(("conv",))
                    shapes.append(tuple(p.shape[i] for i in (2, 3, 1, 0)))
                else:
                    kinds.append(("linear", perm))
                    shapes.append(tuple(p.shape[::-1]))
            if "linear" in op.layout.values():
                perm = None
            new = op.out
            full_in = shape + (1,) * (3 - len(shape))
            full_out = new + (1,) * (3 - len(new))
            row.update(in_off=in_off, out_off=act_off, in_c=full_in[0], in_h=full_in[1], in_w=full_in[2],
                       out_c=full_out[0], out_h=full_out[1], out_w=full_out[2])
            rows.append([row[k] for k in LAYER_COLUMNS])
            slopes.append(op.slope)
            in_off = act_off
            act_off += batch * int(np.prod(new))
            shape = new
        if not rows:
            raise NotFusable("the model has no layer with a fused version")
        if len(shape) != 1:
            raise NotFusable(f"the model's output per sample has shape {shape}; the fused step needs logits (K,)")
        net = cls(np.array(rows, dtype=np.int64), np.array(slopes, dtype=np.float64), names, kinds, shapes, dtype,
                  batch, act_off, max(argmax_off, 1))
        net.load_from(model)
        return net

    @property
    def classes(self):
        """K: the number of logits per sample."""
        row = self.layers[-1]
        return int(row[_OC] * row[_OH] * row[_OW])

    def param_view(self, j, flat=None):
        """Parameter j's slot of `flat` (default: the shared weights; or the velocity, a worker's grad) in its fused shape."""
        flat = self.params if flat is None else flat
        return flat[self.p_span[j, 0]:self.p_span[j, 1]].reshape(self.shapes[j])

    def to_fused(self, j, array):
        """Parameter j from PyTorch's layout to the fused one."""
        kind = self.kinds[j]
        if kind[0] == "conv":
            return array.transpose(2, 3, 1, 0)              # (K, C, R, S) -> (R, S, C, K)
        if kind[0] == "linear":
            return array.T if kind[1] is None else array.T[kind[1]]   # (O, I) -> (I, O)
        return array

    def from_fused(self, j, array):
        """Parameter j from the fused layout back to PyTorch's."""
        kind = self.kinds[j]
        if kind[0] == "conv":
            return array.transpose(3, 2, 0, 1)
        if kind[0] == "linear":
            if kind[1] is None:
                return array.T
            out = np.empty(array.shape[::-1], dtype=array.dtype)
            out[:, kind[1]] = array.T
            return out
        return array

    def load_from(self, model):
        """Copy the model's parameters into the shared flat buffer."""
        found = {name: p for name, p, _ in model.parameters()}
        for j, name in enumerate(self.names):
            self.param_view(j)[...] = self.to_fused(j, found[name])

    def store_to(self, model):
        """Copy the shared flat weights back into the model's arrays (in place)."""
        found = {name: p for name, p, _ in model.parameters()}
        for j, name in enumerate(self.names):
            found[name][...] = self.from_fused(j, self.param_view(j))

    def velocity_to(self, name):
        """The shared momentum buffer of one parameter, in PyTorch's layout (a copy)."""
        j = self.names.index(name)
        return self.from_fused(j, self.param_view(j, self.velocity)).copy()

    @staticmethod
    def prepare_inputs(x):
        """x: (N, C, H, W) -> the channels-last copy (N, H, W, C) that train_chunk reads."""
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    def workspace(self):
        """One worker's private buffers: (act, dact, grad, argmax, seen), each on cache lines of its own
        (`hpcnn.chaos.kernels` describes them)."""
        dtype = self.params.dtype
        return (line_aligned_zeros(self.act_size, dtype), line_aligned_zeros(self.act_size, dtype),
                line_aligned_zeros(self.params.size, dtype), line_aligned_zeros(self.argmax_size, np.int64),
                line_aligned_zeros(self.params.size, dtype))
