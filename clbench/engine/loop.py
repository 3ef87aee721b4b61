"""The one optimisation loop: a task's main training and every phase a method declares.

:func:`optimise` builds the optimiser from a :class:`LoopSpec`, sets every group's lr by
one rule per epoch (:func:`~clbench.engine.optim.set_group_lrs`), runs the epochs (autocast,
backward, DDP gradient averaging, the method's step hooks, clipping, optimiser step), keeps
the loss sums on the device and syncs them to the host every ``SYNC_EVERY`` steps
(divergence check, the loss beside the bar) and at each epoch's end (the epoch's line, the
loggers' buffered per-step values), checkpoints every ``checkpoint_every`` steps and on a
stop request, and resumes from a :class:`LoopPosition` at any batch. The progress bar
advances every step: counting steps needs nothing from the device.
"""

from __future__ import annotations

import math
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import TrainingDiverged
from .runtime import rng_state, set_rng_state
from .dist import SingleProcess
from .optim import build_optimizer, lr_factor, set_group_lrs
from .progress import EpochStats, ProgressReporter

SYNC_EVERY = 20  # steps between host syncs (loss display, NaN check); avoids a sync per step
Batch = tuple[Tensor, ...]


def _batch_size(batch: Batch) -> int:
    """Images in a batch, from its first tensor's shape (no sync); 0 when it has none."""
    first = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    shape = getattr(first, "shape", ())
    return int(shape[0]) if len(shape) else 0


@dataclass
class LoopSpec:
    """One optimisation: what it trains, for how long, on what, with which loss.

    ``epoch_batches(epoch, skip)`` returns the epoch's batches on the device from batch
    ``skip`` on, drawing the epoch's randomness when called (a resumed epoch is re-opened from
    the generator state of its start). ``loss(batch)`` returns the loss terms; ``"loss"`` is
    optimised and every term is averaged over the steps into the task's logs.
    """

    name: str  # "train" for a task's main training, else the phase's name
    task_index: int
    groups: list[dict[str, Any]]
    epochs: int
    train: TrainConfig  # optimiser, schedule and clipping of this loop
    lr: float
    milestones: tuple[int, ...]
    epoch_batches: Callable[[int, int], Iterator[Batch]]
    loss: Callable[[Batch], dict[str, Tensor]]
    average_gradients: bool  # average over ranks after backward (steps not driven by DDP)
    description: str  # progress label
    divergence_hint: str  # what the user can change when the loss diverges
    per_epoch: int | None = None  # batches per epoch, when known up front

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.groups for p in g["params"]]


@dataclass
class LoopPosition:
    """Where a loop stands: ``batch`` batches of ``epoch`` are done, ``steps`` in all, with
    the running loss sums and the RNG states at the start of ``epoch``."""

    epoch: int = 0
    batch: int = 0
    steps: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)
    epoch_rng: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "steps": self.steps, "epoch_rng": self.epoch_rng,
                "sums": {k: v.detach().cpu() for k, v in self.sums.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> LoopPosition:
        return cls(state["epoch"], state["batch"], state["steps"],
                   {k: v.to(device) for k, v in state["sums"].items()}, state.get("epoch_rng"))


class DivergenceGuard:
    """Stops a loop whose loss or weights became non-finite, and remembers whether the last
    checkpoint may already be on the way there (no finite loss was seen after it)."""

    def __init__(self, spec: LoopSpec, steps_done: int):
        self.spec, self.task_index = spec, spec.task_index
        self.finite_through = steps_done
        self.saved_at: int | None = None

    def _stop(self, what: str, pos: LoopPosition) -> TrainingDiverged:
        where = "training loss" if self.spec.name == "train" else f"loss of the '{self.spec.name}' phase"
        return TrainingDiverged(
            f"The {where} {what} in task {self.task_index + 1}, epoch {pos.epoch + 1} (step {pos.steps}). "
            f"{self.spec.divergence_hint}; the record keeps every task finished before this one.")

    def check_loss(self, mean_loss: float, pos: LoopPosition) -> None:
        if not math.isfinite(mean_loss):
            raise self._stop(f"became {mean_loss}", pos)
        self.finite_through = pos.steps

    def check_weights(self, finite: bool, pos: LoopPosition) -> None:
        if not finite:
            raise self._stop("made the parameters NaN or infinite", pos)

    @property
    def checkpoint_suspect(self) -> bool:
        return self.saved_at is not None and self.finite_through <= self.saved_at


class StepHooks:
    """The method's per-step hooks, bound to the loop's task context."""

    def __init__(self, before: Callable[[], None], after: Callable[[], None]):
        self.before, self.after = before, after


class StopRequest:
    """SIGINT/SIGTERM while a loop runs: finish the step, checkpoint, stop. Outside a loop,
    or at a second signal, stop at once (the last checkpoint is the resume point)."""

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


class LoopCheckpoint(Protocol):
    """Where a loop saves its resume points (the trainer adds the task's progress)."""

    def save(self, spec: LoopSpec, optimizer: torch.optim.Optimizer, pos: LoopPosition) -> None: ...

    def drop(self) -> None: ...


@dataclass
class LoopResult:
    logs: dict[str, float]
    steps: int


class Loop:
    """Runs :class:`LoopSpec` optimisations with the engine's services."""

    def __init__(self, dist: SingleProcess, progress: ProgressReporter, stop: StopRequest,
                 autocast: Callable[[], Any], checkpoint_every: int):
        self.dist, self.progress, self.stop = dist, progress, stop
        self.autocast = autocast
        self.checkpoint_every = checkpoint_every
        self.checkpoint: LoopCheckpoint | None = None
        self.loggers: Any = None  # a RunLoggers (engine.loggers) buffering per-step values

    def optimise(self, spec: LoopSpec, hooks: StepHooks, checkpoint: LoopCheckpoint | None = None,
                 position: LoopPosition | None = None, optimizer_state: dict[str, Any] | None = None) -> LoopResult:
        """Run ``spec`` (from ``position`` when resuming) and return the mean of every loss
        term over the steps, averaged over ranks. ``checkpoint`` receives resume points."""
        self.checkpoint = checkpoint
        params = spec.params
        if not params or spec.epochs <= 0:
            return LoopResult({}, 0)
        optimizer = build_optimizer(spec.groups, spec.train, spec.lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        pos = position or LoopPosition()
        guard = DivergenceGuard(spec, pos.steps)
        world = self.dist.world_size
        check_stop_every = 1 if world == 1 else SYNC_EVERY  # agreeing on a stop is a collective
        bar, shown = None, pos.steps
        loop_start, epochs_run = time.perf_counter(), 0
        try:
            for epoch in range(pos.epoch, spec.epochs):
                cfg = spec.train
                set_group_lrs(optimizer, spec.groups, spec.lr, lr_factor(cfg.schedule, epoch, spec.epochs,
                                                                          spec.milestones, cfg.gamma))
                batches = self._open_epoch(spec, epoch, pos)
                if bar is None:
                    bar = self._bar(spec, batches)
                    self.progress.advance(bar, pos.steps)
                self.stop.in_loop = True
                epoch_start, epoch_steps, images = time.perf_counter(), pos.steps, 0
                epoch_sum = pos.sums.get("loss", torch.zeros(())).clone()
                for batch in batches:
                    terms = self.step(spec, hooks, optimizer, params, batch)
                    pos.steps += 1
                    pos.batch += 1
                    images += _batch_size(batch)
                    for key, value in terms.items():
                        pos.sums[key] = pos.sums.get(key, 0) + value.detach().float()
                    if self.loggers is not None:
                        self.loggers.step(spec.name, terms["loss"])
                    if pos.steps % SYNC_EVERY == 0:
                        shown = self._check(spec, guard, pos, shown, bar)
                    else:
                        self.progress.advance(bar)
                        shown += 1
                    if self.checkpoint_every and pos.steps % self.checkpoint_every == 0:
                        self._save(spec, guard, optimizer, pos)
                    if pos.steps % check_stop_every == 0 and self.dist.any(self.stop.requested):
                        self._save(spec, guard, optimizer, pos)
                        raise KeyboardInterrupt(f"stopped in task {spec.task_index + 1} ({spec.name}) after step {pos.steps}")
                self.stop.in_loop = False
                shown = self._check(spec, guard, pos, shown, bar)
                epochs_run += 1
                self._epoch_done(spec, optimizer, pos, epoch_sum, pos.steps - epoch_steps, images,
                                 time.perf_counter() - epoch_start, time.perf_counter() - loop_start, epochs_run)
            # the last update may have broken the weights although its loss was finite: never
            # hand non-finite weights to evaluation or to the task-boundary checkpoint
            guard.check_weights(self._all_finite(params), pos)
        except TrainingDiverged:
            if guard.checkpoint_suspect and self.checkpoint is not None:
                # no finite loss was seen after that checkpoint: its weights may be on their way
                # to the divergence, so the resume point falls back to the task's start
                self.checkpoint.drop()
            raise
        finally:
            self.stop.in_loop = False
        self.progress.done(bar)
        keys = sorted(pos.sums)
        if world > 1 and keys:  # global means: every rank's steps count
            total = self.dist.all_reduce(torch.stack([pos.sums[k] for k in keys])) / world
            pos.sums = dict(zip(keys, total))
        return LoopResult({k: float(pos.sums[k]) / max(1, pos.steps) for k in keys}, pos.steps)

    def step(self, spec: LoopSpec, hooks: StepHooks, optimizer: torch.optim.Optimizer, params: list,
             batch: Batch) -> dict[str, Tensor]:
        """One optimisation step: loss (autocast), backward, gradient averaging, the method's
        hooks, clipping, update. Returns the loss terms (on device, not synced)."""
        with self.autocast():
            terms = spec.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if spec.average_gradients and self.dist.world_size > 1:
            self.dist.average_gradients(params)
        hooks.before()
        if spec.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, spec.train.grad_clip)
        optimizer.step()
        hooks.after()
        return terms

    @staticmethod
    def _open_epoch(spec: LoopSpec, epoch: int, pos: LoopPosition) -> Iterator[Batch]:
        """The epoch's batches. A resumed epoch re-draws its randomness from the RNG state of
        its start, then the live state (the checkpoint's) goes on."""
        if epoch != pos.epoch or pos.epoch_rng is None:
            pos.epoch, pos.batch, pos.epoch_rng = epoch, 0, rng_state()
            return spec.epoch_batches(epoch, 0)
        live = rng_state()
        set_rng_state(pos.epoch_rng)
        try:
            return spec.epoch_batches(epoch, pos.batch)
        finally:
            set_rng_state(live)

    def _bar(self, spec: LoopSpec, batches: Iterator[Batch]) -> Any:
        per_epoch = spec.per_epoch if spec.per_epoch is not None else operator.length_hint(batches)
        return self.progress.bar(spec.description, spec.epochs * per_epoch if per_epoch else None)

    def _all_finite(self, params: list[torch.nn.Parameter]) -> bool:
        """Whether every parameter is finite on every rank (one host sync)."""
        finite = torch.stack([p.detach().isfinite().all() for p in params]).all()
        return bool(self.dist.all_reduce(finite.logical_not().float()) == 0)

    def _global_mean(self, total: Tensor, steps: int) -> float:
        """Mean per step, averaged over ranks (one host sync)."""
        if self.dist.world_size > 1:
            total = self.dist.all_reduce(total.detach().clone().reshape(1)) / self.dist.world_size
        return float(total) / max(1, steps)

    def _check(self, spec: LoopSpec, guard: DivergenceGuard, pos: LoopPosition, shown: int, bar: Any) -> int:
        """Sync the running loss to the host: stop on NaN/inf, update the bar. Returns steps shown."""
        if not pos.sums:
            return shown
        mean = self._global_mean(pos.sums["loss"], pos.steps)
        guard.check_loss(mean, pos)
        self.progress.advance(bar, pos.steps - shown, info=f"epoch {pos.epoch + 1} loss {mean:.3f}")
        return pos.steps

    def _epoch_done(self, spec: LoopSpec, optimizer: torch.optim.Optimizer, pos: LoopPosition, epoch_sum: Tensor,
                    steps: int, images: int, seconds: float, loop_seconds: float, epochs_run: int) -> None:
        """After an epoch: the loggers flush their buffered steps, the progress prints its line
        (its loss: the epoch's mean over this process's batches, one host sync and no
        collective, since only rank 0 prints)."""
        lr = float(optimizer.param_groups[0]["lr"])
        if self.loggers is not None:
            self.loggers.epoch_done(spec.name, spec.task_index, lr)
        if not self.progress.lines or not steps or "loss" not in pos.sums:
            return
        loss = float(pos.sums["loss"] - epoch_sum.to(pos.sums["loss"].device)) / steps
        self.progress.epoch_done(EpochStats(spec.description, pos.epoch, spec.epochs, loss, lr,
                                            images * self.dist.world_size, seconds, loop_seconds, epochs_run))

    def _save(self, spec: LoopSpec, guard: DivergenceGuard, optimizer: torch.optim.Optimizer,
              pos: LoopPosition) -> None:
        """Checkpoint within the loop, after checking that nothing diverged (never save garbage)."""
        if self.checkpoint is None:
            return
        self._check(spec, guard, pos, pos.steps, None)
        guard.check_weights(self._all_finite(spec.params), pos)
        self.checkpoint.save(spec, optimizer, pos)
        guard.saved_at = pos.steps
