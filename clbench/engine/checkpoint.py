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

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DamagedFileError
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
    fallback: str | None = None  # why a damaged step checkpoint was set aside

    def describe(self) -> dict[str, Any]:
        """JSON summary for the run record."""
        where = None
        if self.step is not None:
            pos = self.step["position"]
            where = {"stage": self.step["stage"]["name"], "epoch": pos["epoch"], "batch": pos["batch"],
                     "steps": pos["steps"]}
        return {"tasks_done": self.tasks_done, "within_task": where,
                **({"fallback": self.fallback} if self.fallback else {})}


_FIELDS = {BOUNDARY: {"version": int, "tasks_done": int, "model": dict, "rng": list},
           STEP: {"version": int, "task": int, "model": dict, "optimizer": dict, "stage": dict, "position": dict,
                  "progress": dict, "rng": list}}


def _unreadable(exc: Exception, size: int) -> str:
    """What is wrong with a checkpoint file that ``torch.load`` refused, in words."""
    if size == 0 or isinstance(exc, EOFError):
        return "is empty"
    if isinstance(exc, pickle.UnpicklingError):
        return ("is no checkpoint clbench wrote: it is corrupt, or holds Python objects other than tensors and plain "
                "values (it was refused, so nothing in it ran)")
    if "PytorchStreamReader" in str(exc) or "zip archive" in str(exc):
        return "is truncated or corrupt (not a complete checkpoint archive)"
    return f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"


def read_checkpoint(path: Path, fields: dict[str, type]) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (tensors and plain values
    only) and check it holds ``fields``; anything else raises :class:`DamagedFileError`."""
    kind = "task checkpoint" if path.name == BOUNDARY else "step checkpoint"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports damage as many types (zip, pickle, EOF, value errors)
        raise DamagedFileError(f"The {kind} {path} {_unreadable(exc, path.stat().st_size)}.") from None
    wrong = [k for k, t in fields.items() if not isinstance(obj, dict) or not isinstance(obj.get(k), t)]
    if wrong:
        raise DamagedFileError(f"The {kind} {path} is no clbench checkpoint of this version (missing or malformed: "
                               f"{', '.join(wrong)}).")
    return obj


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
        """The latest resume point (the fresh start when nothing was saved yet). A damaged
        step checkpoint is set aside for the last task boundary (``ResumePoint.fallback``
        says so); a damaged boundary checkpoint raises :class:`DamagedFileError`."""
        try:
            boundary = self._read(BOUNDARY)
        except DamagedFileError as exc:
            raise DamagedFileError(
                f"{exc} Resuming needs it: delete it to resume from the first task (the finished tasks are trained "
                f"again), or start a new run.") from None
        done = boundary["tasks_done"] if boundary else 0
        fallback = None
        try:
            step = self._read(STEP)
        except DamagedFileError as exc:
            step = None
            where = f"the end of task {done} (the last task boundary)" if done else "the start of the run"
            fallback = f"{exc} It is ignored: the run resumes from {where}."
        if step is not None and (step["task"] != done or step.get("version") != VERSION):
            step = None  # left over from a finished task (the boundary is newer) or an older clbench
        return ResumePoint(done, boundary["model"] if boundary else None, boundary["rng"] if boundary else None, step,
                           fallback)

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.directory / name if self.directory else None
        if path is None or not path.exists():
            return None
        return read_checkpoint(path, _FIELDS[name])

    def discard(self) -> None:
        """Remove the checkpoints (a complete run has nothing to resume)."""
        if self.enabled and self.dist.is_main and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
