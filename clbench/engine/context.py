"""The engine's implementation of the :class:`~clbench.methods.base.TaskContext` protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..data.stream import Task


class EngineTaskContext:
    """Task facts plus engine services (data passes, reductions, autocast) for method hooks."""

    def __init__(self, task: Task, n_tasks: int, device: torch.device,
                 data_pass: Callable[[Task, bool, bool, str], Iterator[tuple[torch.Tensor, torch.Tensor]]],
                 all_reduce: Callable[[torch.Tensor], torch.Tensor],
                 all_gather: Callable[[torch.Tensor], torch.Tensor],
                 autocast: Callable[[], contextlib.AbstractContextManager],
                 training_epoch: Callable[[Task, int, int | None], Iterator[tuple[torch.Tensor, torch.Tensor]]]
                 | None = None):
        self.task = task
        self.index = task.index
        self.lo, self.hi = task.lo, task.hi
        self.n_tasks = n_tasks
        self.device = device
        self.stage = "train"
        self._data_pass, self._all_reduce, self._all_gather, self._autocast = data_pass, all_reduce, all_gather, autocast
        self._training_epoch = training_epoch

    def batches(self, augment: bool = False, cumulative: bool = False,
                description: str = "data pass") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._data_pass(self.task, augment, cumulative, description)

    def training_batches(self, epoch: int, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._training_epoch is None:
            raise RuntimeError("this task context has no training data loader")
        return self._training_epoch(self.task, epoch, batch_size)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(tensor)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._all_gather(tensor)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self._autocast()
