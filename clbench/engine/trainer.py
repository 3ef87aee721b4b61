"""The trainer: the one training/evaluation sequence every method runs in.

Per task it calls the method's hooks (see :mod:`clbench.methods.base` for their order), runs
the main training and every declared phase through the one optimisation loop
(:mod:`clbench.engine.loop`), evaluates once on the test data of all seen classes, and hands
the results to the run recorder. It never looks at which method it runs.

Under torchrun (:mod:`clbench.engine.dist`) the same sequence runs on every rank: the model
is wrapped in DDP for a task's main training, each epoch's order is shared and every rank
takes its part of each global batch, phases average their gradients over ranks, statistics
passes and evaluation shard the data without padding, and the ranks are checked to hold the
same model after every task. With a :class:`~clbench.engine.checkpoint.Checkpointer` it saves
resume points after every task and every ``engine.checkpoint_every`` steps of any loop, and
a first Ctrl-C (or SIGTERM) finishes the step, saves and stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ..config import RunConfig, TrainConfig, apply_values, check_options
from ..data.stream import ClassIncrementalStream, Task
from ..efficiency import peak_memory, reset_peak_memory, task_efficiency, trained_parameters
from ..errors import ConfigError, DamagedFileError
from .checkpoint import BOUNDARY, STEP, Checkpointer, ResumePoint
from .context import EngineTaskContext
from .dist import SingleProcess
from .loaders import Batch, Loaders
from .loop import Loop, LoopPosition, LoopResult, LoopSpec, StepHooks, StopRequest
from .optim import masked_cross_entropy, task_hparams
from .progress import ProgressReporter
from .runtime import autocast, compile_backbone, resolve_device, resolve_precision, rng_state, set_rng_state
from .state import StateMismatch, restore_state

if TYPE_CHECKING:
    from ..methods.base import CLMethod, Phase

TaskEnd = Callable[[Task, dict[str, Any]], None]
MAIN_HINT = "Lower train.lr or set train.grad_clip (e.g. --set train.grad_clip=1.0)"
PHASE_HINT = "Lower the phase's learning rate (a method option)"


class Stage:
    """Which loop of a task a step checkpoint belongs to: a pre-training phase, the main
    training or a post-task phase (``index``: the phase's position in its list)."""

    ORDER = ("pre", "main", "post")

    def __init__(self, kind: str, index: int = 0, name: str = "train"):
        self.kind, self.index, self.name = kind, index, name

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "name": self.name}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Stage:
        return cls(state["kind"], state["index"], state["name"])

    def reached(self, kind: str) -> bool:
        """Whether a task resumed at this stage still has to run stage kind ``kind``."""
        return self.ORDER.index(kind) >= self.ORDER.index(self.kind)


class TaskResume:
    """A step checkpoint within a task, unpacked for the stage it belongs to."""

    def __init__(self, step: dict[str, Any], device: torch.device):
        self.stage = Stage.from_state(step["stage"])
        self.position = LoopPosition.from_state(step["position"], device)
        self.optimizer = step["optimizer"]
        self.progress = dict(step["progress"])

    def at(self, kind: str, index: int = 0) -> TaskResume | None:
        """This resume point if it lies in that loop."""
        return self if (self.stage.kind, self.stage.index) == (kind, index) else None


class _StageCheckpoint:
    """Saves a loop's resume points with the task's progress so far."""

    def __init__(self, trainer: Trainer, task: Task, stage: Stage, progress: dict[str, Any], started: float):
        self.trainer, self.task, self.stage = trainer, task, stage
        self.progress, self.started = progress, started

    def save(self, spec: LoopSpec, optimizer: torch.optim.Optimizer, pos: LoopPosition) -> None:
        t = self.trainer
        progress = {**self.progress, "elapsed_s": time.perf_counter() - self.started}
        t.checkpoint.save_step(self.task.index, t.method.state_dict(), optimizer.state_dict(), self.stage.to_state(),
                               pos.to_state(), progress, t.rng_states())

    def drop(self) -> None:
        self.trainer.checkpoint.drop_step()


class Trainer:
    """Runs one method through one stream; results go to ``on_task_end`` (the recorder)."""

    def __init__(self, method: CLMethod, stream: ClassIncrementalStream, cfg: RunConfig,
                 progress: ProgressReporter | None = None, dist: SingleProcess | None = None,
                 on_task_end: TaskEnd | None = None, checkpoint: Checkpointer | None = None):
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
        self.loaders = Loaders(self.dist, self.device, cfg.engine.num_workers, cfg.seed * 1000 + self.dist.rank)
        self.loop = Loop(self.dist, self.progress, self.stop, self.autocast, self.checkpoint.every)
        self.trained: dict[int, torch.Tensor] = {}  # parameters optimised in the current task (by identity)
        self._task_loaders: dict[tuple[int, int], DataLoader] = {}  # (task index, global batch) -> training loader

    # ------------------------------------------------------------------ services
    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def context(self, task: Task) -> EngineTaskContext:
        """The :class:`~clbench.methods.base.TaskContext` the method's hooks get for ``task``."""
        return EngineTaskContext(task, self.stream.n_tasks, self.device, self.data_pass, self.dist.all_reduce,
                                 self.dist.all_gather, self.autocast, self.training_epoch)

    def data_pass(self, task: Task, augment: bool, cumulative: bool, description: str) -> Iterator:
        data = self.stream.train_data(task.index, cumulative=cumulative, augment=augment)
        loader = self.loaders.evaluation(data, self.train_cfg.eval_batch_size)
        bar = self.progress.bar(f"task {task.index + 1}: {description}", len(loader))
        for batch in self.loaders.on_device(self.loaders.fetch(loader)):  # shards differ: own RNG under DDP
            yield batch
            self.progress.advance(bar)
        self.progress.done(bar)

    def task_loader(self, task: Task, batch_size: int) -> DataLoader:
        """The shuffled, augmented training loader of ``task`` at global ``batch_size`` (kept
        for the task, so the main training and phases share its workers)."""
        world = self.dist.world_size
        if batch_size % world:
            raise ConfigError(f"The global batch ({batch_size}: train.batch_size, or a phase's batch size option) must "
                              f"be divisible by the number of processes ({world}).")
        key = (task.index, batch_size)
        if key not in self._task_loaders:
            data = self.stream.train_data(task.index, cumulative=self.method.cumulative_data, augment=True)
            seed = (self.cfg.seed * 1000 + task.index) * 1000  # epoch e's order: randperm seeded seed + e
            loader = self.loaders.training(data, batch_size // world, seed, self.train_cfg.drop_last)
            self._task_loaders[key] = loader
        return self._task_loaders[key]

    def training_epoch(self, task: Task, epoch: int, batch_size: int | None = None) -> Iterator:
        """Epoch ``epoch`` of ``task``'s training data on the device (``ctx.training_batches``)."""
        return self.loaders.epoch(self.task_loader(task, batch_size or self.train_cfg.batch_size), epoch)

    # ------------------------------------------------------------------ state
    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (for checkpoints)."""
        return self.dist.gather_objects({**rng_state(), "data": self.loaders.data_rng})

    def set_rng_states(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.dist.world_size:
            raise ConfigError(
                f"The checkpoint was written by {len(states)} process(es); resume it with the same number "
                f"(this launch has {self.dist.world_size}), or results would not match the interrupted run.")
        state = states[self.dist.rank]
        set_rng_state(state)
        self.loaders.data_rng = state["data"]

    def _check_ranks_agree(self, task: Task) -> None:
        """Every rank must hold the same model after a task; a method that forgot to reduce a
        statistic over ranks (``ctx.all_reduce``) fails here instead of silently."""
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
                f"must reduce statistics it gathers from data over ranks with ctx.all_reduce(...).")

    # ------------------------------------------------------------------ tasks
    def fit(self, resume: ResumePoint | None = None) -> None:
        """Train and evaluate task by task (from ``resume`` when given)."""
        self.method.to(self.device)
        if self.cfg.engine.compile:
            compile_backbone(self.method.backbone)
        start, step = 0, None
        if resume is not None:
            start, step = resume.tasks_done, resume.step
            if resume.model is not None:
                self.restore_checkpoint(resume.model, BOUNDARY)
            if resume.rng is not None:
                self.set_rng_states(resume.rng)
        self.progress.run_started(self.stream.n_tasks, start)
        with self.stop:
            for task in self.stream.tasks[start:]:
                self.run_task(task, step)
                step = None

    def restore_checkpoint(self, model: dict[str, Any], name: str) -> None:
        """Load a checkpoint's model state; one that does not fit the method is a damaged file."""
        try:
            restore_state(self.method, model, omitted=())
        except StateMismatch as exc:
            path = self.checkpoint.directory / name if self.checkpoint.directory else name
            earlier = "the last task boundary" if name == STEP else "the first task (the finished tasks are trained again)"
            raise DamagedFileError(
                f"The checkpoint {path} does not fit this run's '{self.cfg.method}' method ({exc}): it was "
                f"replaced or edited. Delete it to resume from {earlier}, or start a new run.") from None
        self.method.to(self.device)

    def run_task(self, task: Task, step: dict[str, Any] | None = None) -> None:
        """One task; ``step`` is a checkpoint within it to continue from."""
        ctx = self.context(task)
        self.progress.task_started(task.index)
        self.trained = {}
        reset_peak_memory(self.device)
        start = time.perf_counter()
        method = self.method
        method.train()
        method.before_task(ctx)
        method.to(self.device)
        resume = None
        if step is not None:  # before_task rebuilt the task's structure; now its trained values
            self.restore_checkpoint(step["model"], STEP)
            self.set_rng_states(step["rng"])
            resume = TaskResume(step, self.device)
        progress: dict[str, Any] = resume.progress if resume else {"logs": {}, "steps": 0, "trainable": 0, "epochs": 0}
        started = start - progress.pop("elapsed_s", 0.0)
        stage = resume.stage if resume else Stage("pre")
        if stage.reached("pre"):
            self.run_phases("pre", method.pre_training_phases(ctx), ctx, progress, started, resume)
        if stage.reached("main"):
            self.train_main(ctx, progress, started, resume.at("main") if resume else None)
            method.after_task(ctx)
        self.run_phases("post", method.post_task_phases(ctx), ctx, progress, started, resume)
        self._task_loaders.clear()  # the task's training workers end here
        self._check_ranks_agree(task)
        train_s = time.perf_counter() - started
        peak = peak_memory(self.device)
        eval_start = time.perf_counter()
        correct = self.evaluate(task)
        eval_s = time.perf_counter() - eval_start
        if self.on_task_end is not None:
            self.on_task_end(task, dict(
                correct_per_class=correct, train_s=train_s, eval_s=eval_s, epochs=progress["epochs"],
                lr=task_hparams(self.train_cfg, task.index)[1], steps=progress["steps"],
                trainable_params=progress["trainable"],
                total_params=sum(p.numel() for p in method.parameters()), train_logs=progress["logs"],
                efficiency=task_efficiency(train_s, progress.get("images", 0),
                                           sum(p.numel() for p in self.trained.values()), peak),
            ))
        if self.checkpoint.enabled:
            self.checkpoint.save_boundary(method.state_dict(), task.index + 1, self.rng_states())

    def _checkpoint(self, task: Task, stage: Stage, progress: dict[str, Any], started: float) -> _StageCheckpoint | None:
        return _StageCheckpoint(self, task, stage, progress, started) if self.checkpoint.enabled else None

    def train_main(self, ctx: EngineTaskContext, progress: dict[str, Any], started: float,
                   resume: TaskResume | None) -> LoopResult:
        """The task's main training: masked cross-entropy plus the method's own loss."""
        groups = self.method.parameter_groups()
        epochs, lr, milestones = task_hparams(self.train_cfg, ctx.index)
        progress.update(trainable=sum(p.numel() for g in groups for p in g["params"]), epochs=epochs if groups else 0)
        if not groups or epochs <= 0:
            return LoopResult({}, 0)
        self.note_trained(groups)
        cfg = self.train_cfg
        loader = self.task_loader(ctx.task, cfg.batch_size)
        n = len(loader.dataset)
        progress["images"] = (n - (n % cfg.batch_size if cfg.drop_last else 0)) * epochs  # (efficiency record)
        model = self.dist.wrap(self.method)
        spec = self.main_spec(ctx, model, groups, epochs, lr, milestones,
                              lambda e, skip: self.loaders.epoch(loader, e, skip), loader.batch_sampler.per_epoch)
        ctx.stage = "train"
        result = self.loop.optimise(spec, self.hooks(ctx),
                                    self._checkpoint(ctx.task, Stage("main"), progress, started),
                                    resume.position if resume else None, resume.optimizer if resume else None)
        del model  # drops DDP's gradient hooks before after_task and phases
        progress["logs"].update(result.logs)
        progress["steps"] = result.steps
        return result

    def main_spec(self, ctx: EngineTaskContext, model: torch.nn.Module, groups: list[dict[str, Any]], epochs: int,
                  lr: float, milestones: tuple[int, ...], epoch_batches: Callable[[int, int], Iterator[Batch]],
                  per_epoch: int | None = None) -> LoopSpec:
        """The main training as a loop: ``model`` (the method, DDP-wrapped when distributed)
        gives logits and its own loss; the engine adds the masked cross-entropy."""
        mask = self.train_cfg.logit_mask

        def loss(batch: Batch) -> dict[str, torch.Tensor]:
            x, y = batch
            out = model(x, y, ctx)
            ce = masked_cross_entropy(out.logits.float(), y, ctx.lo, ctx.hi, mask)
            return {"loss": ce if out.loss is None else ce + out.loss, "ce": ce, **out.logs}

        return LoopSpec("train", ctx.index, groups, epochs, self.train_cfg, lr, milestones, epoch_batches, loss,
                        average_gradients=False, description=f"task {ctx.index + 1}/{ctx.n_tasks} train",
                        divergence_hint=MAIN_HINT, per_epoch=per_epoch)

    def note_trained(self, groups: list[dict[str, Any]]) -> None:
        """Remember what a loop of the current task optimises (learnable parameters)."""
        for p in trained_parameters(groups):
            self.trained.setdefault(id(p), p)

    def test_image(self, task: Task) -> torch.Tensor:
        """One test image of ``task`` as evaluation feeds it (on the device, float), for
        counting the evaluation forward's FLOPs."""
        x, y = self.stream.test_data(task.index).__getitems__([0])
        return self.loaders.to_device(x, y)[0]

    def hooks(self, ctx: EngineTaskContext) -> StepHooks:
        """The method's per-step hooks, bound to ``ctx``."""
        return StepHooks(lambda: self.method.before_optimizer_step(ctx), lambda: self.method.after_optimizer_step(ctx))

    def run_phases(self, kind: str, phases: list[Phase], ctx: EngineTaskContext, progress: dict[str, Any],
                   started: float, resume: TaskResume | None) -> None:
        """Run declared phases in order (from the interrupted one when resuming in this stage)."""
        first = resume.stage.index if resume is not None and resume.stage.kind == kind else 0
        for index, phase in enumerate(phases):
            if index < first:
                continue
            at = resume.at(kind, index) if resume else None
            result = self.run_phase(phase, ctx, self._checkpoint(ctx.task, Stage(kind, index, phase.name), progress,
                                                                 started), at)
            progress["logs"].update({f"{phase.name}/{k}": v for k, v in result.logs.items()})

    def run_phase(self, phase: Phase, ctx: EngineTaskContext, checkpoint: _StageCheckpoint | None = None,
                  resume: TaskResume | None = None) -> LoopResult:
        """Run a method-declared optimisation (see :class:`clbench.methods.base.Phase`); under
        DDP each rank runs it on its own batches and the gradients are averaged."""
        cfg = apply_values(self.train_cfg, phase.train, f"{phase.name} phase: train")
        # the phase's own values, on defaults: the run's values were checked when it was planned
        check_options(apply_values(TrainConfig(), phase.train, f"{phase.name} phase: train"), f"{phase.name} phase: train")

        def epoch_batches(epoch: int, skip: int) -> Iterator[Batch]:
            batches = iter(phase.batches(epoch))
            for _ in range(skip):  # drawn now, from the epoch's RNG state (see Loop._open_epoch)
                next(batches, None)
            return batches

        if phase.epochs > 0:
            self.note_trained(phase.groups)
        spec = LoopSpec(phase.name, ctx.index, phase.groups, phase.epochs, cfg, cfg.lr, cfg.milestones, epoch_batches,
                        lambda batch: {"loss": phase.loss(*batch)}, average_gradients=True,
                        description=f"task {ctx.index + 1}: {phase.name}", divergence_hint=PHASE_HINT)
        ctx.stage = phase.name
        try:
            return self.loop.optimise(spec, self.hooks(ctx), checkpoint,
                                      resume.position if resume else None, resume.optimizer if resume else None)
        finally:
            ctx.stage = "train"

    @torch.no_grad()
    def evaluate(self, task: Task) -> list[int]:
        """Correct predictions per seen class on the test data of all seen classes
        (each rank predicts its shard; the counts are summed)."""
        loader = self.loaders.evaluation(self.stream.test_data(task.index), self.train_cfg.eval_batch_size)
        correct = torch.zeros(task.hi, dtype=torch.long, device=self.device)
        bar = self.progress.bar(f"task {task.index + 1}: evaluate", len(loader))
        self.method.eval()
        with self.method.eval_context(), torch.inference_mode(), self.autocast():
            for x, y in self.loaders.on_device(loader):
                pred = self.method.predict(x)[:, : task.hi].argmax(dim=1)
                self.method.eval_labels(y)
                correct.index_add_(0, y, (pred == y).long())  # no host sync (bincount of a mask has one)
                self.progress.advance(bar)
        self.progress.done(bar)
        return self.dist.all_reduce(correct).tolist()
