"""CHAOS behind the trainer's engine interface (hpcnn.train.engine): `engine = "chaos"` in a job file.

The trainer builds the data and the model; this engine reads the whole training and validation
sets and runs a `hpcnn.chaos.ChaosEngine` for the epochs that are left, reporting each epoch as a
validation record. Under `mpiexec` every rank runs CHAOS workers on its share of each epoch and
the ranks average their weights every `average_every` steps.

A step is one mini-batch of one rank (the schedule's step); an epoch has ceil(share / batch) of
them, the share being this rank's samples (all of them on one rank). The workers pause at a
consistent point (joined, the weights in the model's arrays) every `checkpoint.every` steps, at
every epoch's end and on SIGTERM/SIGUSR1, and the trainer writes the weights and the shared
momentum buffers there (under MPI both averaged over the ranks first). --resume continues at the
checkpoint's epoch and mini-batch, with its sample order, learning rate and momentum: with one
deterministic worker bit for bit the run that was not interrupted.
"""
import math
import time

import numpy as np

from ..train.config import JobError
from ..train.engine import Engine, refuse_fields
from .engine import ChaosEngine

__all__ = ["ChaosJobEngine"]

# fields of the job that the spatial engine reads and CHAOS has no use for, with their defaults
_SPATIAL_ONLY = {("training", "val_every"): 0, ("training", "val_batch"): 0, ("training", "threads"): 0}


class ChaosJobEngine(Engine):
    name = "chaos"

    def setup(self, trainer):
        job = trainer.job
        trainer.net = trainer.model
        tr = job["training"]
        if tr["steps"]:
            raise JobError(f"job file {job.path}: training.steps: the chaos engine trains by epochs; "
                           "give training.epochs")
        refuse_fields(job, "chaos", _SPATIAL_ONLY, "CHAOS validates at each epoch's end with its own batches "
                      "and sets one BLAS thread per worker (distribution.threads sets the workers)")
        share = math.ceil(len(trainer.train_set) / trainer.comm.size)
        trainer.steps_per_epoch = math.ceil(share / trainer.batch)
        trainer.total_steps = tr["epochs"] * trainer.steps_per_epoch

    def optimizer(self, trainer):
        """The ChaosEngine itself: its shared momentum buffers are the state the checkpoints hold."""
        tr, dist = trainer.job["training"], trainer.job["distribution"]
        opt = tr["optimizer"]
        try:
            self.chaos = ChaosEngine(
                trainer.model, trainer.loss, threads=dist["threads"] or None, batch=trainer.batch,
                schedule=trainer.schedule, lr=opt["lr"], momentum=opt["momentum"], nesterov=opt["nesterov"],
                weight_decay=opt["weight_decay"], staleness=None if dist["staleness"] < 0 else dist["staleness"],
                deterministic=dist["deterministic"], average_every=dist["average_every"] or None,
                comm=trainer.comm if trainer.comm.size > 1 else None, seed=tr["seed"])
        except ValueError as e:
            raise JobError(f"job file {trainer.job.path}: {e}") from None
        return self.chaos

    def _whole(self, trainer, dataset):
        x, y = dataset.read(np.arange(len(dataset)))
        y = y.astype(trainer.dtype, copy=False) if trainer.task == "regress" else y
        return x.astype(trainer.dtype, copy=False), y

    def _stats(self, t):
        """This epoch's (loss sum, correct, samples) so far, summed over ranks (written into checkpoints)."""
        loss, correct, samples = self.chaos.current_stats()
        if t.comm.size > 1:
            loss, correct, samples = (t.comm.allreduce_scalar(v) for v in (loss, correct, samples))
        return [float(loss), int(correct), int(samples)]

    def run(self, t):
        tr, ck = t.job["training"], t.job["checkpoint"]
        t0 = time.perf_counter()
        train, val = self._whole(t, t.train_set), self._whole(t, t.val_set)
        chaos = self.chaos
        epoch, position = divmod(t.step, t.steps_per_epoch)
        carried = (getattr(t, "resumed_header", None) or {}).get("chaos_epoch_stats")
        chaos.resume_at(epoch, position, carried if t.comm.rank == 0 else None)
        images0 = t.step

        def on_epoch(epoch, metrics):
            metrics = dict(metrics)
            t.step = chaos.global_step
            t.history.append({"epoch": epoch, **metrics})
            t.log.write("val", epoch=epoch, step=t.step, **{k: v for k, v in metrics.items()
                                                            if k not in ("epoch", "step")
                                                            and isinstance(v, (int, float, str))},
                        chaos_step=metrics["step"])
            shown = ("train_loss", "val_loss", "val_accuracy", "images_per_second", "lr")
            t.progress.say(f"epoch {epoch}/{tr['epochs']} (step {t.step}/{t.total_steps}): " + ", ".join(
                f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                for k in shown if k in metrics))
            t.check_loss(metrics["train_loss"], steps=t.steps_per_epoch)

        def on_pause(stopping):
            t.step = chaos.global_step
            if not stopping and t.step < t.total_steps and t.due(ck["every"], chaos.position == 0):
                t.header_extra = {"chaos_epoch_stats": self._stats(t)}
                t.save_checkpoint()

        results = chaos.fit(train, val, epochs=max(tr["epochs"] - epoch, 0), on_epoch=on_epoch,
                            pause_every=ck["every"] or None, pause=lambda: t.stop_signal is not None,
                            on_pause=on_pause)
        seconds = time.perf_counter() - t0
        t.step = chaos.global_step if chaos.stopped else t.total_steps
        t.header_extra = {"chaos_epoch_stats": self._stats(t)}
        path = t.save_checkpoint()
        stopped = None
        if chaos.stopped:
            stopped = t.stop_signal or "a stop signal on another rank"
            t.announce_stop(stopped, path)
        last = dict(results[-1]) if results else {}
        images = (t.step - images0) * t.batch * t.comm.size
        return {"steps": t.step, "epochs": t.step / t.steps_per_epoch, "seconds": seconds,
                "images_per_s": images / seconds if seconds > 0 else float("nan"), "stopped": stopped,
                "checkpoint": path, **{k: v for k, v in last.items() if k.startswith("val_")}}
