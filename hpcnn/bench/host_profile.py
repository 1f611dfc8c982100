"""The machine profile a measuring benchmark predicts with: the one named, else the shipped one most like
this machine."""
import os

__all__ = ["host_profile"]


def host_profile(name=None):
    """The MachineProfile `name` (a shipped name or a JSON file); None: of the shipped profiles whose name starts
    with this host's name, the one measured on a machine most like this one (host, CPU model, cores, BLAS
    kernels: `perfmodel.provenance.likeness`), the newest among equals; without one named after this host, the
    same choice among the CPU profiles in perfmodel/profiles."""
    from perfmodel.machine import load_profile
    return load_profile(name) if name else _chosen()[0]


def _default_profile(here=None):
    """The path of the shipped profile `host_profile(None)` takes."""
    return _chosen(here)[1]


def _chosen(here=None):
    """(profile, path) of the shipped profile most like this machine (see host_profile), each loaded once."""
    import socket

    from perfmodel.machine import MachineProfile, shipped_profiles
    from perfmodel.provenance import likeness
    shipped = shipped_profiles()
    host = socket.gethostname()
    named = [p for n, p in shipped.items() if n.startswith(host)]
    candidates = named or [p for n, p in shipped.items() if "cpu" in n]
    if not candidates:
        raise SystemExit("hpcnn bench: no CPU profile found; run `mpiexec -n 2 hpcnn calibrate -o P.json` "
                         "and pass --machine P.json")
    profiles = [(MachineProfile.load(path), path) for path in candidates]
    return max(profiles, key=lambda pp: (likeness(pp[0].doc, here), os.path.getmtime(pp[1])))
