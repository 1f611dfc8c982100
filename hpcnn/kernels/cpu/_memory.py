"""Large arrays kept by malloc between calls, so that a training step's arrays do not fault in every page.

glibc's malloc maps each request above its mmap threshold (adaptive, never above 32 MiB on 64-bit)
from the kernel and unmaps it on free. Every large array a layer allocates (its output in forward,
its input gradient in backward) then faults in each of its pages on first write, on every step:
measured on a 2-core VM, a LeakyReLU over 2x16x64^3 float32 (a 32 MiB output) took 7.6 ms on one
thread and 5.5 ms on two, against 5.8 and 1.8 ms with the pages reused (page faults serialise the
threads in the kernel). `keep_freed_arrays` raises malloc's mmap threshold to 1 GiB and its
trim threshold to 2 GiB, so arrays below 1 GiB come from malloc's heap and go back to it on free,
and the next step reuses pages already mapped. In a process that also runs PyTorch its CPU tensors
gain alike (`hpcnn bench step` times both under it). The cost: freed memory stays with the process (its
resident set keeps its peak), as with the caching allocators of GPU frameworks.

A process-wide allocator setting is the application's choice, not a library import's: hpcnn's entry
points (`hpcnn.cli.main`, the `bench model` workers) call `keep_freed_arrays()` at start-up, unless
`HPCNN_MALLOC=system`, the user set malloc's thresholds (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, or a glibc.malloc tunable in GLIBC_TUNABLES), or the C library has no
mallopt; a program that imports hpcnn may call it too. `mmap_threshold()` is the threshold in force
(glibc's 32 MiB bound until then), `policy()` says in words which applies; `release_free_pages()`
hands malloc's free pages back to the kernel (malloc_trim), so that the next large array faults its
pages in as a freshly mapped one does: what `hpcnn.calibrate.layers.measure_fresh_memory` times.
"""
import ctypes
import os

__all__ = ["keep_freed_arrays", "mmap_threshold", "policy", "GLIBC_MMAP_THRESHOLD_MAX", "release_free_pages"]

# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the adaptive threshold never exceeds it
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT = 1 << 30
_TRIM = (1 << 31) - 1           # mallopt takes an int


def _libc(name):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


def _users_setting(environ):
    if environ.get("HPCNN_MALLOC", "").strip().lower() == "system":
        return "HPCNN_MALLOC=system"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in environ:
            return name
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def _apply(environ):
    """(mmap threshold in bytes, policy in words)."""
    chosen = _users_setting(environ)
    if chosen:
        return GLIBC_MMAP_THRESHOLD_MAX, f"malloc as configured ({chosen})"
    mallopt = _libc("mallopt")
    if mallopt is None or not (mallopt(_M_MMAP_THRESHOLD, _KEPT) and mallopt(_M_TRIM_THRESHOLD, _TRIM)):
        return GLIBC_MMAP_THRESHOLD_MAX, "malloc as the C library sets it (no mallopt)"
    return _KEPT, "malloc keeps freed arrays up to 1 GiB for reuse (HPCNN_MALLOC=system: the C library's default)"


_state = {"threshold": GLIBC_MMAP_THRESHOLD_MAX, "policy": "malloc as the C library sets it"}


def keep_freed_arrays(environ=None):
    """Raise malloc's mmap and trim thresholds (see above) unless the user chose otherwise; the policy in words."""
    _state["threshold"], _state["policy"] = _apply(os.environ if environ is None else environ)
    return _state["policy"]


def mmap_threshold():
    """Bytes from which malloc maps an array afresh (and unmaps it on free), as set now."""
    return _state["threshold"]


def policy():
    """The allocator setting in force, in words."""
    return _state["policy"]


def release_free_pages():
    """Hand the pages of malloc's free memory back to the kernel (glibc's malloc_trim(0)); True if it could."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True
