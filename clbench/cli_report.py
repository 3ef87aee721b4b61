"""The ``report`` and ``landscape`` commands (attached to :data:`clbench.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import app, console, err_console, friendly, split_list
from .errors import ConfigError


@app.command()
@friendly
def report(
    results_dir: Annotated[list[Path] | None, typer.Argument(help="Directories (or record.json files) to gather; default: results.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: <first results dir>/report).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the figures (PNG and PDF).")] = True,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Write the self-contained HTML page.")] = True,
) -> None:
    """Tables over seeds in the papers' layout (paper numbers beside ours), plots and an HTML page."""
    from .report.build import gather, write
    from .report.tables import to_rich

    paths = list(results_dir or [Path("results")])
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p} does not exist. Pass the directory your runs wrote to (engine.output_dir, default 'results').")
    first = paths[0] if paths[0].is_dir() else paths[0].parent
    out_dir = out or first / "report"
    rep = gather(paths)
    for table in rep.tables:
        rich_table = to_rich(table)
        # piped output: as wide as the table needs (a terminal squeezes it to fit instead)
        width = None if console.is_terminal else max(console.width, console.measure(rich_table).maximum)
        console.print(rich_table, width=width)
    for note in rep.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    if rep.collection.skipped:
        err_console.print(f"[yellow]{rep.collection.skipped_summary()}[/] Details in {out_dir / 'tables.md'}.", highlight=False)
    write(rep, out_dir, plots=plots, html=html, source=", ".join(str(p) for p in paths))
    console.print(f"wrote {len(rep.files)} files to {out_dir}" + (f"; open {out_dir / 'index.html'}" if html else ""),
                  highlight=False)


def _tasks(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in split_list(text)]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated task numbers (1 = the first task), got '{text}'.") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{what} counts tasks from 1 (the first task), got '{text}'.")
    return [v - 1 for v in values]


def _range(text: str, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in split_list(text))
    except ValueError:
        raise ConfigError(f"{what} must be two numbers 'start,end', e.g. 0,1 or -0.25,1.25; got '{text}'.") from None
    if not hi > lo:
        raise ConfigError(f"{what} must have start < end, got '{text}'.")
    return lo, hi
