"""What a method sees of the engine during one task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ..data.stream import Task

if TYPE_CHECKING:
    from .trainer import Trainer


class TaskContext:
    """Task facts plus engine services (data passes, reductions, autocast) for method hooks."""

    def __init__(self, trainer: Trainer, task: Task):
        self._trainer = trainer
        self.task = task
        self.index = task.index
        self.lo, self.hi = task.lo, task.hi
        self.n_tasks = trainer.stream.n_tasks
        self.device = trainer.device

    def batches(self, augment: bool = False, cumulative: bool = False,
                description: str = "data pass") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over this task's training data (on the compute device, labels new).

        Use for statistics passes (prototypes, covariances). ``augment`` selects the training
        transform; ``cumulative`` covers the data of all tasks so far. Under DDP each rank sees
        its own shard: reduce results with :meth:`all_reduce`.
        """
        return self._trainer.data_pass(self.task, augment, cumulative, description)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a statistic over ranks (a no-op in a single process)."""
        return self._trainer.dist.all_reduce(tensor)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast context (bf16 on CUDA, nothing on CPU)."""
        return self._trainer.autocast()
