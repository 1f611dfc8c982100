"""The machine-profile document's format: its name and version, ProfileError, sourced numbers and the provenance rule.

Every number of a profile is a quantity ``{"value": number, "source": KEY}`` or sits inside an
object that carries a ``source``; every source names an entry of the document's ``sources``
(``check_provenance``). The full layout is in `perfmodel.machine`.
"""
import math

__all__ = ["FORMAT", "VERSION", "ProfileError", "read_quantity", "check_provenance", "Fields", "read_fields"]

FORMAT = "hpcnn-machine-profile"
VERSION = 1


class ProfileError(ValueError):
    """A machine profile that cannot be used; the message names the field."""


class Fields(dict):
    """A profile object that names its path: a missing key is a ProfileError naming it ("links.intra_node.beta:
    missing"), and the objects and lists inside it name theirs. `trail` (shared) holds the last path read."""

    def __init__(self, node, path="", trail=None):
        super().__init__(node)
        self.path = path
        self.trail = trail if trail is not None else [""]

    def _at(self, key):
        return f"{self.path}.{key}" if self.path else str(key)

    def _wrap(self, key, value):
        where = self._at(key)
        self.trail[0] = where
        if isinstance(value, dict):
            return Fields(value, where, self.trail)
        if isinstance(value, list):
            return [Fields(v, f"{where}[{i}]", self.trail) if isinstance(v, dict) else v for i, v in enumerate(value)]
        return value

    def __getitem__(self, key):
        if not dict.__contains__(self, key):
            raise ProfileError(f"{self._at(key)}: missing")
        return self._wrap(key, dict.__getitem__(self, key))

    def get(self, key, default=None):
        return self._wrap(key, dict.__getitem__(self, key)) if dict.__contains__(self, key) else default

    def items(self):
        return [(k, self._wrap(k, v)) for k, v in dict.items(self)]

    def values(self):
        return [v for _, v in self.items()]


def read_fields(doc, read):
    """read(Fields(doc)), with any error of a field of the wrong kind reported as a ProfileError at the path
    read last (no traceback for a bad profile)."""
    fields = Fields(doc)
    try:
        return read(fields)
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ProfileError(f"{fields.trail[0] or 'profile'}: unusable value ({type(e).__name__}: {e})") from None


def read_quantity(q, where):
    """The value of a quantity ``{"value": number, "source": KEY}`` as a float: finite and non-negative."""
    if not isinstance(q, dict) or "value" not in q:
        raise ProfileError(f"{where}: expected {{'value': number, 'source': KEY}}, received {q!r}")
    v = q["value"]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise ProfileError(f"{where}.value: expected a finite non-negative number, received {v!r}")
    return float(v)


def check_provenance(node, where, source, sources):
    """Refuse a number under `node` (at path `where`, inside an object sourced by `source`) that has no
    source, or a source that is not a key of `sources`."""
    if isinstance(node, dict):
        if "source" in node:
            source = node["source"]
            if source not in sources:
                raise ProfileError(f"{where or 'profile'}.source: {source!r} is not a key of 'sources'")
        for key, value in node.items():
            if key not in ("source", "sources"):
                check_provenance(value, f"{where}.{key}" if where else key, source, sources)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_provenance(value, f"{where}[{i}]", source, sources)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if source is None:
            raise ProfileError(f"{where}: the number {node!r} has no source")
