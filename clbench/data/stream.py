"""Class-incremental task streams, built from any labelled train/test pair.

A stream fixes a class order (a permutation of the dataset's label ids), relabels class
``class_order[i]`` to ``i``, and cuts the order into tasks: ``init_cls`` classes, then
``increment`` classes per task. Task ``t`` trains on its own classes; evaluation after task
``t`` uses the test data of every class seen so far. Streams know nothing about methods.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .datasets import LabelledDataset, Relabelled


def class_order(n_classes: int, seed: int | None) -> np.ndarray:
    """``RandomState(seed).permutation(n)`` (PyCIL/PILOT/SD-LoRA), or natural order for ``None``."""
    if seed is None:
        return np.arange(n_classes)
    return np.random.RandomState(seed).permutation(n_classes)


@dataclass(frozen=True)
class Task:
    """One task: its index, its classes (original ids, in order) and new-label range [lo, hi)."""

    index: int
    classes: tuple[int, ...]
    lo: int
    hi: int

    @property
    def n_classes(self) -> int:
        return self.hi - self.lo


def task_splits(n_classes: int, n_tasks: int, init_cls: int | None) -> list[tuple[int, int]]:
    """[lo, hi) label ranges for ``n_tasks`` tasks; the first has ``init_cls`` classes."""
    if n_tasks < 1:
        raise ConfigError(f"benchmark.n_tasks must be at least 1, got {n_tasks}.")
    if n_tasks == 1:
        return [(0, n_classes)]
    if init_cls is None and n_classes % n_tasks:
        inc = n_classes // n_tasks
        first = n_classes - (n_tasks - 1) * inc
        divisors = [n for n in range(2, n_classes + 1) if n_classes % n == 0 and n <= 50]
        raise ConfigError(
            f"{n_classes} classes do not divide into {n_tasks} equal tasks. Either give the first task the "
            f"extra classes with --set benchmark.init_cls={first} (tasks of {first} + {n_tasks - 1}x{inc} classes), "
            f"or choose benchmark.n_tasks among {', '.join(map(str, divisors)) or '1'}."
        )
    first = init_cls if init_cls is not None else n_classes // n_tasks
    rest = n_classes - first
    if first <= 0 or rest <= 0 or rest % (n_tasks - 1):
        raise ConfigError(
            f"{n_classes} classes cannot be cut into {n_tasks} tasks with {first} in the first "
            f"and an equal number in each other task. Choose benchmark.n_tasks (and "
            f"benchmark.init_cls) so that the remaining {rest} classes divide evenly."
        )
    inc = rest // (n_tasks - 1)
    bounds = [(0, first)] + [(first + i * inc, first + (i + 1) * inc) for i in range(n_tasks - 1)]
    return bounds


class ClassIncrementalStream:
    """Tasks over a train/test pair of :class:`LabelledDataset` with a fixed class order."""

    def __init__(
        self,
        train: LabelledDataset,
        test: LabelledDataset,
        order: np.ndarray,
        n_tasks: int,
        init_cls: int | None = None,
    ):
        order = np.asarray(order, dtype=np.int64)
        n_classes = len(order)
        if sorted(order.tolist()) != list(range(n_classes)):
            raise ConfigError("The class order must be a permutation of the dataset's label ids.")
        self.train, self.test = train, test
        self.order = order
        self.label_map = np.empty(n_classes, dtype=np.int64)  # original id -> new label
        self.label_map[order] = np.arange(n_classes)
        self.tasks = [
            Task(i, tuple(int(c) for c in order[lo:hi]), lo, hi)
            for i, (lo, hi) in enumerate(task_splits(n_classes, n_tasks, init_cls))
        ]
        self.class_to_task = np.empty(n_classes, dtype=np.int64)  # new label -> task index
        for task in self.tasks:
            self.class_to_task[task.lo:task.hi] = task.index
        self._train_new = self.label_map[train.targets]
        self._test_new = self.label_map[test.targets]
        for name, labels in (("train", self._train_new), ("test", self._test_new)):
            missing = [int(order[c]) for c in range(n_classes) if not (labels == c).any()]
            if missing:
                raise ConfigError(
                    f"The {name} split has no samples of class(es) {missing[:10]}; every class "
                    f"of the label map must appear in both splits. Check the split files."
                )

    @property
    def n_classes(self) -> int:
        return len(self.order)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def train_data(self, t: int, cumulative: bool = False, augment: bool = True) -> Relabelled:
        """Training data of task ``t`` (or of tasks ``0..t`` when ``cumulative``), new labels."""
        task = self.tasks[t]
        lo = 0 if cumulative else task.lo
        idx = np.flatnonzero((self._train_new >= lo) & (self._train_new < task.hi))
        return Relabelled(self.train.with_augment(augment), idx, self.label_map)

    def test_data(self, t: int) -> Relabelled:
        """Test data of every class seen up to and including task ``t``, new labels."""
        idx = np.flatnonzero(self._test_new < self.tasks[t].hi)
        return Relabelled(self.test.with_augment(False), idx, self.label_map)

    def test_counts(self) -> tuple[list[int], list[int]]:
        """Test samples per task and per class (new labels)."""
        per_class = np.bincount(self._test_new, minlength=self.n_classes)
        per_task = [int(per_class[t.lo:t.hi].sum()) for t in self.tasks]
        return per_task, per_class.tolist()

    def order_id(self) -> str:
        """Short hash of the class order, for grouping comparable runs."""
        return hashlib.sha256(self.order.tobytes()).hexdigest()[:12]
