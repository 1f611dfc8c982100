"""What a layer computes on a global input: the description that the performance model prices.

A `LayerSpec` holds global shapes ((N, C, *S) for activations, (N, F) after flatten or global
pooling), the window geometry, parameter sizes, forward flops and what the layer keeps for
backward. Each layer kind's entry in `hpcnn.nn.registry` names the function that builds it
(`LayerKind.work(layer, name, in_shape)`); perfmodel turns it into seconds and bytes.
"""
import math
from dataclasses import dataclass, field

__all__ = ["LayerSpec", "param_sizes", "window_spec", "pointwise_spec"]


@dataclass
class LayerSpec:
    """One leaf layer. in_shape/out_shape: global (N, C, *S) or (N, F); geometry: WindowGeometry or None.

    param_sizes: element counts of each parameter array; flops: forward multiply-adds x 2;
    keeps_input: the layer holds its input until backward; keeps_output: some layer (this one or
    the next) holds this layer's output until backward (set by the model walk).
    """
    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    geometry: object = None
    param_sizes: tuple = ()
    flops: float = 0.0
    options: dict = field(default_factory=dict)
    keeps_output: bool = False

    @property
    def params(self):
        return sum(self.param_sizes)

    @property
    def nd(self):
        return max(len(self.in_shape) - 2, 0)

    def signature(self):
        """What the cost of this layer depends on (for caching)."""
        g = self.geometry
        geo = None if g is None else (g.kernel, g.stride, g.dilation, g.padding)
        return (self.kind, self.in_shape, self.out_shape, geo, self.param_sizes, self.keeps_output,
                tuple(sorted(self.options.items())))


def param_sizes(layer):
    """Element counts of each of `layer`'s parameter arrays, in order."""
    return tuple(int(p.size) for p in layer.params.values())


def window_spec(name, kind, layer, shape, channels_out, flops_per_output):
    """The LayerSpec of a window layer (convolution or pooling) with `layer.geometry` on input `shape`."""
    out = (shape[0], channels_out) + tuple(layer.geometry.output_shape(shape[2:]))
    if any(o < 1 for o in out[2:]):
        raise ValueError(f"layer {name!r} ({layer.describe()}): input {shape} is too small for its window "
                         f"{layer.geometry}")
    return LayerSpec(name, kind, tuple(shape), out, layer.geometry, param_sizes(layer),
                     float(math.prod(out)) * flops_per_output)


def pointwise_spec(name, kind, layer, shape, flops_per_element):
    """The LayerSpec of a layer whose output has its input's shape."""
    return LayerSpec(name, kind, tuple(shape), tuple(shape), None, param_sizes(layer),
                     flops_per_element * math.prod(shape))
