"""CHAOS behind the trainer's engine interface (hpcnn.train.engine): `engine = "chaos"` in a job file.

The trainer builds the data and the model; this engine reads the whole training and validation
sets, runs `hpcnn.chaos.fit` for the epochs that are left and reports each epoch as a validation
record. Under `mpiexec` every rank runs CHAOS workers on its share of each epoch and the ranks
average their weights every `average_every` steps. It checkpoints at its end; --resume restores
its weights and runs the epochs that are left (its threads' sample order is its own).
"""
import time

import numpy as np

from ..train.config import JobError
from ..train.engine import Engine
from .engine import fit

__all__ = ["ChaosJobEngine"]


class ChaosJobEngine(Engine):
    name = "chaos"

    def setup(self, trainer):
        trainer.net = trainer.model
        if trainer.job["training"]["steps"]:
            raise JobError(f"job file {trainer.job.path}: training.steps: the chaos engine trains by epochs; "
                           "give training.epochs")

    def _whole(self, trainer, dataset):
        x, y = dataset.read(np.arange(len(dataset)))
        y = y.astype(trainer.dtype, copy=False) if trainer.task == "regress" else y
        return x.astype(trainer.dtype, copy=False), y

    def run(self, t):
        tr, dist_cfg = t.job["training"], t.job["distribution"]
        t0 = time.perf_counter()
        train, val = self._whole(t, t.train_set), self._whole(t, t.val_set)
        opt = tr["optimizer"]

        def on_epoch(epoch, metrics):
            metrics = dict(metrics)
            t.history.append({"epoch": epoch, **metrics})
            t.log.write("val", epoch=epoch, **{k: v for k, v in metrics.items()
                                               if k != "epoch" and isinstance(v, (int, float, str))})
            shown = ("train_loss", "val_loss", "val_accuracy", "images_per_second", "lr")
            t.progress.say(f"epoch {epoch}/{tr['epochs']}: " + ", ".join(
                f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                for k in shown if k in metrics))

        done = t.step // t.steps_per_epoch  # epochs finished before a --resume
        results = fit(t.model, t.loss, train, val, epochs=max(tr["epochs"] - done, 0),
                      threads=dist_cfg["threads"] or None, batch=t.batch, schedule=t.schedule,
                      lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"],
                      staleness=None if dist_cfg["staleness"] < 0 else dist_cfg["staleness"],
                      deterministic=dist_cfg["deterministic"],
                      average_every=dist_cfg["average_every"] or None,
                      comm=t.comm if t.comm.size > 1 else None,
                      seed=tr["seed"], on_epoch=on_epoch)
        seconds = time.perf_counter() - t0
        t.step = tr["epochs"] * t.steps_per_epoch
        path = t.save_checkpoint()
        last = dict(results[-1]) if results else {}
        return {"steps": t.step, "epochs": tr["epochs"], "seconds": seconds,
                "images_per_s": tr["epochs"] * len(t.train_set) / seconds, "stopped": None, "checkpoint": path,
                **{k: v for k, v in last.items() if k.startswith("val_")}}
