"""The machine-profile document's format: its name and version, ProfileError, sourced numbers and the provenance rule.

Every number of a profile is a quantity ``{"value": number, "source": KEY}`` or sits inside an
object that carries a ``source``; every source names an entry of the document's ``sources``
(``check_provenance``). The full layout is in `perfmodel.machine`.
"""
import math

__all__ = ["FORMAT", "VERSION", "ProfileError", "read_quantity", "check_provenance"]

FORMAT = "hpcnn-machine-profile"
VERSION = 1


class ProfileError(ValueError):
    """A machine profile that cannot be used; the message names the field."""


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
