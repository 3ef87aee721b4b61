"""The trainer: the one training/evaluation loop every method runs in.

Per task it calls the method's hooks (see :mod:`clbench.methods.base`), builds the optimiser
and schedule from the method's parameter groups, runs the epochs (autocast, gradient
clipping, NaN checks, progress), evaluates once on the test data of all seen classes, and
hands the results to the run recorder. It never looks at which method it runs.

Under torchrun (:mod:`clbench.engine.dist`) the same loop runs on every rank: the model is
wrapped in DDP per task, each epoch's order is shared and every rank takes its part of each
global batch, statistics passes and evaluation shard the data without padding, and the
ranks are checked to hold the same model after every task. With a
:class:`~clbench.engine.checkpoint.Checkpointer` it saves resume points after every task and
every ``engine.checkpoint_every`` steps, and a first Ctrl-C (or SIGTERM) finishes the step,
saves and stops.
"""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from ..config import RunConfig
from ..data.datasets import LabelledDataset
from ..data.stream import ClassIncrementalStream, Task
from ..errors import ConfigError, TrainingDiverged
from .checkpoint import Checkpointer, LoopPosition, ResumePoint, rng_state, set_rng_state
from .context import TaskContext
from .dist import SingleProcess
from .optim import build_optimizer, lr_factor, masked_cross_entropy, task_hparams
from .progress import ProgressReporter
from .runtime import autocast, data_workers, resolve_device, resolve_precision
from .state import restore_state

SYNC_EVERY = 20  # steps between host syncs (loss display, NaN check); avoids a sync per step


def _collate(batch: Any) -> Any:
    return batch  # datasets return collated batches from __getitems__


class TaskBatches(Sampler[list[int]]):
    """This rank's batches of one epoch of a task's training data, resumable at any batch.

    The epoch's order is ``torch.randperm`` seeded with ``seed + epoch``, the same on every
    rank (torch's :class:`DistributedSampler`, ``set_epoch`` per epoch); rank ``r`` takes every
    ``world``-th sample, so the ranks' ``k``-th batches together are the ``k``-th global
    batch of a one-process run. :meth:`start` skips batches without loading them.
    """

    def __init__(self, dataset: LabelledDataset, batch_size: int, seed: int, rank: int, world: int, drop_last: bool):
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.batches = BatchSampler(self.sampler, batch_size, drop_last)
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    @property
    def per_epoch(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


class StopRequest:
    """SIGINT/SIGTERM while training: finish the step, checkpoint, stop. Outside the training
    loop, or at a second signal, stop at once (the last checkpoint is the resume point)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.in_loop and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs one method through one stream; results go to ``on_task_end`` (the recorder)."""

    def __init__(self, method: torch.nn.Module, stream: ClassIncrementalStream, cfg: RunConfig,
                 progress: ProgressReporter | None = None, dist: SingleProcess | None = None,
                 on_task_end: Any = None, checkpoint: Checkpointer | None = None):
        self.method = method
        self.stream = stream
        self.cfg = cfg
        self.train_cfg = cfg.train
        self.dist = dist or SingleProcess()
        self.device = self.dist.device(resolve_device(cfg.engine.device))
        self.amp_dtype = resolve_precision(cfg.engine.precision, self.device)
        self.progress = progress or ProgressReporter(enabled=False)
        self.on_task_end = on_task_end
        self.checkpoint = checkpoint or Checkpointer(None)
        self.stop = StopRequest()
        # augmentation randomness of this rank (other ranks: other draws); model randomness
        # stays on the global generator, the same on every rank
        self._data_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.dist.rank).get_state()

    # ------------------------------------------------------------------ services
    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _loader(self, dataset: LabelledDataset, **kwargs: Any) -> DataLoader:
        workers = data_workers(self.cfg.engine.num_workers, dataset.in_memory, self.dist.world_size)
        # an own generator for the loader's worker seed keeps the global RNG untouched
        return DataLoader(dataset, num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, generator=torch.Generator().manual_seed(self.dist.rank), **kwargs)

    def loader(self, dataset: LabelledDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
               drop_last: bool = False) -> DataLoader:
        """A loader over this rank's part of ``dataset``: shuffled batches for training
        (call ``loader.batch_sampler.start(epoch)`` per epoch), else an unpadded shard."""
        if shuffle:
            sampler = TaskBatches(dataset, batch_size, seed, self.dist.rank, self.dist.world_size, drop_last)
            return self._loader(dataset, batch_sampler=sampler)
        return self._loader(dataset, batch_size=batch_size, sampler=self.dist.shard(len(dataset)))

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the compute device; uint8 images become float in [0, 1] there."""
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, y.to(self.device, non_blocking=True)

    def data_pass(self, task: Task, augment: bool, cumulative: bool, description: str) -> Iterator:
        data = self.stream.train_data(task.index, cumulative=cumulative, augment=augment)
        loader = self.loader(data, self.train_cfg.eval_batch_size)
        bar = self.progress.bar(f"task {task.index + 1}: {description}", len(loader))
        for x, y in self._fetch(loader):  # shards differ in size: keep their draws off the shared RNG
            yield self.to_device(x, y)
            self.progress.advance(bar)
        self.progress.done(bar)

    def _fetch(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches; under DDP, augmentation draws from this rank's own RNG."""
        if self.dist.world_size == 1:
            yield from loader
            return
        it = iter(loader)
        while True:
            model_rng = torch.get_rng_state()
            torch.set_rng_state(self._data_rng)
            try:
                batch = next(it, None)
            finally:
                self._data_rng = torch.get_rng_state()
                torch.set_rng_state(model_rng)
            if batch is None:
                return
            yield batch

    # ------------------------------------------------------------------ state
    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (for checkpoints)."""
        return self.dist.gather_objects({**rng_state(), "data": self._data_rng})

    def set_rng_states(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.dist.world_size:
            raise ConfigError(
                f"The checkpoint was written by {len(states)} process(es); resume it with the same number "
                f"(this launch has {self.dist.world_size}), or results would not match the interrupted run.")
        state = states[self.dist.rank]
        set_rng_state(state)
        self._data_rng = state["data"]

    def _check_ranks_agree(self, task: Task) -> None:
        """Every rank must hold the same model after a task; a method that forgot to reduce a
        statistic over ranks (``task.all_reduce``) fails here instead of silently."""
        if self.dist.world_size == 1:
            return
        state = self.method.state_dict()
        keys = [k for k, v in state.items() if torch.is_tensor(v) and v.numel()]
        mine = torch.stack([state[k].detach().double().sum() for k in keys]).cpu()
        gathered = self.dist.gather_objects(mine)
        differ = [k for i, k in enumerate(keys) if any(g[i] != gathered[0][i] for g in gathered)]
        if differ:
            raise RuntimeError(
                f"After task {task.index + 1} the ranks hold different values of {differ[:5]}. The method "
                f"must reduce statistics it gathers from data over ranks with task.all_reduce(...).")

    # ------------------------------------------------------------------ loop
    def fit(self, resume: ResumePoint | None = None) -> None:
        """Train and evaluate task by task (from ``resume`` when given)."""
        self.method.to(self.device)
        start, step = 0, None
        if resume is not None:
            start, step = resume.tasks_done, resume.step
            if resume.model is not None:
                restore_state(self.method, resume.model, omitted=())
                self.method.to(self.device)
            if resume.rng is not None:
                self.set_rng_states(resume.rng)
        with self.stop:
            for task in self.stream.tasks[start:]:
                self.run_task(task, step)
                step = None

    def run_task(self, task: Task, step: dict[str, Any] | None = None) -> None:
        """One task; ``step`` is a checkpoint within it to continue from."""
        ctx = TaskContext(self, task)
        start = time.perf_counter()
        self.method.train()
        self.method.before_task(ctx)
        self.method.to(self.device)
        position = None
        if step is not None:  # before_task rebuilt the task's structure; now its trained values
            restore_state(self.method, step["model"], omitted=())
            self.method.to(self.device)
            self.set_rng_states(step["rng"])
            position = LoopPosition.from_state(step["position"], self.device)
        groups = self.method.parameter_groups()
        epochs, lr, milestones = task_hparams(self.train_cfg, task.index)
        trainable = sum(p.numel() for g in groups for p in g["params"])
        logs: dict[str, float] = {}
        steps = 0
        earlier_s = position.elapsed_s if position else 0.0
        if groups and epochs > 0:
            logs, steps = self.train_task(ctx, groups, epochs, lr, milestones, position,
                                          step["optimizer"] if step else None, start - earlier_s)
        self.method.after_task(ctx)
        for phase in self.method.post_task_phases(ctx):
            logs.update({f"{phase.name}/{k}": v for k, v in self.run_phase(phase, ctx).items()})
        self._check_ranks_agree(task)
        train_s = time.perf_counter() - start + earlier_s
        start = time.perf_counter()
        correct = self.evaluate(task)
        eval_s = time.perf_counter() - start
        if self.on_task_end is not None:
            self.on_task_end(task, dict(
                correct_per_class=correct, train_s=train_s, eval_s=eval_s, epochs=epochs if groups else 0,
                lr=lr, steps=steps, trainable_params=trainable,
                total_params=sum(p.numel() for p in self.method.parameters()), train_logs=logs,
            ))
        if self.checkpoint.enabled:
            self.checkpoint.save_boundary(self.method.state_dict(), task.index + 1, self.rng_states())

    def train_task(self, ctx: TaskContext, groups: list[dict], epochs: int, lr: float, milestones: tuple[int, ...],
                   position: LoopPosition | None = None, optimizer_state: dict | None = None,
                   started: float | None = None) -> tuple[dict[str, float], int]:
        cfg = self.train_cfg
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise ConfigError(f"train.batch_size ({cfg.batch_size}) is the global batch; it must be divisible by "
                              f"the number of processes ({world}).")
        data = self.stream.train_data(ctx.index, cumulative=self.method.cumulative_data, augment=True)
        seed = (self.cfg.seed * 1000 + ctx.index) * 1000  # epoch e's order: randperm seeded seed + e
        loader = self.loader(data, cfg.batch_size // world, shuffle=True, seed=seed, drop_last=cfg.drop_last)
        batches: TaskBatches = loader.batch_sampler
        optimizer = build_optimizer(groups, cfg, lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        params = [p for g in groups for p in g["params"]]
        pos = position or LoopPosition()
        started = time.perf_counter() if started is None else started
        model = self.dist.wrap(self.method)
        bar = self.progress.bar(f"task {ctx.index + 1}/{ctx.n_tasks} train", epochs * batches.per_epoch)
        self.progress.advance(bar, pos.steps)
        shown = pos.steps
        check_stop_every = 1 if world == 1 else SYNC_EVERY  # agreeing on a stop is a collective
        self._finite_through, self._saved_at = pos.steps, None
        try:
            for epoch in range(pos.epoch, epochs):
                factor = lr_factor(cfg.schedule, epoch, epochs, milestones, cfg.gamma)
                for group, spec in zip(optimizer.param_groups, groups):
                    group["lr"] = lr * spec.get("lr_scale", 1.0) * factor
                batches.start(epoch, pos.batch if epoch == pos.epoch else 0)
                loader.generator.manual_seed(seed + epoch + 7919 * self.dist.rank)  # worker seeds
                pos.epoch, pos.batch = epoch, batches.skip
                self.stop.in_loop = True
                for x, y in self._fetch(loader):
                    x, y = self.to_device(x, y)
                    terms = self.train_step(model, optimizer, params, x, y, ctx)
                    pos.steps += 1
                    pos.batch += 1
                    for key, value in terms.items():
                        pos.sums[key] = pos.sums.get(key, 0) + value.detach().float()
                    if pos.steps % SYNC_EVERY == 0:
                        shown = self._check_and_show(pos.sums, pos.steps, shown, ctx, epoch, bar)
                    if self.checkpoint.every and pos.steps % self.checkpoint.every == 0:
                        self._save_step(ctx, optimizer, pos, started)
                    if pos.steps % check_stop_every == 0 and self.dist.any(self.stop.requested):
                        self._save_step(ctx, optimizer, pos, started)
                        raise KeyboardInterrupt(f"stopped in task {ctx.index + 1} after step {pos.steps}")
                self.stop.in_loop = False
                shown = self._check_and_show(pos.sums, pos.steps, shown, ctx, epoch, bar)
        except TrainingDiverged:
            if self._saved_at is not None and self._finite_through <= self._saved_at:
                # no finite loss was seen after that checkpoint: its weights may be on their way
                # to the divergence, so the resume point falls back to the task's start
                self.checkpoint.drop_step()
            raise
        finally:
            self.stop.in_loop = False
        del model  # drops DDP's gradient hooks before after_task and phases
        self.progress.done(bar)
        keys = sorted(pos.sums)
        if world > 1 and keys:  # global means: every rank's steps count
            total = self.dist.all_reduce(torch.stack([pos.sums[k] for k in keys])) / world
            pos.sums = dict(zip(keys, total))
        return {k: float(pos.sums[k]) / max(1, pos.steps) for k in keys}, pos.steps

    def _save_step(self, ctx: TaskContext, optimizer: torch.optim.Optimizer, pos: LoopPosition, started: float) -> None:
        """Checkpoint within the task, after checking nothing diverged (never save garbage)."""
        if not self.checkpoint.enabled:
            return
        self._check_and_show(pos.sums, pos.steps, pos.steps, ctx, pos.epoch, None)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        finite = torch.stack([p.detach().isfinite().all() for p in params]).all() if params else torch.tensor(True)
        if not bool(self.dist.all_reduce(finite.logical_not().float()) == 0):
            raise TrainingDiverged(
                f"Parameters became NaN or infinite in task {ctx.index + 1}, epoch {pos.epoch + 1} (step "
                f"{pos.steps}). Lower train.lr or set train.grad_clip; the record keeps every task finished before this one.")
        pos.elapsed_s = time.perf_counter() - started
        self.checkpoint.save_step(ctx.index, self.method.state_dict(), optimizer.state_dict(), pos, self.rng_states())
        self._saved_at = pos.steps

    def train_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, params: list,
                   x: torch.Tensor, y: torch.Tensor, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """One optimisation step: forward (autocast), masked CE + method loss, backward,
        clipping, update. Returns the loss terms (on device, not synced)."""
        with self.autocast():
            out = model(x, y, ctx)
            ce = masked_cross_entropy(out.logits.float(), y, ctx.lo, ctx.hi, self.train_cfg.logit_mask)
            loss = ce if out.loss is None else ce + out.loss
        self._update(loss, optimizer, params, self.train_cfg.grad_clip)
        return {"loss": loss, "ce": ce, **out.logs}

    @staticmethod
    def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, clip: float | None,
                dist: SingleProcess | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist is not None:
            dist.average_gradients(params)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def run_phase(self, phase: Any, ctx: TaskContext) -> dict[str, float]:
        """Run a method-declared extra optimisation (see :class:`clbench.methods.base.Phase`).

        Under DDP each rank runs it on its own batches and the gradients are averaged."""
        from ..config import apply_values

        cfg = apply_values(self.train_cfg, phase.train, f"{phase.name} phase: train")
        params = [p for g in phase.groups for p in g["params"]]
        if not params or phase.epochs <= 0:
            return {}
        optimizer = build_optimizer(phase.groups, cfg, cfg.lr)
        total, steps, mean = None, 0, 0.0
        average = self.dist if self.dist.world_size > 1 else None
        bar = self.progress.bar(f"task {ctx.index + 1}: {phase.name}", phase.epochs)
        for epoch in range(phase.epochs):
            factor = lr_factor(cfg.schedule, epoch, phase.epochs, cfg.milestones, cfg.gamma)
            for group, spec in zip(optimizer.param_groups, phase.groups):
                group["lr"] = cfg.lr * spec.get("lr_scale", 1.0) * factor
            for batch in phase.batches(epoch):
                with self.autocast():
                    loss = phase.loss(*batch)
                self._update(loss, optimizer, params, cfg.grad_clip, average)
                total = loss.detach().float() + (0 if total is None else total)
                steps += 1
            mean = self._global_mean(total, steps) if total is not None else 0.0
            if not math.isfinite(mean):
                raise TrainingDiverged(
                    f"The loss of the '{phase.name}' phase became {mean} in task {ctx.index + 1}. "
                    f"Lower its learning rate (a method option); finished tasks are kept in the record.")
            self.progress.advance(bar, 1, info=f"loss {mean:.3f}")
        self.progress.done(bar)
        return {"loss": mean} if total is not None else {}

    def _global_mean(self, total: torch.Tensor, steps: int) -> float:
        """Mean loss per step, averaged over ranks."""
        if self.dist.world_size > 1:
            total = self.dist.all_reduce(total.detach().clone().reshape(1)) / self.dist.world_size
        return float(total) / max(1, steps)

    def _check_and_show(self, sums: dict, steps: int, shown: int, ctx: TaskContext, epoch: int, bar: Any) -> int:
        """Sync the running loss to the host: stop on NaN/inf, update the bar. Returns steps shown."""
        if not sums:
            return shown
        total = self._global_mean(sums["loss"], 1)
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"The training loss became {total} in task {ctx.index + 1}, epoch {epoch + 1} "
                f"(step {steps}). Lower train.lr or set train.grad_clip (e.g. --set "
                f"train.grad_clip=1.0); the record keeps every task finished before this one."
            )
        self._finite_through = steps
        self.progress.advance(bar, steps - shown, info=f"epoch {epoch + 1} loss {total / steps:.3f}")
        return steps

    @torch.no_grad()
    def evaluate(self, task: Task) -> list[int]:
        """Correct predictions per seen class on the test data of all seen classes
        (each rank predicts its shard; the counts are summed)."""
        data = self.stream.test_data(task.index)
        loader = self.loader(data, self.train_cfg.eval_batch_size)
        correct = torch.zeros(task.hi, dtype=torch.long, device=self.device)
        bar = self.progress.bar(f"task {task.index + 1}: evaluate", len(loader))
        self.method.eval()
        with self.method.eval_context(), torch.inference_mode(), self.autocast():
            for x, y in loader:
                x, y = self.to_device(x, y)
                pred = self.method.predict(x)[:, : task.hi].argmax(dim=1)
                self.method.eval_labels(y)
                correct.index_add_(0, y, (pred == y).long())  # no host sync (bincount of a mask has one)
                self.progress.advance(bar)
        self.progress.done(bar)
        return self.dist.all_reduce(correct).tolist()

