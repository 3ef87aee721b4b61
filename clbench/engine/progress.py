"""Progress display: rich bars on a terminal, one line per epoch otherwise.

On a terminal every loop and data pass has a bar that advances every step (counting steps
needs nothing from the device) with its ETA; the loss beside it is the last one the loop
synced anyway (every few steps). When the output is not a terminal (a pipe, a sweep's log
file, a SLURM job) each finished epoch prints one line instead::

    task 2/5 train · epoch 3/10 · loss 0.4321 · lr 0.01 · 1234 img/s · task 0:12 ETA 0:28 · run 1:05 ETA 3:40

The run's ETA assumes the remaining tasks cost what the finished ones did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour); ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(elapsed: float, fraction: float) -> float | None:
    """Time left when ``fraction`` of the work took ``elapsed`` seconds (None before any)."""
    if fraction <= 0:
        return None
    return elapsed * max(0.0, 1.0 - fraction) / fraction


@dataclass
class EpochStats:
    """What a loop hands over after each epoch (host values, synced once at the epoch end)."""

    description: str  # e.g. "task 2/5 train" or "task 2: <phase>"
    epoch: int  # 0-based
    epochs: int
    loss: float  # mean over the epoch's steps
    lr: float
    images: int  # images trained on in the epoch (all ranks)
    seconds: float  # the epoch's wall time
    loop_seconds: float  # the loop's wall time so far (this process)
    loop_epochs_done: int  # epochs this process ran of the loop (a resumed loop counts from there)


class ProgressReporter:
    """Bars for training and data passes, epoch lines when not on a terminal, task summaries.

    ``enabled=False`` silences bars and epoch lines; :meth:`log` lines (task summaries) are
    always printed. ``lines`` forces epoch lines on (True) or off (False) whatever the console.
    """

    def __init__(self, console: Console | None = None, enabled: bool = True, lines: bool | None = None):
        self.console = console or Console(stderr=True)
        terminal = self.console.is_terminal
        self.enabled = enabled and terminal and not lines  # bars
        self.lines = (enabled and not terminal) if lines is None else lines
        self._progress: Progress | None = None
        self._run_start = self._task_start = time.perf_counter()
        self._n_tasks, self._first_task, self._task = 1, 0, 0

    def __enter__(self) -> ProgressReporter:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    # ------------------------------------------------------------------ the run's clock
    def run_started(self, n_tasks: int, tasks_done: int = 0) -> None:
        """A run (or its resumed part) starts with ``tasks_done`` of ``n_tasks`` finished."""
        self._run_start = time.perf_counter()
        self._n_tasks, self._first_task, self._task = n_tasks, tasks_done, tasks_done

    def task_started(self, index: int) -> None:
        self._task, self._task_start = index, time.perf_counter()

    def epoch_line(self, stats: EpochStats) -> str:
        """The line printed for an epoch when not on a terminal."""
        now = time.perf_counter()
        fraction = (stats.epoch + 1) / max(1, stats.epochs)
        # the loop's remaining epochs at the pace of those this process ran
        task_left = (stats.epochs - stats.epoch - 1) * stats.loop_seconds / max(1, stats.loop_epochs_done)
        todo = max(1, self._n_tasks - self._first_task)
        run_fraction = (self._task - self._first_task + fraction) / todo
        rate = stats.images / stats.seconds if stats.seconds > 0 else float("nan")
        return (f"{stats.description} · epoch {stats.epoch + 1}/{stats.epochs} · loss {stats.loss:.4f} · "
                f"lr {stats.lr:.3g} · {rate:.0f} img/s · task {duration(now - self._task_start)} "
                f"ETA {duration(task_left)} · run {duration(now - self._run_start)} "
                f"ETA {duration(eta(now - self._run_start, run_fraction))}")

    def epoch_done(self, stats: EpochStats) -> None:
        if self.lines:
            self.console.print(escape(self.epoch_line(stats)), highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ bars
    def bar(self, description: str, total: int | None) -> TaskID | None:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, info="")

    def advance(self, bar: TaskID | None, steps: int = 1, info: str | None = None) -> None:
        if self._progress is None or bar is None:
            return
        fields = {"info": info} if info is not None else {}
        self._progress.update(bar, advance=steps, **fields)

    def done(self, bar: TaskID | None) -> None:
        if self._progress is not None and bar is not None:
            self._progress.remove_task(bar)

    def log(self, message: str) -> None:
        """A line that stays (task summaries); printed above the bars."""
        self.console.print(message, highlight=False)
