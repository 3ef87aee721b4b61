"""``clbench sweep``: many runs from one command or a sweep file (see :mod:`clbench.sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli_common import app, console, friendly, parse_seeds, print_unfinished, split_list


def _coerce_scalar(text: str) -> Any:
    """Command-line values for submitit parameters: int, float, bool or string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@app.command()
@friendly
def sweep(
    file: Annotated[Path | None, typer.Argument(help="YAML sweep file (methods, benchmarks, seeds, presets, set, grid, executor, workers, slurm). Flags override its values.")] = None,
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods.")] = "",
    benchmarks: Annotated[str, typer.Option("--benchmarks", "-b", help="Comma-separated benchmarks (default: shapes).")] = "",
    seeds: Annotated[str, typer.Option("--seeds", "-s", help="Comma-separated seeds (default: 1993).")] = "",
    presets: Annotated[str, typer.Option(help="Comma-separated presets; 'default' is the pair's default preset.")] = "",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override for every run: section.key=value (repeatable).")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="Values to cross: section.key=v1,v2 (repeatable).")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Results directory (default: ./results).")] = None,
    executor: Annotated[str | None, typer.Option(help="local (worker processes; default), slurm, submitit-local or inline.")] = None,
    workers: Annotated[int | None, typer.Option(help="Runs at once (local: default one per GPU, else 1; slurm: array parallelism).")] = None,
    slurm: Annotated[list[str] | None, typer.Option("--slurm", help="submitit parameter, e.g. --slurm slurm_partition=gpu --slurm gpus_per_node=1 --slurm timeout_min=240.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run, skip or resume; run nothing.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for slurm jobs and report them (--no-wait: submit and exit).")] = True,
) -> None:
    """Run many (method x benchmark x seed x preset x grid) runs; finished runs are skipped,
    unfinished ones resumed, failures reported at the end."""
    from .config import parse_set
    from .sweep import SweepSpec, decide, existing_runs, expand, run_sweep

    spec = SweepSpec.from_file(file) if file else SweepSpec(methods=[])
    if methods:
        spec.methods = split_list(methods)
    if benchmarks:
        spec.benchmarks = split_list(benchmarks)
    if seeds:
        spec.seeds = parse_seeds(seeds)
    if presets:
        spec.presets = [None if p == "default" else p for p in split_list(presets)]
    spec.set_args = {**spec.set_args, **dict(parse_set(set_ or []))}
    spec.grid = {**spec.grid, **{k: split_list(v) for k, v in parse_set(grid, "--grid")}}
    if output_dir is not None:
        spec.output_dir = str(output_dir)
    if executor is not None:
        spec.executor = executor
    if workers is not None:
        spec.workers = workers
    spec.slurm = {**spec.slurm, **{k: _coerce_scalar(v) for k, v in parse_set(slurm, "--slurm")}}
    if "engine.progress" not in {**spec.set, **spec.set_args}:
        spec.set_args["engine.progress"] = False

    jobs = expand(spec)
    runs = existing_runs(Path(spec.output_dir))
    actions = [decide(job, runs)[0] for job in jobs]
    counts = {a: actions.count(a) for a in ("start", "resume", "skip")}
    console.print(f"sweep: {len(jobs)} runs ({counts['start']} to start, {counts['resume']} to resume, "
                  f"{counts['skip']} complete already) · executor {spec.executor} · {spec.output_dir}", highlight=False)
    if dry_run:
        print_unfinished([Path(spec.output_dir)])
        table = Table(title="planned runs")
        for col in ("run", "key", "action"):
            table.add_column(col)
        for job, action in zip(jobs, actions):
            table.add_row(job.label, job.key, action)
        console.print(table)
        return
    outcomes, sweep_dir = run_sweep(spec, jobs, wait=wait, runs=runs,
                                    show=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    console.print(outcome_table(outcomes))
    failed = [o for o in outcomes if o["status"] in ("failed", "interrupted", "not started", "busy")]
    for o in failed:
        console.print(f"[red]{o['status']}[/]: {o['label']}\n  {o['error']}", highlight=False, soft_wrap=True)
    console.print(f"outcomes: {sweep_dir / 'outcomes.json'}", highlight=False)
    if failed:
        raise typer.Exit(1)


def outcome_table(outcomes: list[dict[str, Any]]) -> Table:
    table = Table(title="sweep outcomes")
    for col in ("run", "status", "Acc", "AAA", "run dir"):
        table.add_column(col)
    for o in outcomes:
        acc, aaa = o.get("acc"), o.get("aaa")
        table.add_row(o["label"], o["status"], "–" if acc is None else f"{acc:.2f}", "–" if aaa is None else f"{aaa:.2f}",
                      str(o.get("run_dir") or o.get("slurm_job") or ""))
    return table
