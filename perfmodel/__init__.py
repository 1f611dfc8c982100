"""hpcnn's performance model: machine profiles, per-layer costs under a distribution, and the partition planner."""
from .machine import MachineProfile, ProfileError, load_profile, shipped_profiles

__all__ = ["MachineProfile", "ProfileError", "load_profile", "shipped_profiles"]
