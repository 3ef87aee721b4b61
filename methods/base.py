"""The method contract: a :class:`CLMethod` owns the math, the engine owns the loop.

Per task the trainer calls, in this order::

    before_task(task)                    # grow heads, add adapters, data passes
    parameter_groups()                   # what the optimiser trains (none: no training)
    training_step(x, y, task) * steps    # logits (+ extra loss); the engine adds the masked CE
    after_task(task)                     # freeze, merge, prototypes, memory updates
    post_task_phases(task)               # declared extra optimisations (engine runs them)
    with eval_context(): predict(x)      # logits over the classes seen so far
                         eval_labels(y)  # (diagnostics only, e.g. task-identity accuracy)

and records ``task_log()`` (JSON) and ``task_state()`` (tensors) in the run record. A method
never steps an optimiser, moves data, casts precision or wraps DDP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.backbones import Backbone
from clbench.config import MethodConfig

if TYPE_CHECKING:
    from clbench.engine.context import TaskContext


@dataclass(frozen=True)
class StreamInfo:
    """What a method may know about the stream up front: task sizes, never data."""

    n_classes: int
    task_ranges: tuple[tuple[int, int], ...]  # [lo, hi) new-label range per task

    @property
    def n_tasks(self) -> int:
        return len(self.task_ranges)


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
    """An extra optimisation a method declares after a task's main training (e.g. classifier
    alignment on features sampled from stored class statistics). The engine builds the
    optimiser and runs it with its own step code (autocast, clipping, NaN checks).

    ``batches(epoch)`` yields batches (tuples of tensors on the device) for one epoch;
    ``loss(*batch)`` returns the scalar loss; ``train`` overrides ``train.*`` values for
    this phase (e.g. ``{"optimizer": "sgd", "lr": 0.01, "schedule": "cosine"}``).
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

    def __init__(self, cfg: MethodConfig, backbone: Backbone, info: StreamInfo):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.info = info
        self.noncomparable: list[str] = []  # reasons this run must not be compared (record flag)

    # ---------------------------------------------------------------- hooks
    def before_task(self, task: TaskContext) -> None:
        """Prepare for task ``task.index`` (grow heads, add adapters, collect statistics)."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups: dicts with ``params`` and optional ``lr_scale``,
        ``weight_decay``. Default: one group with every parameter that requires grad."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def training_step(self, x: Tensor, y: Tensor, task: TaskContext) -> StepOutput:
        """Forward a training batch (labels are new labels in ``[0, task.hi)``)."""
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor, task: TaskContext) -> StepOutput:
        """Calls :meth:`training_step` (the engine calls the module, so DDP can wrap it)."""
        return self.training_step(x, y, task)

    def after_task(self, task: TaskContext) -> None:
        """Finish task ``task.index`` (freeze, merge, prototypes, memory updates)."""

    def post_task_phases(self, task: TaskContext) -> list[Phase]:
        """Extra optimisations to run after ``after_task`` (default: none)."""
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
