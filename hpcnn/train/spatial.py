"""The spatial engine: one process, or MPI ranks each holding a block of every batch (hpcnn.parallel).

With no grid and no plan on one rank the plain model trains; otherwise the model is distributed
over the job's grid (or plan) and every rank reads only its block of each batch. The epoch's
sample order is a permutation drawn from (training.seed, epoch) alone, identical on every rank;
the loss is the mean over the global batch and the gradients are summed over ranks, so a run on
P ranks follows the run on one process step for step, and --resume continues exactly.

Stops: SIGTERM or SIGUSR1 set a flag that is checked between steps (agreed over ranks), then a
checkpoint is written and the run exits cleanly; a non-finite loss stops the run with a message
and writes no checkpoint, so the last good one is kept.
"""
import time

import numpy as np

from .. import parallel
from ..data.dataset import epoch_order
from .batches import Batches
from .config import JobError
from .engine import CHAOS_ONLY, Engine, refuse_fields
from .setup import auto_grid
from .validation import validate

__all__ = ["SpatialEngine"]


class SpatialEngine(Engine):
    """Trains a Trainer's model on its job's grid or plan (see the module docstring)."""

    name = "spatial"

    # --- setup ----------------------------------------------------------------------------------
    def setup(self, trainer):
        refuse_fields(trainer.job, "spatial", CHAOS_ONLY, "it trains one model copy per rank group; the CHAOS "
                      "fields set its worker threads")
        self.distribution = None
        self.dist_loss = None
        self.batches = Batches(trainer.task, trainer.dtype, trainer.device)
        trainer.net = trainer.model
        if trainer.batch > len(trainer.train_set):
            raise JobError(f"job file {trainer.job.path}: training.batch = {trainer.batch} exceeds the "
                           f"{len(trainer.train_set)} training samples")
        dist_cfg = trainer.job["distribution"]
        grid, plan = dist_cfg["grid"], dist_cfg["plan"]
        trivial = grid in (None, "auto") or all(g == 1 for g in grid)
        comm = trainer.comm
        if trainer.device.name != "gpu" and comm.node_size() > 1:
            # one rank per node compiles the model's CPU kernels (or loads them from numba's cache), then
            # the others load what it wrote, instead of every rank compiling the same kernels at once
            from ..nn.warmup import warm_up
            nd = len(trainer.train_set.spatial_shape)
            comm.node_first(lambda: warm_up(trainer.model, nd, trainer.dtype, trainer.device.put))
        if comm.size == 1 and not plan and trivial:
            return  # one process: the plain model
        try:
            self._distribute(trainer, comm, grid, plan)
        except JobError:
            raise
        except (ValueError, OSError) as e:
            raise JobError(f"job file {trainer.job.path}: distribution: {e}") from None
        if trainer.batch < self.distribution.grid[0]:
            raise JobError(f"job file {trainer.job.path}: training.batch = {trainer.batch} is smaller than the "
                           f"{self.distribution.grid[0]} parts the grid splits the batch into")
        trainer.distribution = self.distribution

    def _distribute(self, trainer, comm, grid, plan):
        path = trainer.job.path
        nd = len(trainer.train_set.spatial_shape)
        if plan:
            trainer.plan = parallel.Plan.load(plan)
            trainer.plan.check_job(trainer.model_label, (trainer.batch, *trainer.train_set.sample_shape),
                                   comm.size, where=f"job file {path}")
            trainer.net = parallel.distribute(trainer.model, plan=trainer.plan, comm=comm)
            first = next(trainer.model.named_leaves())[0]
            self.distribution = parallel.Distribution(comm, trainer.plan.grid_for(first))
            self.dist_loss = parallel.distribute(trainer.loss, plan=trainer.plan, comm=comm)
            return
        if grid in (None, "auto"):
            grid = auto_grid(comm.size, trainer.batch, trainer.train_set.spatial_shape)
        if len(grid) not in (nd + 1, nd + 3):
            raise JobError(f"job file {path}: distribution.grid {list(grid)} has {len(grid)} entries; {nd}-D samples "
                           f"need {nd + 1} (N, {'D, ' if nd == 3 else ''}H, W) or {nd + 3} "
                           f"(N, {'D, ' if nd == 3 else ''}H, W, C, F)")
        places = int(np.prod(grid))
        if places != comm.size:
            raise JobError(f"job file {path}: distribution.grid {list(grid)} needs {places} ranks, the job runs on "
                           f"{comm.size}: start it with mpiexec -n {places}, or choose another grid (--grid, "
                           "--set distribution.grid=...)")
        self.distribution = parallel.Distribution(comm, tuple(grid))
        trainer.net = parallel.distribute(trainer.model, self.distribution)
        self.dist_loss = parallel.distribute(trainer.loss, self.distribution)

    # --- one step -------------------------------------------------------------------------------
    def step(self, trainer, idx, lr):
        """One training step on samples idx at learning rate lr; returns the loss (the same on every rank)."""
        b = self.batches
        x = b.inputs(trainer.train_set, idx, self.distribution)
        out = trainer.net.forward(x)
        if self.distribution is None:
            loss = trainer.loss.forward(out, b.labels(trainer.train_set, idx))
            trainer.net.backward(trainer.loss.backward())
        else:
            loss = self.dist_loss.forward(out, b.labels(trainer.train_set, idx, self.dist_loss.d))
            trainer.net.backward(self.dist_loss.backward())
        trainer.optimizer.step(lr=lr)
        return loss

    def validate(self, trainer):
        """Validation scores over the whole validation set (see hpcnn.train.validation)."""
        batch = trainer.job["training"]["val_batch"] or trainer.batch
        return validate(trainer.net, trainer.model, trainer.val_set, self.batches, batch, self.distribution,
                        trainer.comm)

    # --- the run --------------------------------------------------------------------------------
    def run(self, t):
        tr, ck = t.job["training"], t.job["checkpoint"]
        t0 = time.perf_counter()
        images = 0
        order, order_epoch = None, None
        val = {}
        stopped = None
        t.model.train()
        while t.step < t.total_steps:
            epoch, k = divmod(t.step, t.steps_per_epoch)
            if order_epoch != epoch:
                order, order_epoch = epoch_order(len(t.train_set), epoch, tr["seed"]), epoch
            idx = order[k * t.batch:(k + 1) * t.batch]
            lr = t.schedule.lr_at(t.step)
            try:
                loss = self.step(t, idx, lr)
            except Exception as e:
                if t.comm.size > 1:
                    t.comm.abort(f"step {t.step + 1}: {type(e).__name__}: {e}")
                raise
            t.step += 1
            images += len(idx)
            t.check_loss(loss)
            rate = t.progress.update(t.step, loss, lr)
            if rate is not None:
                t.log.write("train", step=t.step, epoch=epoch + 1, loss=loss, lr=lr, images_per_s=rate)
            epoch_end = t.step % t.steps_per_epoch == 0 or t.step == t.total_steps
            if t.due(tr["val_every"], epoch_end):
                val = self.validate(t)
                t.history.append({"step": t.step, "epoch": epoch + 1, "train_loss": loss, **val})
                t.log.write("val", step=t.step, epoch=epoch + 1, **val)
                t.progress.say(f"validation at step {t.step} (epoch {epoch + 1}): "
                               + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
            if t.step < t.total_steps and t.due(ck["every"], epoch_end):
                t.save_checkpoint()
            stop = t.comm.allreduce_scalar(1 if t.stop_signal else 0, "max")
            if stop:
                stopped = t.stop_signal or "a stop signal on another rank"
                break
        path = t.save_checkpoint()
        seconds = time.perf_counter() - t0
        if stopped:
            t.log.write("stop", step=t.step, reason=stopped, checkpoint=path)
            t.announce_stop(stopped, path)
        return {"steps": t.step, "epochs": t.step / t.steps_per_epoch, "seconds": seconds,
                "images_per_s": images / seconds if seconds > 0 else float("nan"),
                "stopped": stopped, "checkpoint": path, **{f"val_{k}": v for k, v in val.items()}}
