"""The small segmentation job the trainer agreement checks run (shared by the MPI tests and the GPU check runner)."""
from hpcnn.train.config import parse_job

__all__ = ["segmentation_job"]


def segmentation_job(folder, device="cpu", **training):
    training["device"] = device
    return parse_job({
        "model": {"name": "unet2d", "width": 4, "depth": 2},
        "data": {"dataset": "textures", "size": 24, "samples": 8, "val_samples": 3, "region": 10},
        "training": {"steps": 4, "batch": 4, "optimizer": {"lr": 0.1, "momentum": 0.9}, "val_every": 2, **training},
        "checkpoint": {"every": 2, "keep": 5},
        "logging": {"dir": folder, "every": 1},
    }, "segmentation.toml")
