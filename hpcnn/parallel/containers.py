"""Distributed containers: Sequential chains, Residual blocks and U-Net skips over distributed children.

Each container runs its distributed children; where a branch's output arrives under another
distribution than its partner's it is shuffled, so both operands of every add and concatenation
share one distribution (the rule the planner costs).
"""
from ..backend import array_module
from .module import DistModule, arrive
from .tensor import DistTensor

__all__ = ["DistSequential", "DistResidual", "DistSkipConcat"]


class DistSequential(DistModule):
    """The children in order; backward in reverse."""

    def forward(self, t):
        for child in self.children:
            t = child.forward(t)
        return t

    def backward(self, g):
        for child in reversed(self.children):
            g = child.backward(g)
        return g


class DistResidual(DistModule):
    """body(x) + shortcut(x); the shortcut's output joins the body's distribution. children: [body] or
    [body, shortcut]."""

    def __init__(self, layer, d, context, name="", children=()):
        super().__init__(layer, d, context, name, children)
        self.body = self.children[0]
        self.shortcut = self.children[1] if len(self.children) > 1 else None
        self._shuffles = {}

    def forward(self, t):
        y = self.body.forward(t)
        s = t if self.shortcut is None else self.shortcut.forward(t)
        if y.global_shape != s.global_shape:
            raise ValueError(f"{self.layer.describe()}: the body gives global shape {y.global_shape} but the "
                             f"shortcut gives {s.global_shape}")
        s, self._moved = arrive(s, y.distribution, self._shuffles)
        return y.like(y.local + s.local)

    def backward(self, g):
        dx = self.body.backward(g)
        ds = g if self._moved is None else self._moved.backward(g)
        if self.shortcut is not None:
            ds = self.shortcut.backward(ds)
        ds, _ = arrive(ds, dx.distribution, self._shuffles)
        return dx.like(dx.local + ds.local)


class DistSkipConcat(DistModule):
    """concat([x, inner(x)], axis=1) under x's distribution. children: [inner].

    On a channel split the two operands' channel blocks are not the blocks of their concatenation: both
    move to the distribution that keeps every channel (`Distribution.channels_whole`), are concatenated
    there, and the result moves back to x's distribution."""

    def __init__(self, layer, d, context, name="", children=()):
        super().__init__(layer, d, context, name, children)
        self.inner = self.children[0]
        self._shuffles = {}

    def forward(self, t):
        z = self.inner.forward(t)
        if z.global_shape[0] != t.global_shape[0] or z.global_shape[2:] != t.global_shape[2:]:
            raise ValueError(f"{self.layer.describe()}: the inner branch gives global shape {z.global_shape} for "
                             f"input {t.global_shape}; batch and spatial sizes must match")
        z, self._moved = arrive(z, t.distribution, self._shuffles)
        self._c = t.global_shape[1]
        out_global = t.global_shape[:1] + (t.global_shape[1] + z.global_shape[1],) + t.global_shape[2:]
        whole = t.distribution.channels_whole()
        tw, self._t_whole = arrive(t, whole, self._shuffles)
        zw, self._z_whole = arrive(z, whole, self._shuffles)
        y = DistTensor(array_module(t.local).concatenate([tw.local, zw.local], axis=1), whole, out_global)
        y, self._y_back = arrive(y, t.distribution, self._shuffles)
        return y

    def backward(self, g):
        c = self._c
        gw = g if self._y_back is None else self._y_back.backward(g)
        xp = array_module(gw.local)
        dz_global = gw.global_shape[:1] + (gw.global_shape[1] - c,) + gw.global_shape[2:]
        dx_global = gw.global_shape[:1] + (c,) + gw.global_shape[2:]
        dz = DistTensor(xp.ascontiguousarray(gw.local[:, c:]), gw.distribution, dz_global)
        direct = DistTensor(xp.ascontiguousarray(gw.local[:, :c]), gw.distribution, dx_global)
        if self._z_whole is not None:
            dz, direct = self._z_whole.backward(dz), self._t_whole.backward(direct)
        if self._moved is not None:
            dz = self._moved.backward(dz)
        dx = self.inner.backward(dz)
        dx, _ = arrive(dx, g.distribution, self._shuffles)
        return dx.like(dx.local + direct.local)
