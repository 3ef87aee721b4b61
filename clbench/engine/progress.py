"""Progress display: rich bars on a terminal, silent otherwise."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressReporter:
    """Bars for training and data passes plus one-line task summaries."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Progress | None = None

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

    def bar(self, description: str, total: int) -> TaskID | None:
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
