"""What a projection prices, and hpcnn as built: a cluster's links with hpcnn's own measured GPU kernel rates.

A published cluster profile (e.g. v100-nvlink-edr) prices GPU kernels at datasheet peaks times
assumed efficiencies (cuDNN-level kernels) and overlaps messages as under a CUDA-aware MPI:
neither has been measured for hpcnn. `prices(profile)` says so in one line, printed on every
projection. `as_built(cluster, measured)` keeps the cluster's nodes, links, collectives and memory
and takes the kernel rates, layer-call and overlap terms from a profile `hpcnn calibrate` (or
jobs/gpu-check.sh) measured on a GPU with hpcnn's kernels; `measured_gpu_profile()` finds a
shipped one, or None: the as-built projection is then unmeasured and not made.
"""
import copy

from .machine import MachineProfile, load_profile, shipped_profiles

__all__ = ["prices", "as_built", "measured_gpu_profile"]


def prices(profile):
    """One line: what the predictions made with `profile` assume."""
    doc = profile.doc
    measured = doc.get("measured_on")
    if measured is not None:
        return (f"predictions of the performance model, priced with {profile.name!r} measured by hpcnn calibrate "
                f"on {measured['host']} ({measured['cpu']}) on {measured['date'][:10]}: hpcnn's own kernels and MPI")
    if doc.get("backend") == "gpu":
        overlap = doc.get("overlap", {})
        parts = ", ".join(f"{k} {v['value']:g}" for k, v in overlap.items())
        return (f"predictions of the performance model on the published profile {profile.name!r}: its GPU rates "
                f"assume cuDNN-level kernel efficiency and its overlap ({parts}) a CUDA-aware MPI; hpcnn's own GPU "
                f"kernels and staging have not been measured to reach either (see 'hpcnn as built')")
    return f"predictions of the performance model on {profile.name!r}, whose origin it does not record"


def measured_gpu_profile():
    """A shipped GPU profile measured with hpcnn's own kernels (one with a measured_on section), or None."""
    for name in sorted(shipped_profiles()):
        profile = load_profile(name)
        if profile.backend == "gpu" and "measured_on" in profile.doc:
            return profile
    return None


def as_built(cluster, measured):
    """The MachineProfile of `cluster` with the kernel, layer-call, fresh-memory and overlap terms of `measured`."""
    if measured.backend != cluster.backend:
        raise ValueError(f"as_built: {measured.name!r} is a {measured.backend} profile, {cluster.name!r} a "
                         f"{cluster.backend} one")
    doc = copy.deepcopy(cluster.doc)
    doc["name"] = f"{cluster.name}+{measured.name}"
    doc["description"] = (f"hpcnn as built: the nodes, links and collectives of {cluster.name!r} with the kernel "
                          f"rates and overlap measured for hpcnn in {measured.name!r}")
    for key in ("compute", "layer_calls", "fresh_memory", "overlap", "measured_on"):
        if key in measured.doc:
            doc[key] = copy.deepcopy(measured.doc[key])
        else:
            doc.pop(key, None)
    for key, text in measured.doc["sources"].items():
        doc["sources"].setdefault(key, text)
    return MachineProfile(doc)
