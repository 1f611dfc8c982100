"""Window geometry shared by every kernel and by the halo code: argument normalization and output sizes.

A window operation (convolution or pooling) over `nd` spatial dimensions is described by
per-dimension kernel size R, stride s, dilation d and padding (lo, hi). Along one dimension of
input size S the output size is

    O = (S + lo + hi - d * (R - 1) - 1) // s + 1

and output index o reads the input indices  o*s - lo + r*d  for r = 0..R-1.
"""

__all__ = ["as_tuple", "normalize_padding", "window_output_size", "WindowGeometry"]


def as_tuple(value, nd, name):
    """An int or a sequence of `nd` ints as a tuple of `nd` positive ints."""
    if isinstance(value, int):
        out = (value,) * nd
    else:
        out = tuple(int(v) for v in value)
    if len(out) != nd:
        raise ValueError(f"{name}: expected an int or {nd} ints, received {value!r}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name}: every entry must be at least 1, received {value!r}")
    return out


def normalize_padding(padding, nd, kernel=None, stride=None, dilation=None):
    """Padding as a tuple of (lo, hi) per spatial dimension.

    `padding` is an int, 'same', 'valid', a sequence of `nd` ints (symmetric), or a sequence of
    `nd` (lo, hi) pairs. 'same' follows PyTorch: stride 1 only, total d*(R-1) per dimension, the
    smaller half before.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding != "same":
            raise ValueError(f"padding: expected an int, 'same', 'valid' or per-dimension values, received {padding!r}")
        if kernel is None:
            raise ValueError("padding='same' needs the kernel size")
        if stride is not None and any(s != 1 for s in stride):
            raise ValueError(f"padding='same' is only defined for stride 1, received stride {stride}")
        dilation = dilation or (1,) * nd
        out = []
        for r, d in zip(kernel, dilation):
            total = d * (r - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        if padding < 0:
            raise ValueError(f"padding must be non-negative, received {padding}")
        return ((padding, padding),) * nd
    padding = tuple(padding)
    if len(padding) != nd:
        raise ValueError(f"padding: expected {nd} entries, received {padding!r}")
    out = []
    for p in padding:
        lo, hi = (p, p) if isinstance(p, int) else tuple(int(v) for v in p)
        if lo < 0 or hi < 0:
            raise ValueError(f"padding must be non-negative, received {padding!r}")
        out.append((int(lo), int(hi)))
    return tuple(out)


def window_output_size(size, kernel, stride, dilation, pad_lo, pad_hi):
    """Output length along one dimension (see the module docstring); 0 when the window does not fit."""
    span = dilation * (kernel - 1) + 1
    n = size + pad_lo + pad_hi - span
    return n // stride + 1 if n >= 0 else 0


class WindowGeometry:
    """Normalized geometry of a window operation over `nd` spatial dimensions."""

    __slots__ = ("nd", "kernel", "stride", "dilation", "padding")

    def __init__(self, nd, kernel, stride=1, padding=0, dilation=1):
        self.nd = nd
        self.kernel = as_tuple(kernel, nd, "kernel_size")
        self.stride = as_tuple(stride, nd, "stride")
        self.dilation = as_tuple(dilation, nd, "dilation")
        self.padding = normalize_padding(padding, nd, self.kernel, self.stride, self.dilation)

    def output_shape(self, spatial):
        """Output spatial shape for an input spatial shape."""
        return tuple(window_output_size(s, r, st, d, lo, hi) for s, r, st, d, (lo, hi)
                     in zip(spatial, self.kernel, self.stride, self.dilation, self.padding))

    def __repr__(self):
        return (f"WindowGeometry(kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation})")
