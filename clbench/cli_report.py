"""The ``report`` and ``landscape`` commands (attached to :data:`clbench.cli_common.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli_common import app, console, err_console, friendly, print_unfinished, split_list
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
    from .report.efficiency import to_rich as efficiency_rich

    for table in rep.efficiency:
        rich_table = efficiency_rich(table)
        if console.is_terminal:
            console.print(rich_table)
        else:  # piped: as wide as the table needs (print(width=) cannot exceed the console's width)
            wide = console.measure(rich_table, options=console.options.update(max_width=1000)).maximum
            Console(file=console.file, width=max(console.width, wide)).print(rich_table)
    for note in rep.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    if rep.collection.skipped:
        err_console.print(f"[yellow]{rep.collection.skipped_summary()}[/] Details in {out_dir / 'tables.md'}.", highlight=False)
    print_unfinished(paths)
    write(rep, out_dir, plots=plots, html=html, source=", ".join(str(p) for p in paths))
    console.print(f"wrote {len(rep.files)} files to {out_dir}" + (f"; open {out_dir / 'index.html'}" if html else ""),
                  highlight=False)


@app.command()
@friendly
def clean(
    results_dir: Annotated[list[Path] | None, typer.Argument(help="Directories to look in; default: results.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Delete the unfinished run directories listed.")] = False,
    idle: Annotated[float, typer.Option(help="With --remove: only directories nothing was written to for this many "
                                             "hours (a run still going is never removed).", min=0)] = 24.0,
) -> None:
    """List run directories of killed, stopped or failed runs (and leftover checkpoints of complete ones); --remove deletes them."""
    from rich.table import Table

    from .housekeeping import remove as remove_dir
    from .housekeeping import summary, unfinished_runs

    paths = list(results_dir or [Path("results")])
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p} does not exist. Pass the directory your runs wrote to (engine.output_dir, default 'results').")
    found = unfinished_runs(paths)
    if not found:
        console.print(f"No unfinished run directories under {', '.join(map(str, paths))}.", highlight=False)
        return
    table = Table(title=summary(found))
    for col in ("run directory", "state", "idle"):
        table.add_column(col)
    for item in found:
        table.add_row(str(item.run_dir), item.state, f"{item.idle_s / 3600:.1f} h")
    console.print(table)
    if not remove:
        console.print("Continue one with 'clbench run --resume RUN_DIR', or delete them with --remove "
                      "(a complete run loses only its leftover checkpoint/).", highlight=False)
        return
    kept = [item for item in found if item.idle_s < idle * 3600]
    for item in found:
        if item not in kept:
            remove_dir(item)
    console.print(f"Removed {len(found) - len(kept)} of {len(found)}.", highlight=False)
    if kept:
        console.print(f"Kept {len(kept)} written to in the last {idle:g} h (maybe still running); pass --idle 0 to "
                      f"remove them too.", highlight=False)


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


@app.command()
@friendly
def landscape(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (the one holding record.json and state/).")],
    tasks: Annotated[str, typer.Option(help="Line between the solutions after these two tasks (1 = first task); 'none' to skip.")] = "1,2",
    plane: Annotated[str, typer.Option(help="Plane through the solutions after three tasks, e.g. 1,2,3; 'none' to skip.")] = "1,2,3",
    points: Annotated[int, typer.Option(help="Points on the line (SD-LoRA Fig. 4: 11).")] = 11,
    range_: Annotated[str, typer.Option("--range", help="λ range of the line, 'start,end' (0 = first solution, 1 = second).")] = "0,1",
    grid: Annotated[int, typer.Option(help="Plane grid points per axis.")] = 21,
    margin: Annotated[float, typer.Option(help="Plane margin around the three solutions, as a fraction of their extent.")] = 0.25,
    head: Annotated[str, typer.Option(help="Grown tensors (heads): 'target' takes them from the later solution for every point "
                                           "(the default); 'interpolate' interpolates the block all solutions share.")] = "target",
    device: Annotated[str, typer.Option(help="Device for evaluation: auto, cpu, cuda, cuda:N.")] = "auto",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: RUN_DIR/landscape).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on a terminal.")] = True,
) -> None:
    """Loss and accuracy along the line between two task solutions of a run, and on the plane through three."""
    import numpy as np

    from .engine.progress import ProgressReporter
    from .records import RECORD_NAME
    from .report.landscape_run import compute, save

    if not (run_dir / RECORD_NAME).is_file():
        raise ConfigError(f"{run_dir} holds no {RECORD_NAME}. Pass a run directory, e.g. results/shapes/lora/<run>/.")
    if head not in ("target", "interpolate"):
        raise ConfigError(f"--head must be 'target' or 'interpolate', got '{head}'.")
    if points < 2 or grid < 2:
        raise ConfigError("--points and --grid must be at least 2.")
    line = None if tasks.strip().lower() == "none" else _tasks(tasks, "--tasks")
    triple = None if plane.strip().lower() == "none" else _tasks(plane, "--plane")
    if line is not None and len(line) != 2:
        raise ConfigError(f"--tasks takes two tasks, e.g. --tasks 1,2; got '{tasks}'.")
    if triple is not None and len(triple) != 3:
        raise ConfigError(f"--plane takes three tasks, e.g. --plane 1,2,3; got '{plane}'.")
    lo, hi = _range(range_, "--range")
    with ProgressReporter(err_console, enabled=progress) as reporter:
        result = compute(run_dir, tuple(line) if line else None, tuple(triple) if triple else None,
                         lambdas=np.linspace(lo, hi, points), grid=grid, margin=margin, grown=head, device=device,
                         progress=reporter)
    files = save(result, out or run_dir / "landscape")
    meta = result.meta
    if "line" in meta:
        ln = meta["line"]
        console.print(f"line T{ln['from_task']} → T{ln['to_task']}: {len(ln['interpolated'])} tensors "
                      f"({ln['interpolated_numel']:,} values) interpolated, distance {ln['distance']:.4g}", highlight=False)
        for check in ln["endpoints"]:
            mark = "[green]matches[/]" if check["match"] else "[red]differs from[/]"
            console.print(f"  λ={check['lambda']:g} (classes seen at T{check['task']}): {check['correct']} correct, "
                          f"{mark} the record's {check['recorded_correct']}")
        bad = {c["lambda"] for c in ln["endpoints"] if not c["match"]}
        run_engine = meta["run_engine"]
        if bad and run_engine.get("autocast") != meta["autocast"]:
            console.print(f"  (the run evaluated with {run_engine.get('autocast')} on {run_engine.get('device')}, this "
                          f"with {meta['autocast']} on {meta['device']}: use the same to reproduce it exactly)")
        elif bad == {0.0} and meta["grown"] == "target":
            console.print("  (the later task changed the earlier classes' head rows, as full fine-tuning does; "
                          "--head interpolate interpolates them too)")
    if "plane" in meta:
        pl = meta["plane"]
        console.print(f"plane through T{', T'.join(map(str, pl['tasks']))}: {pl['grid']}×{pl['grid']} grid, "
                      f"{pl['interpolated_numel']:,} values per point", highlight=False)
    console.print(f"{meta['seconds']:.1f}s on {meta['device']}; wrote {len(files)} files to {files[0].parent}", highlight=False)
