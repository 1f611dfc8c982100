"""Batch normalization over (N, *spatial) per channel, with PyTorch's running statistics."""
from .. import kernels
from ..backend import array_module
from .init import check_dtype, constant, resolve_dtype
from .module import Module
from .work import pointwise_spec

__all__ = ["BatchNorm2d", "BatchNorm3d", "batchnorm_work"]


class _BatchNormNd(Module):
    nd = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, rng=None, dtype=None):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"{type(self).__name__}: num_features must be positive, received {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must lie in [0, 1], received {momentum}")
        del rng  # gamma=1, beta=0 draw nothing; accepted so that every layer takes the same arguments
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        dtype = resolve_dtype(dtype)
        if self.affine:
            self._add_param("weight", constant((self.num_features,), 1.0, dtype))
            self._add_param("bias", constant((self.num_features,), 0.0, dtype))
        self.running_mean = constant((self.num_features,), 0.0, dtype)
        self.running_var = constant((self.num_features,), 1.0, dtype)
        self.x = self.mean = self.invstd = None
        self.count = 0
        self.batch_statistics = False

    def _state_names(self):
        return ("running_mean", "running_var")

    def _gamma_beta(self, xp):
        if self.affine:
            return self.params["weight"], self.params["bias"]
        dtype = self.running_mean.dtype
        return xp.ones(self.num_features, dtype), xp.zeros(self.num_features, dtype)

    def forward(self, x):
        """x: (N, C, *S) -> y: same shape. Training: batch statistics, running stats updated; eval: running stats."""
        self.check_input(x, ndim=self.nd + 2, channels=self.num_features)
        check_dtype(self.describe(), x, self.running_mean.dtype)
        xp = array_module(x)
        count = x.size // self.num_features
        if self.training:
            if count < 2:
                raise ValueError(f"{self.describe()}: training needs more than one value per channel, "
                                 f"received shape {tuple(x.shape)}")
            mean = kernels.channel_sum(x) / count
            var = kernels.channel_centered_sumsq(x, mean) / count
            self.update_running_stats(mean, var, count)
        else:
            mean = self.running_mean.astype(xp.float64)
            var = self.running_var.astype(xp.float64)
        invstd = 1.0 / xp.sqrt(var + self.eps)
        self.x, self.count, self.batch_statistics = x, count, self.training
        self.mean, self.invstd = mean.astype(x.dtype), invstd.astype(x.dtype)
        gamma, beta = self._gamma_beta(xp)
        return kernels.batchnorm_apply(x, self.mean, self.invstd, gamma, beta)

    def update_running_stats(self, mean, var, count):
        """PyTorch's rule: an exponential average of the batch mean and of the unbiased batch variance.

        mean, var: (C,) biased batch statistics over `count` values per channel. Updated in place so
        that replicas (which share state with the original) see one set of statistics.
        """
        m = self.momentum
        self.running_mean[...] = (1 - m) * self.running_mean + m * mean
        self.running_var[...] = (1 - m) * self.running_var + m * var * (count / (count - 1))

    def backward(self, dy):
        """dy: (N, C, *S) -> dx: same shape; grads weight, bias: (C,)."""
        xp = array_module(dy)
        gamma, _ = self._gamma_beta(xp)
        sum_dy, sum_dy_xhat = kernels.batchnorm_backward_reduce(dy, self.x, self.mean, self.invstd)
        if self.affine:
            self.grads["weight"][...] = sum_dy_xhat
            self.grads["bias"][...] = sum_dy
        if self.batch_statistics:
            return kernels.batchnorm_backward_apply(dy, self.x, self.mean, self.invstd, gamma, sum_dy,
                                                    sum_dy_xhat, self.count)
        # Eval mode: the statistics are constants, so y is affine in x and dx = dy * gamma * invstd.
        zeros = xp.zeros(self.num_features, dy.dtype)
        return kernels.batchnorm_apply(dy, zeros, self.invstd, gamma, zeros)

    def describe(self):
        extra = "" if self.affine else ", affine=False"
        defaults = (self.eps == 1e-5 and self.momentum == 0.1)
        if not defaults:
            extra = f", eps={self.eps:g}, momentum={self.momentum:g}" + extra
        return f"{type(self).__name__}({self.num_features}{extra})"


class BatchNorm2d(_BatchNormNd):
    """Batch norm over (N, H, W) per channel.

    Parameters (affine=True): weight (C,) = gamma, bias (C,) = beta. State: running_mean (C,),
    running_var (C,). x: (N, C, H, W) -> y: (N, C, H, W).
    """
    nd = 2


class BatchNorm3d(_BatchNormNd):
    """Batch norm over (N, D, H, W) per channel.

    Parameters (affine=True): weight (C,) = gamma, bias (C,) = beta. State: running_mean (C,),
    running_var (C,). x: (N, C, D, H, W) -> y: (N, C, D, H, W).
    """
    nd = 3



def batchnorm_work(layer, name, shape):
    """The LayerSpec of batch-norm `layer` on a global input `shape` (N, C, *S)."""
    if len(shape) != layer.nd + 2 or shape[1] != layer.num_features:
        raise ValueError(f"layer {name!r}: {layer.describe()} expects {layer.num_features} channels on a "
                         f"{layer.nd + 2}-D input, receives shape {tuple(shape)}")
    return pointwise_spec(name, "batchnorm", layer, shape, 8.0)
