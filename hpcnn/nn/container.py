"""Containers: Sequential chains, Residual (y = body(x) + shortcut(x)) and SkipConcat (U-Net skips)."""
from ..backend import array_module
from .module import Module

__all__ = ["Sequential", "Residual", "SkipConcat"]


def _check_module(owner, m):
    if not isinstance(m, Module):
        raise ValueError(f"{owner}: expected hpcnn.nn modules, received {type(m).__name__}")
    return m


class Sequential(Module):
    """Layers applied in order. Sequential(a, b, c) names them "0", "1", "2"; Sequential(("stem", a), ...)
    takes explicit names (they become the prefixes of the parameter names).

    x -> layers[-1](... layers[0](x)); backward runs the children in reverse and fires each one's
    gradient hook as soon as its gradients are ready.
    """

    def __init__(self, *layers):
        super().__init__()
        self.layers = []
        self.layer_names = []
        for i, item in enumerate(layers):
            if isinstance(item, tuple):
                name, layer = item
            else:
                name, layer = str(i), item
            if name in self.layer_names or not name or "." in name:
                raise ValueError(f"Sequential: layer names must be unique, non-empty and without dots, "
                                 f"received {name!r}")
            self.layer_names.append(str(name))
            self.layers.append(_check_module("Sequential", layer))

    def children(self):
        return list(zip(self.layer_names, self.layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward_and_notify(dy)
        return dy

    def _replicate_children(self, original):
        self.layers = [layer.replicate() for layer in original.layers]
        self.layer_names = list(original.layer_names)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.layers[self.layer_names.index(key)]
        return self.layers[key]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def describe(self):
        return f"Sequential({len(self.layers)} layers)"

    def __repr__(self):
        lines = [f"  ({name}): " + repr(layer).replace("\n", "\n  ") for name, layer in self.children()]
        return "Sequential(\n" + "\n".join(lines) + "\n)"


class Residual(Module):
    """y = body(x) + shortcut(x), with the identity as shortcut when it is None (a ResNet block without the
    final activation).

    x: (N, C, *S) -> y: the shape of body(x), which must equal that of shortcut(x).
    """

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = _check_module("Residual", body)
        self.shortcut = None if shortcut is None else _check_module("Residual", shortcut)

    def children(self):
        out = [("body", self.body)]
        if self.shortcut is not None:
            out.append(("shortcut", self.shortcut))
        return out

    def forward(self, x):
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        if y.shape != s.shape:
            raise ValueError(f"{self.describe()}: the body gives shape {tuple(y.shape)} but the shortcut gives "
                             f"{tuple(s.shape)} (input shape {tuple(x.shape)})")
        return y + s

    def backward(self, dy):
        dx = self.body.backward_and_notify(dy)
        if self.shortcut is None:
            return dx + dy
        return dx + self.shortcut.backward_and_notify(dy)

    def _replicate_children(self, original):
        self.body = original.body.replicate()
        self.shortcut = None if original.shortcut is None else original.shortcut.replicate()

    def describe(self):
        return "Residual(body, " + ("identity" if self.shortcut is None else "shortcut") + ")"

    def __repr__(self):
        parts = ["  (body): " + repr(self.body).replace("\n", "\n  ")]
        if self.shortcut is not None:
            parts.append("  (shortcut): " + repr(self.shortcut).replace("\n", "\n  "))
        return "Residual(\n" + "\n".join(parts) + "\n)"


class SkipConcat(Module):
    """y = concat([x, inner(x)], axis=1): the skip connection of a U-Net level.

    x: (N, C, *S) -> y: (N, C + C_inner, *S); inner(x) must keep the spatial shape S.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = _check_module("SkipConcat", inner)
        self.channels = None

    def children(self):
        return [("inner", self.inner)]

    def forward(self, x):
        self.check_input(x, ndim=(3, 4, 5))
        z = self.inner.forward(x)
        if z.shape[0] != x.shape[0] or z.shape[2:] != x.shape[2:]:
            raise ValueError(f"{self.describe()}: the inner branch gives shape {tuple(z.shape)} for input shape "
                             f"{tuple(x.shape)}; batch and spatial sizes must match (for a U-Net: spatial sizes "
                             f"divisible by 2**depth)")
        self.channels = x.shape[1]
        return array_module(x).concatenate([x, z], axis=1)

    def backward(self, dy):
        xp = array_module(dy)
        c = self.channels
        dz = self.inner.backward_and_notify(xp.ascontiguousarray(dy[:, c:]))
        return dz + dy[:, :c]

    def _replicate_children(self, original):
        self.inner = original.inner.replicate()

    def describe(self):
        return "SkipConcat(inner)"
