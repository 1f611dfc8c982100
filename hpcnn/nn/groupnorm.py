"""Group normalization (PyTorch's GroupNorm): statistics per sample over groups of channels and all of space."""


from .. import kernels
from ..backend import array_module
from .init import check_dtype, constant, resolve_dtype
from .module import Module
from .work import pointwise_spec

__all__ = ["GroupNorm", "groupnorm_work"]


class GroupNorm(Module):
    """GroupNorm(num_groups, num_channels, eps=1e-5, affine=True), as PyTorch's: the same in training and
    evaluation (no running statistics).

    Parameters (affine=True): weight (C,), bias (C,). x: (N, C, H, W) or (N, C, D, H, W) -> y: same shape,
    y = (x - mean) / sqrt(var + eps) * weight + bias with the mean and biased variance of each sample's
    group of C / num_groups channels over every spatial position.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, rng=None, dtype=None):
        super().__init__()
        if num_groups < 1 or num_channels < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels must be a positive multiple of num_groups, received "
                             f"num_groups={num_groups}, num_channels={num_channels}")
        del rng  # weight=1, bias=0 draw nothing; accepted so that every layer takes the same arguments
        self.num_groups, self.num_channels = int(num_groups), int(num_channels)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.dtype = resolve_dtype(dtype)
        if self.affine:
            self._add_param("weight", constant((self.num_channels,), 1.0, self.dtype))
            self._add_param("bias", constant((self.num_channels,), 0.0, self.dtype))
        self.x = self.mean = self.invstd = None
        self.count = 0

    def _affine(self):
        return (self.params["weight"], self.params["bias"]) if self.affine else (None, None)

    def check(self, x):
        self.check_input(x, ndim=(4, 5), channels=self.num_channels)
        if self.affine:
            check_dtype(self.describe(), x, self.params["weight"].dtype)

    def normalize(self, x, count, sums, m2):
        """y from the statistics of x's groups: `count` elements per group, float64 (N, G) sums and sums of squares
        about the mean (over the whole group, which other ranks may hold parts of); keeps what backward needs."""
        xp = array_module(x)
        if count < 1:
            raise ValueError(f"{self.describe()}: a group holds no values, received shape {tuple(x.shape)}")
        mean = sums / count
        invstd = 1.0 / xp.sqrt(m2 / count + self.eps)
        self.x, self.count = x, count
        self.mean, self.invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
        weight, bias = self._affine()
        return kernels.group_norm_apply(x, self.num_groups, self.mean, self.invstd, weight, bias)

    def backward_sums(self, dy):
        """(sum_g, sum_g_xhat) of this block, (N, G) float64, after filling the affine gradients with its part."""
        weight, _ = self._affine()
        sum_g, sum_g_xhat, dw, db = kernels.group_norm_backward_reduce(dy, self.x, self.num_groups, self.mean,
                                                                       self.invstd, weight)
        if self.affine:
            self.grads["weight"][...] = dw
            self.grads["bias"][...] = db
        return sum_g, sum_g_xhat

    def backward_apply(self, dy, sum_g, sum_g_xhat):
        weight, _ = self._affine()
        return kernels.group_norm_backward_apply(dy, self.x, self.num_groups, self.mean, self.invstd, weight,
                                                 sum_g, sum_g_xhat, self.count)

    def forward(self, x):
        self.check(x)
        count, sums, m2 = kernels.group_moments(x, self.num_groups)
        return self.normalize(x, count, sums, m2)

    def backward(self, dy):
        return self.backward_apply(dy, *self.backward_sums(dy))

    def describe(self):
        extra = "" if self.affine else ", affine=False"
        eps = "" if self.eps == 1e-5 else f", eps={self.eps}"
        return f"GroupNorm({self.num_groups}, {self.num_channels}{eps}{extra})"


def groupnorm_work(layer, name, shape):
    """The LayerSpec of GroupNorm `layer` on a global input `shape` (N, C, *S)."""
    if len(shape) not in (4, 5) or shape[1] != layer.num_channels:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects {layer.num_channels} channels on a 4-D or "
                         f"5-D input, receives shape {tuple(shape)}")
    spec = pointwise_spec(name, "groupnorm", layer, shape, 8.0)
    spec.options["groups"] = layer.num_groups
    return spec



