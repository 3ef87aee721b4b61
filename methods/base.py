"""The method contract: a :class:`CLMethod` owns the math, the engine owns the loop.

Everything a method author needs is in this file: the base class and its hooks, what the
engine hands to the hooks (:class:`TaskContext`), what a training step returns
(:class:`StepOutput`), an extra optimisation a method declares (:class:`Phase`) and what a
method knows of the stream up front (:class:`StreamInfo`). Per task the engine calls, in
this order::

    before_task(ctx)                       # grow heads, add adapters, data passes
    pre_training_phases(ctx)               # declared optimisations before the main one
    parameter_groups()                     # what the main optimisation trains (none: no training)
    for each step:                         # main training, then every phase, same loop
        training_step(x, y, ctx)           #   logits (+ extra loss); the engine adds the masked CE
        (backward; DDP averages the gradients)
        before_optimizer_step(ctx)         #   gradients are final: project, mask, inspect
        (gradient clipping; optimiser step)
        after_optimizer_step(ctx)          #   parameters are updated: re-project, merge
    after_task(ctx)                        # freeze, merge, prototypes, memory updates
    post_task_phases(ctx)                  # declared optimisations after the task (engine runs them)
    with eval_context(): predict(x)        # logits over the classes seen so far
                         eval_labels(y)    # (diagnostics only, e.g. task-identity accuracy)

and records ``task_log()`` (JSON) and ``task_state()`` (tensors) in the run record. A method
never steps an optimiser, moves data, casts precision or wraps DDP. In a phase the step is
``phase.loss(*batch)`` instead of ``training_step``; ``ctx.stage`` names the loop
(``"train"`` or the phase's name).

Resuming a run within a task replays ``before_task`` and loads the saved state; a phase
that was interrupted is declared again from that state, so ``after_task`` must leave what it
computes in the module's state (parameters, buffers, ``get_extra_state``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from clbench.backbones import Backbone
from clbench.config import MethodConfig


@dataclass(frozen=True)
class StreamInfo:
    """What a method may know about the stream up front: task sizes, never data."""

    n_classes: int
    task_ranges: tuple[tuple[int, int], ...]  # [lo, hi) new-label range per task

    @property
    def n_tasks(self) -> int:
        return len(self.task_ranges)


@runtime_checkable
class TaskContext(Protocol):
    """What a hook sees of the engine during one task: facts and services.

    ``lo``/``hi`` bound the task's new labels; ``stage`` is ``"train"`` in the main
    training and the phase's name in a phase.
    """

    index: int
    lo: int
    hi: int
    n_tasks: int
    device: torch.device
    stage: str

    def batches(self, augment: bool = False, cumulative: bool = False,
                description: str = "data pass") -> Iterator[tuple[Tensor, Tensor]]:
        """This task's training data on the compute device, new labels (statistics passes).

        ``augment`` selects the training transform; ``cumulative`` covers the data of all
        tasks so far. Under DDP each rank sees its own shard: reduce with :meth:`all_reduce`.
        """
        ...

    def training_batches(self, epoch: int, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Epoch ``epoch`` of this task's training data as the main training gets it (augmented,
        shuffled by the epoch's seeded order, new labels), in batches of ``batch_size``
        (default ``train.batch_size``; this rank's share under DDP): the data of a phase that
        trains on the task's images (e.g. a task-identity stage before the main training)."""
        ...

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum a statistic over ranks (a no-op in a single process)."""
        ...

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every rank's rows of ``tensor``, concatenated in rank order (the tensor itself in a
        single process): for per-sample values a method needs whole, e.g. a task's features."""
        ...

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast context (bf16 on CUDA, nothing on CPU)."""
        ...


@dataclass
class StepOutput:
    """Result of one training step.

    ``logits`` cover classes ``0..C-1`` (C ≥ the current task's ``hi``); the engine applies
    the configured logit mask and cross-entropy. ``loss`` is added to it (e.g. a prompt
    matching term). ``logs`` are scalars averaged over the task and shown/recorded.
    """

    logits: Tensor
    loss: Tensor | None = None
    logs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Phase:
    """An extra optimisation a method declares before or after a task's main training
    (e.g. a task-identity model trained in its own stage, or classifier alignment on
    features sampled from stored class statistics). The engine runs it in the same loop as
    the main training (optimiser, lr rule, autocast, clipping, divergence checks, DDP
    gradient averaging, checkpoints and resume).

    ``batches(epoch)`` returns the epoch's batches (tuples of tensors on the device; a phase
    on the task's images returns ``ctx.training_batches(epoch)``);
    ``loss(*batch)`` returns the scalar loss; ``train`` overrides ``train.*`` values for
    this phase (e.g. ``{"optimizer": "sgd", "lr": 0.01, "schedule": "cosine"}``). Draw the
    batches' randomness from torch's global generator: a resumed phase replays an epoch's
    draws from the generator state at the epoch's start.
    """

    name: str
    groups: list[dict[str, Any]]
    epochs: int
    batches: Callable[[int], Iterable[tuple[Tensor, ...]]]
    loss: Callable[..., Tensor]
    train: dict[str, Any] = field(default_factory=dict)


class CLMethod(nn.Module):
    """Base class of all continual-learning methods (subclass and register with
    :func:`clbench.registry.register_method`)."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: Config values (dotted keys, e.g. ``train.lr``) this method uses unless a preset or
    #: the user overrides them; they take precedence over the benchmark's defaults.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Train task t on the data of tasks 0..t (the joint upper bound) instead of task t only.
    cumulative_data: ClassVar[bool] = False
    #: Whether the engine's main training optimises anything. A run in which a task of a
    #: training method would take zero steps (e.g. batch larger than the task's data with
    #: ``train.drop_last``) is refused when planned; False: trains nothing by design.
    trains: ClassVar[bool] = True
    #: The name it is registered under (set by :func:`~clbench.registry.register_method`).
    registered_name: ClassVar[str] = ""
    #: The method's name as its paper writes it, for report tables (e.g. ``"SD-LoRA"``);
    #: empty: the registered name. Records and CSV files keep the registered name.
    display_name: ClassVar[str] = ""
    #: Buffers of this module that hold copies of weights (e.g. merged adapter factors), not
    #: stored features or statistics (see :mod:`clbench.efficiency`).
    weight_buffers: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def trains_on_task(cls, cfg: Any, index: int) -> bool:
        """Whether the main training optimises anything on task ``index`` under the method's
        options ``cfg`` (default: :attr:`trains`); the plan refuses a run in which such a task
        gives no training batch."""
        return cls.trains

    def __init__(self, cfg: MethodConfig, backbone: Backbone, info: StreamInfo):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.info = info
        self.noncomparable: list[str] = []  # reasons this run must not be compared (record flag)

    # ---------------------------------------------------------------- hooks
    def before_task(self, ctx: TaskContext) -> None:
        """Prepare for task ``ctx.index`` (grow heads, add adapters, collect statistics)."""

    def pre_training_phases(self, ctx: TaskContext) -> list[Phase]:
        """Optimisations to run before the main training of the task (default: none)."""
        return []

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups: dicts with ``params`` and optional ``lr_scale``,
        ``weight_decay``. Default: one group with every parameter that requires grad."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def training_step(self, x: Tensor, y: Tensor, ctx: TaskContext) -> StepOutput:
        """Forward a training batch (labels are new labels in ``[0, ctx.hi)``)."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor, ctx: TaskContext) -> StepOutput:
        """Calls :meth:`training_step` (the engine calls the module, so DDP can wrap it)."""
        return self.training_step(x, y, ctx)

    def before_optimizer_step(self, ctx: TaskContext) -> None:
        """After backward and DDP gradient averaging, before clipping: the gradients of
        this step are final (e.g. project them onto a subspace). Default: nothing."""

    def after_optimizer_step(self, ctx: TaskContext) -> None:
        """After the optimiser updated the parameters (e.g. merge or re-project them)."""

    def after_task(self, ctx: TaskContext) -> None:
        """Finish task ``ctx.index`` (freeze, merge, prototypes, memory updates)."""

    def post_task_phases(self, ctx: TaskContext) -> list[Phase]:
        """Optimisations to run after ``after_task`` (default: none)."""
        return []

    def predict(self, x: Tensor) -> Tensor:
        """Logits (B, ≥ seen classes) for evaluation, without a task id."""
        raise NotImplementedError

    def eval_labels(self, y: Tensor) -> None:
        """Called during evaluation right after each ``predict`` with that batch's labels, for
        diagnostics the method reports in ``task_log`` (e.g. task-identity accuracy). It must
        never change predictions."""

    def eval_context(self) -> contextlib.AbstractContextManager:
        """Context active during evaluation (e.g. adapters merged into the weights)."""
        return contextlib.nullcontext()

    def task_log(self) -> dict[str, Any]:
        """JSON-serialisable facts about the finished task (e.g. magnitudes, ranks)."""
        return {}

    def task_state(self) -> dict[str, Any]:
        """What defines this task's solution beyond the pretrained backbone (adapters,
        prompts, heads, and ``_extra_state`` entries for Python-side structure).

        Contract: :func:`clbench.engine.state.restore_state` of this into a fresh instance
        built on the pretrained backbone reproduces the predictions after this task. A
        method that changes backbone weights in place must keep what it needs to redo the
        change (e.g. merged adapter factors) in its own state. Stored per task.
        """
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    # ---------------------------------------------------------------- helpers
    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    @contextlib.contextmanager
    def frozen_features(self) -> Iterator[None]:
        """Evaluation mode and no grad, restoring the training flag after."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)
