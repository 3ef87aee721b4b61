"""Checkpoints: continue a killed run from the last task boundary or from a step within a task.

Files in ``<run_dir>/checkpoint/`` (rank 0 writes both, atomically)::

    boundary.pt  after the last finished task: the method's full ``state_dict`` (backbone
                 included), the number of finished tasks, every rank's RNG states
    step.pt      within the next task, every ``engine.checkpoint_every`` steps and when a run
                 is stopped (Ctrl-C, SIGTERM): full state, optimiser state, the stage (a
                 pre-training phase, the main training or a post-task phase), the loop
                 position (epoch, batch, step, RNG states at the epoch's start), running loss
                 sums, what earlier stages of the task logged, elapsed time, RNG states

Resuming rebuilds the method exactly as the run did (same seed), loads ``boundary.pt``,
replays ``before_task`` of the unfinished task (it builds the task's structure: new
branches, grown heads), loads ``step.pt``, skips the stages that were done and goes on from
the next batch. Nothing about the order of the data is stored: each epoch's order is a
function of (seed, task, epoch), the skipped batches are never loaded, and an epoch whose
batches are drawn at random (phases) is re-drawn from the RNG state of its start.
On CPU the resumed run's results equal an uninterrupted run's (``tests/test_resume.py``).

A checkpoint is never written from non-finite losses or weights. When the loss diverges, a
step checkpoint after which no finite loss was seen is dropped, so ``clbench run --resume
RUN_DIR --set train.lr=...`` starts the diverged task again from its beginning.
Files load with ``torch.load(weights_only=True)``: tensors and plain values only.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..records import atomic_write_with, output_error
from .dist import SingleProcess

VERSION = 2  # 2: step checkpoints name their stage (pre-training phase, main training, post-task phase)
BOUNDARY, STEP = "boundary.pt", "step.pt"


@dataclass
class ResumePoint:
    """What a resumed run starts from (see :meth:`Checkpointer.load`)."""

    tasks_done: int
    model: dict[str, Any] | None  # full state after ``tasks_done`` tasks (None: the fresh method)
    rng: list[dict[str, Any]] | None  # per rank, at the start of task ``tasks_done``
    step: dict[str, Any] | None  # a checkpoint within task ``tasks_done``, if any

    def describe(self) -> dict[str, Any]:
        """JSON summary for the run record."""
        where = None
        if self.step is not None:
            pos = self.step["position"]
            where = {"stage": self.step["stage"]["name"], "epoch": pos["epoch"], "batch": pos["batch"],
                     "steps": pos["steps"]}
        return {"tasks_done": self.tasks_done, "within_task": where}


class Checkpointer:
    """Writes and reads a run's checkpoints; rank 0 writes, every rank reads."""

    def __init__(self, directory: Path | None, every: int = 0, dist: SingleProcess | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.every = max(0, int(every))
        self.dist = dist or SingleProcess()

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        if self.dist.is_main:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise output_error(self.directory, exc) from exc
            atomic_write_with(self.directory / name, lambda fh: torch.save(obj, fh))

    def save_boundary(self, model: dict[str, Any], tasks_done: int, rng: list[dict[str, Any]]) -> None:
        """After a finished task (and its record entry): the state the next task starts from."""
        if not self.enabled:
            return
        self._write(BOUNDARY, {"version": VERSION, "tasks_done": tasks_done, "model": model, "rng": rng})
        if self.dist.is_main:
            (self.directory / STEP).unlink(missing_ok=True)  # it belongs to the finished task

    def save_step(self, task_index: int, model: dict[str, Any], optimizer: dict[str, Any], stage: dict[str, Any],
                  position: dict[str, Any], progress: dict[str, Any], rng: list[dict[str, Any]]) -> None:
        """Within task ``task_index``: enough to go on from the next batch of ``stage``."""
        if not self.enabled:
            return
        self._write(STEP, {"version": VERSION, "task": task_index, "model": model, "optimizer": optimizer,
                           "stage": stage, "position": position, "progress": progress, "rng": rng})

    def drop_step(self) -> None:
        """Forget the checkpoint within the current task (resume from the task's start)."""
        if self.enabled and self.dist.is_main:
            (self.directory / STEP).unlink(missing_ok=True)

    def load(self) -> ResumePoint:
        """The latest resume point (the fresh start when nothing was saved yet)."""
        boundary = self._read(BOUNDARY)
        step = self._read(STEP)
        done = boundary["tasks_done"] if boundary else 0
        if step is not None and (step["task"] != done or step.get("version") != VERSION):
            step = None  # left over from a finished task (the boundary is newer) or an older clbench
        return ResumePoint(done, boundary["model"] if boundary else None, boundary["rng"] if boundary else None, step)

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.directory / name if self.directory else None
        if path is None or not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def discard(self) -> None:
        """Remove the checkpoints (a complete run has nothing to resume)."""
        if self.enabled and self.dist.is_main and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
