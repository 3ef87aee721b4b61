"""Helpers for testing methods: an in-memory task context and the real trainer on tensors.

For a unit test of one hook, :class:`InMemoryTask` is a
:class:`~clbench.methods.base.TaskContext` over tensors::

    ctx = InMemoryTask.of(method.info, 0, *separable_images(0, 2, per_class=6, size=16))
    method.before_task(ctx)

For anything that trains, :func:`run_method` drives the benchmark's own
:class:`~clbench.engine.trainer.Trainer` (masked cross-entropy, lr rule and ``lr_scale``,
clipping, step hooks, phases, evaluation) on small separable images, so a method's tests
run the loop its benchmark runs::

    results = run_method(method, tasks=2, steps=3, train={"lr": 0.05})
    assert results[-1]["steps"] == 3
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import BackboneConfig, BenchmarkConfig, EngineConfig, RunConfig, TrainConfig, apply_values
from .data.datasets import TensorImageDataset
from .data.stream import ClassIncrementalStream


def separable_images(lo: int, hi: int, per_class: int = 6, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random images of classes ``lo..hi-1`` whose brightness grows with the class, so that
    they are separable: x (N, 3, size, size) with values in [0, 1.5), y (N,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(lo, hi).repeat_interleave(per_class)
    x = torch.rand(len(y), 3, size, size, generator=g) * 0.5 + (y.float() / (hi + 1))[:, None, None, None]
    return x, y


class InMemoryTask:
    """A :class:`~clbench.methods.base.TaskContext` over in-memory tensors (one process)."""

    def __init__(self, index: int, lo: int, hi: int, n_tasks: int, x: Tensor | None = None, y: Tensor | None = None,
                 batch_size: int = 8, device: str | torch.device = "cpu"):
        self.index, self.lo, self.hi, self.n_tasks = index, lo, hi, n_tasks
        self.device = torch.device(device)
        self.stage = "train"
        self.x, self.y, self.batch_size = x, y, batch_size

    @classmethod
    def of(cls, info: Any, index: int, x: Tensor | None = None, y: Tensor | None = None, **kwargs: Any) -> InMemoryTask:
        """Task ``index`` of a :class:`~clbench.methods.base.StreamInfo`."""
        lo, hi = info.task_ranges[index]
        return cls(index, lo, hi, info.n_tasks, x, y, **kwargs)

    def batches(self, augment: bool = False, cumulative: bool = False,
                description: str = "data pass") -> Iterator[tuple[Tensor, Tensor]]:
        if self.x is None:
            return
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size].to(self.device), self.y[i:i + self.batch_size].to(self.device)

    def training_batches(self, epoch: int, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The task's tensors shuffled by torch's global generator, in batches of ``batch_size``."""
        if self.x is None:
            return
        size = batch_size or self.batch_size
        order = torch.randperm(len(self.x))
        for i in range(0, len(order), size):
            pick = order[i:i + size]
            yield self.x[pick].to(self.device), self.y[pick].to(self.device)

    def all_reduce(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def image_size(method: Any) -> int:
    """Input size of the method's backbone."""
    size = method.backbone.vit.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def tensor_stream(info: Any, per_class: int = 6, size: int = 16, seed: int = 0,
                  test_per_class: int | None = None) -> ClassIncrementalStream:
    """A class-incremental stream of :func:`separable_images` with ``info``'s task ranges
    (natural class order)."""
    def dataset(n: int, s: int) -> TensorImageDataset:
        x, y = separable_images(0, info.n_classes, n, size, s)
        return TensorImageDataset((x / 1.5 * 255).round().to(torch.uint8), y.numpy())

    train, test = dataset(per_class, seed), dataset(test_per_class or per_class, seed + 1)
    first = info.task_ranges[0][1]
    return ClassIncrementalStream(train, test, np.arange(info.n_classes), info.n_tasks,
                                  first if info.n_tasks > 1 else None)


def task_tensors(stream: ClassIncrementalStream, index: int) -> tuple[Tensor, Tensor]:
    """Task ``index``'s training images (float in [0, 1], no augmentation) and new labels, as
    the engine feeds them to the method."""
    data = stream.train_data(index, augment=False)
    x, y = data.__getitems__(list(range(len(data))))
    return (x.float() / 255 if x.dtype == torch.uint8 else x), y


def run_config(method: Any, train: Mapping[str, Any] | None = None, seed: int = 0,
               engine: Mapping[str, Any] | None = None) -> RunConfig:
    """A run configuration for ``method``: its own ``train.*`` defaults, then ``train``."""
    values = {k.split(".", 1)[1]: v for k, v in type(method).defaults.items() if k.startswith("train.")}
    return RunConfig(method=type(method).registered_name or type(method).__name__, benchmark="tensors",
                     seed=seed, preset=None,
                     engine=apply_values(EngineConfig(device="cpu", progress=False), dict(engine or {}), "engine"),
                     train=apply_values(TrainConfig(), {**values, **(train or {})}, "train"),
                     backbone=BackboneConfig(name=method.backbone.tag), benchmark_cfg=BenchmarkConfig(),
                     method_cfg=method.cfg)


def run_method(method: Any, tasks: int | Sequence[int] | None = None, steps: int = 1,
               train: Mapping[str, Any] | None = None, per_class: int = 6, seed: int = 0,
               test_per_class: int | None = None, engine: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``method`` through the real trainer on :func:`tensor_stream` data.

    ``tasks``: how many tasks from the first (an int) or which task indices, in order (e.g.
    ``range(2, 3)`` continues a method that ran tasks 0-1). Each task trains ``steps`` steps
    (one epoch per step, the whole task's data per batch), runs the method's phases and is
    evaluated; ``train`` and ``engine`` override ``train.*`` and ``engine.*`` values. Returns, per task, what the engine
    hands to the run record (``correct_per_class``, ``train_logs``, ``steps``, ...).
    """
    from .engine.runtime import compile_backbone
    from .engine.trainer import Trainer

    info = method.info
    indices = range(tasks if isinstance(tasks, int) else info.n_tasks) if tasks is None or isinstance(tasks, int) \
        else tasks
    stream = tensor_stream(info, per_class, image_size(method), seed, test_per_class)
    biggest = max(t.hi - t.lo for t in stream.tasks) * per_class
    cfg = run_config(method, {"batch_size": biggest, "eval_batch_size": 256, "epochs": steps, **(train or {})}, seed, engine)
    results: list[dict[str, Any]] = []
    trainer = Trainer(method, stream, cfg, on_task_end=lambda task, result: results.append({"task": task.index,
                                                                                            **result}))
    method.to(trainer.device)
    if cfg.engine.compile:
        compile_backbone(method.backbone)
    with trainer.stop:
        for index in indices:
            trainer.run_task(stream.tasks[index])
    return results
