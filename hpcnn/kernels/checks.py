"""Argument checks and shape computations shared by the CPU and GPU kernels (no array-module specifics)."""
from math import prod

from ..backend import check_float_array
from ..geometry import WindowGeometry, as_tuple, window_output_size

__all__ = [
    "spatial_dims", "check_same_shape", "VolumeWindow", "check_filter", "check_filter_outputs", "check_bias",
    "check_batch", "checked_conv_output", "pool_geometry", "pool_backward_spatial", "check_dy_shape",
    "check_argmax", "check_channels_input", "check_per_channel", "check_count", "check_logits",
    "check_labels", "check_label_range", "interleaved_shape", "upsample_scale", "upsample_input_spatial",
]


def spatial_dims(a, where):
    """The number of spatial dimensions (2 or 3) of a float array a: (N, C, *S)."""
    check_float_array(a, where, ndim=(4, 5))
    return a.ndim - 2


def check_same_shape(a, name, other, other_name, where):
    """Refuse `a` unless it has `other`'s shape (the messages name them `name` and `other_name`)."""
    if tuple(a.shape) != tuple(other.shape):
        raise ValueError(f"{where}: {name} has shape {tuple(a.shape)}, expected {other_name}'s shape "
                         f"{tuple(other.shape)}")


# --- convolution -----------------------------------------------------------------------------

class VolumeWindow:
    """Geometry of a correlation over 3 spatial dimensions (2-D data has depth 1).

    Output index o reads input index o*stride - lo + r*dilation. `lo` may be negative
    (backward-data reads dy with padding d*(R-1) - lo), which im2col treats as cropping.
    """

    __slots__ = ("kernel", "stride", "dilation", "lo")

    def __init__(self, kernel, stride, dilation, lo):
        self.kernel, self.stride, self.dilation, self.lo = kernel, stride, dilation, lo

    @classmethod
    def of(cls, nd, kernel, stride, padding, dilation):
        """The window of a layer's geometry, and its per-side padding as (lo, hi) per dimension."""
        g = WindowGeometry(nd, kernel, stride, padding, dilation)
        fill = 3 - nd
        win = cls((1,) * fill + g.kernel, (1,) * fill + g.stride, (1,) * fill + g.dilation,
                  (0,) * fill + tuple(lo for lo, _ in g.padding))
        return win, ((0, 0),) * fill + g.padding

    @property
    def size(self):
        return prod(self.kernel)

    @property
    def is_pointwise(self):
        """A 1x1 window with stride 1 and no padding before: with no padding after either (see `pointwise_on`),
        the output is a GEMM of x as it is."""
        return self.size == 1 and self.stride == (1, 1, 1) and self.lo == (0, 0, 0)

    def pointwise_on(self, in_spatial, out_spatial):
        """True when the output is a GEMM of the input as it is: a pointwise window whose output has the
        input's shape (padding after the input, which `lo` does not show, makes the output larger)."""
        return self.is_pointwise and tuple(in_spatial) == tuple(out_spatial)

    def output_shape(self, spatial3, padding):
        """The (D, H, W) output shape for a (D, H, W) input with per-side padding ((lo, hi),) * 3."""
        return tuple(window_output_size(s, r, st, d, lo, hi) for s, r, st, d, (lo, hi)
                     in zip(spatial3, self.kernel, self.stride, self.dilation, padding))


def check_filter(w, nd, channels, where):
    """Refuse a filter unless w: (K, channels, *R) with nd kernel dimensions."""
    if w.ndim != nd + 2 or w.shape[1] != channels:
        raise ValueError(f"{where}: filter of shape {tuple(w.shape)} does not match {channels} input channels "
                         f"and {nd} spatial dimensions (expected (K, {channels}, *kernel))")


def check_filter_outputs(dy, w, where):
    """Refuse dy: (N, K, *O) unless K is the filter w: (K, C, *R)'s output count."""
    if w.shape[0] != dy.shape[1]:
        raise ValueError(f"{where}: dy has {dy.shape[1]} channels, the filter {w.shape[0]} outputs")


def check_bias(bias, channels, where):
    """Refuse a bias unless bias: (channels,)."""
    if bias.shape != (channels,):
        raise ValueError(f"{where}: bias of shape {bias.shape}, expected ({channels},)")


def check_batch(x, dy, nd, where):
    """Refuse dy unless it is a float array with nd spatial dimensions and x's batch size."""
    check_float_array(dy, where, ndim=nd + 2)
    if dy.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: x has batch {x.shape[0]}, dy {dy.shape[0]}")


def checked_conv_output(dy, nd, x_spatial, win, padding, where):
    """The 3-D input and output shapes (spatial3, out3) that x_spatial gives; out3 must be dy's spatial shape."""
    x_spatial = tuple(int(s) for s in x_spatial)
    if len(x_spatial) != nd:
        raise ValueError(f"{where}: x_spatial {x_spatial} must have {nd} entries")
    spatial3 = (1,) * (3 - nd) + x_spatial
    out = win.output_shape(spatial3, padding)
    if out[3 - nd:] != tuple(dy.shape[2:]):
        raise ValueError(f"{where}: dy of spatial shape {tuple(dy.shape[2:])} does not match input {x_spatial} "
                         f"with {win.kernel[3 - nd:]} kernel, stride {win.stride[3 - nd:]}, padding "
                         f"{padding[3 - nd:]}, dilation {win.dilation[3 - nd:]} (expected {out[3 - nd:]})")
    return spatial3, out


# --- pooling ---------------------------------------------------------------------------------

def pool_geometry(nd, kernel, stride, padding, dilation=1):
    """The WindowGeometry of a pooling layer."""
    # PyTorch's pooling default: stride = kernel size.
    return WindowGeometry(nd, kernel, kernel if stride is None else stride, padding, dilation)


def pool_backward_spatial(dy, x_spatial, where):
    """(nd, x_spatial as a tuple of ints) for a pooling gradient dy: (N, C, *O)."""
    nd = spatial_dims(dy, where)
    x_spatial = tuple(int(s) for s in x_spatial)
    if len(x_spatial) != nd:
        raise ValueError(f"{where}: x_spatial {x_spatial} has {len(x_spatial)} dimensions, "
                         f"dy of shape {tuple(dy.shape)} has {nd}")
    return nd, x_spatial


def check_dy_shape(dy, expected_spatial, where):
    """Refuse dy: (N, C, *O) unless O is expected_spatial."""
    expected = tuple(dy.shape[:2]) + tuple(expected_spatial)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{where}: dy has shape {tuple(dy.shape)}, expected {expected}")


def check_argmax(argmax, dy, where):
    """Refuse a max-pooling argmax unless it has dy's shape."""
    if tuple(argmax.shape) != tuple(dy.shape):
        raise ValueError(f"{where}: argmax has shape {tuple(argmax.shape)}, expected dy's shape "
                         f"{tuple(dy.shape)}")


# --- batch norm ------------------------------------------------------------------------------

def check_channels_input(x, where):
    """Refuse anything but a float array x: (N, C, *S)."""
    check_float_array(x, where)
    if x.ndim < 2:
        raise ValueError(f"{where}: expected an input of shape (N, C, ...), received shape {tuple(x.shape)}")


def check_per_channel(v, channels, name, where):
    """Refuse a per-channel vector unless v: (channels,)."""
    if v.shape != (channels,):
        raise ValueError(f"{where}: {name} has shape {v.shape}, expected ({channels},)")


def check_count(count, where):
    """Refuse a non-positive element count."""
    if count <= 0:
        raise ValueError(f"{where}: count must be positive, received {count}")


# --- losses ----------------------------------------------------------------------------------

def check_logits(logits, where):
    """Refuse anything but float logits: (N, C) or (N, C, *S)."""
    check_float_array(logits, where)
    if logits.ndim < 2:
        raise ValueError(f"{where}: expected logits of shape (N, C) or (N, C, *S), received {tuple(logits.shape)}")


def check_labels(labels, logits, where):
    """Refuse labels (an array) unless they are integers of shape (N,) or (N, *S) for logits: (N, C, *S)."""
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"{where}: labels have shape {tuple(labels.shape)}, expected {expected} "
                         f"for logits of shape {tuple(logits.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, received dtype {labels.dtype}")


def check_label_range(labels, classes, ignore_index, where):
    """Refuse a label outside [0, classes) other than ignore_index; returns the mask of kept labels."""
    kept = labels != ignore_index
    bad = labels[kept & ((labels < 0) | (labels >= classes))]
    if bad.size:
        raise ValueError(f"{where}: label {int(bad[0])} is out of range: expected 0..{classes - 1} "
                         f"or ignore_index {ignore_index}")
    return kept


# --- upsampling ------------------------------------------------------------------------------

def interleaved_shape(shape, spatial, scale):
    """(N, C, S0, f0, S1, f1, ...): each spatial axis followed by its scale-factor axis."""
    out = tuple(shape[:2])
    for s, f in zip(spatial, scale):
        out += (s, f)
    return out


def upsample_scale(a, scale, where):
    """(nd, scale as nd ints) for a float array a: (N, C, *S)."""
    nd = spatial_dims(a, where)
    return nd, as_tuple(scale, nd, "scale")


def upsample_input_spatial(dy, scale, where):
    """The input spatial shape S of an upsampling gradient dy: (N, C, *(S * scale))."""
    if any(s % f for s, f in zip(dy.shape[2:], scale)):
        raise ValueError(f"{where}: dy has shape {tuple(dy.shape)}, whose spatial sizes are not multiples "
                         f"of the scale {scale}")
    return tuple(s // f for s, f in zip(dy.shape[2:], scale))
