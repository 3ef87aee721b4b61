"""The trainer: the one training/evaluation loop every method runs in.

Per task it calls the method's hooks (see :mod:`clbench.methods.base`), builds the optimiser
and schedule from the method's parameter groups, runs the epochs (autocast, gradient
clipping, NaN checks, progress), evaluates once on the test data of all seen classes, and
hands the results to the run recorder. It never looks at which method it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data.datasets import LabelledDataset
from ..data.stream import ClassIncrementalStream, Task
from ..errors import TrainingDiverged
from .context import TaskContext
from .dist import SingleProcess
from .optim import build_optimizer, lr_factor, masked_cross_entropy, task_hparams
from .progress import ProgressReporter
from .runtime import autocast, data_workers, resolve_device, resolve_precision

SYNC_EVERY = 20  # steps between host syncs (loss display, NaN check); avoids a sync per step


def _collate(batch: Any) -> Any:
    return batch  # datasets return collated batches from __getitems__


class Trainer:
    """Runs one method through one stream; results go to ``on_task_end`` (the recorder)."""

    def __init__(self, method: torch.nn.Module, stream: ClassIncrementalStream, cfg: RunConfig,
                 progress: ProgressReporter | None = None, dist: SingleProcess | None = None,
                 on_task_end: Any = None):
        self.method = method
        self.stream = stream
        self.cfg = cfg
        self.train_cfg = cfg.train
        self.device = resolve_device(cfg.engine.device)
        self.amp_dtype = resolve_precision(cfg.engine.precision, self.device)
        self.progress = progress or ProgressReporter(enabled=False)
        self.dist = dist or SingleProcess()
        self.on_task_end = on_task_end

    # ------------------------------------------------------------------ services
    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def loader(self, dataset: LabelledDataset, batch_size: int, shuffle: bool, seed: int = 0,
               drop_last: bool = False) -> DataLoader:
        workers = data_workers(self.cfg.engine.num_workers, dataset.in_memory, self.dist.world_size)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
            collate_fn=_collate, pin_memory=self.device.type == "cuda", drop_last=drop_last,
            persistent_workers=False,
        )

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the compute device; uint8 images become float in [0, 1] there."""
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x, y.to(self.device, non_blocking=True)

    def data_pass(self, task: Task, augment: bool, cumulative: bool, description: str) -> Iterator:
        data = self.stream.train_data(task.index, cumulative=cumulative, augment=augment)
        loader = self.loader(data, self.train_cfg.eval_batch_size, shuffle=False)
        bar = self.progress.bar(f"task {task.index + 1}: {description}", len(loader))
        for x, y in loader:
            yield self.to_device(x, y)
            self.progress.advance(bar)
        self.progress.done(bar)

    # ------------------------------------------------------------------ loop
    def fit(self, start_task: int = 0) -> None:
        """Train and evaluate task by task."""
        self.method.to(self.device)
        for task in self.stream.tasks[start_task:]:
            self.run_task(task)

    def run_task(self, task: Task) -> None:
        ctx = TaskContext(self, task)
        start = time.perf_counter()
        self.method.train()
        self.method.before_task(ctx)
        self.method.to(self.device)
        groups = self.method.parameter_groups()
        epochs, lr, milestones = task_hparams(self.train_cfg, task.index)
        trainable = sum(p.numel() for g in groups for p in g["params"])
        logs: dict[str, float] = {}
        steps = 0
        if groups and epochs > 0:
            logs, steps = self.train_task(ctx, groups, epochs, lr, milestones)
        self.method.after_task(ctx)
        for phase in self.method.post_task_phases(ctx):
            logs.update({f"{phase.name}/{k}": v for k, v in self.run_phase(phase, ctx).items()})
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        correct = self.evaluate(task)
        eval_s = time.perf_counter() - start
        if self.on_task_end is not None:
            self.on_task_end(task, dict(
                correct_per_class=correct, train_s=train_s, eval_s=eval_s, epochs=epochs if groups else 0,
                lr=lr, steps=steps, trainable_params=trainable,
                total_params=sum(p.numel() for p in self.method.parameters()), train_logs=logs,
            ))

    def train_task(self, ctx: TaskContext, groups: list[dict], epochs: int, lr: float,
                   milestones: tuple[int, ...]) -> tuple[dict[str, float], int]:
        cfg = self.train_cfg
        data = self.stream.train_data(ctx.index, cumulative=self.method.cumulative_data, augment=True)
        batch = max(1, cfg.batch_size // self.dist.world_size)
        seed = self.cfg.seed * 1000 + ctx.index
        loader = self.loader(data, batch, shuffle=True, seed=seed, drop_last=cfg.drop_last)
        optimizer = build_optimizer(groups, cfg, lr)
        params = [p for g in groups for p in g["params"]]
        model = self.dist.wrap(self.method)
        bar = self.progress.bar(f"task {ctx.index + 1}/{ctx.n_tasks} train", epochs * len(loader))
        sums: dict[str, torch.Tensor] = {}
        steps = shown = 0
        for epoch in range(epochs):
            factor = lr_factor(cfg.schedule, epoch, epochs, milestones, cfg.gamma)
            for group, spec in zip(optimizer.param_groups, groups):
                group["lr"] = lr * spec.get("lr_scale", 1.0) * factor
            loader.generator.manual_seed(seed * 1000 + epoch)  # epoch order independent of history
            for x, y in loader:
                x, y = self.to_device(x, y)
                terms = self.train_step(model, optimizer, params, x, y, ctx)
                steps += 1
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0) + value.detach().float()
                if steps % SYNC_EVERY == 0:
                    shown = self._check_and_show(sums, steps, shown, ctx, epoch, bar)
            shown = self._check_and_show(sums, steps, shown, ctx, epoch, bar)
        self.progress.done(bar)
        return {k: float(v) / max(1, steps) for k, v in sums.items()}, steps

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
    def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list, clip: float | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def run_phase(self, phase: Any, ctx: TaskContext) -> dict[str, float]:
        """Run a method-declared extra optimisation (see :class:`clbench.methods.base.Phase`)."""
        from ..config import apply_values

        cfg = apply_values(self.train_cfg, phase.train, f"{phase.name} phase: train")
        params = [p for g in phase.groups for p in g["params"]]
        if not params or phase.epochs <= 0:
            return {}
        optimizer = build_optimizer(phase.groups, cfg, cfg.lr)
        total, steps = None, 0
        bar = self.progress.bar(f"task {ctx.index + 1}: {phase.name}", phase.epochs)
        for epoch in range(phase.epochs):
            factor = lr_factor(cfg.schedule, epoch, phase.epochs, cfg.milestones, cfg.gamma)
            for group, spec in zip(optimizer.param_groups, phase.groups):
                group["lr"] = cfg.lr * spec.get("lr_scale", 1.0) * factor
            for batch in phase.batches(epoch):
                with self.autocast():
                    loss = phase.loss(*batch)
                self._update(loss, optimizer, params, cfg.grad_clip)
                total = loss.detach().float() + (0 if total is None else total)
                steps += 1
            value = float(total) if total is not None else 0.0
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"The loss of the '{phase.name}' phase became {value} in task {ctx.index + 1}. "
                    f"Lower its learning rate (a method option); finished tasks are kept in the record.")
            self.progress.advance(bar, 1, info=f"loss {value / max(1, steps):.3f}")
        self.progress.done(bar)
        return {"loss": float(total) / max(1, steps)} if total is not None else {}

    def _check_and_show(self, sums: dict, steps: int, shown: int, ctx: TaskContext, epoch: int, bar: Any) -> int:
        """Sync the running loss to the host: stop on NaN/inf, update the bar. Returns steps shown."""
        if not sums:
            return shown
        total = float(sums["loss"])
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"The training loss became {total} in task {ctx.index + 1}, epoch {epoch + 1} "
                f"(step {steps}). Lower train.lr or set train.grad_clip (e.g. --set "
                f"train.grad_clip=1.0); the record keeps every task finished before this one."
            )
        self.progress.advance(bar, steps - shown, info=f"epoch {epoch + 1} loss {total / steps:.3f}")
        return steps

    @torch.no_grad()
    def evaluate(self, task: Task) -> list[int]:
        """Correct predictions per seen class on the test data of all seen classes."""
        data = self.stream.test_data(task.index)
        loader = self.loader(data, self.train_cfg.eval_batch_size, shuffle=False)
        correct = torch.zeros(task.hi, dtype=torch.long, device=self.device)
        bar = self.progress.bar(f"task {task.index + 1}: evaluate", len(loader))
        self.method.eval()
        with self.method.eval_context(), torch.inference_mode(), self.autocast():
            for x, y in loader:
                x, y = self.to_device(x, y)
                pred = self.method.predict(x)[:, : task.hi].argmax(dim=1)
                self.method.eval_labels(y)
                correct += torch.bincount(y[pred == y], minlength=task.hi)
                self.progress.advance(bar)
        self.progress.done(bar)
        return self.dist.all_reduce(correct).tolist()
