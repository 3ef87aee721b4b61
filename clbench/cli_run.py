"""The ``run``, ``list``, ``bench`` and ``pretrain-embedded`` commands (attached to
:data:`clbench.cli_common.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_common import app, console, err_console, friendly, load_config_file, parse_seeds, split_list
from .errors import ConfigError


@app.command()
@friendly
def run(
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated method names (see 'clbench list').")] = "",
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name; default: the embedded 'shapes'.")] = "shapes",
    seeds: Annotated[str, typer.Option("--seeds", "-s", help="Comma-separated seeds; each seeds the class order and training.")] = "1993",
    preset: Annotated[str | None, typer.Option(help="Named preset (a paper's hyperparameters), e.g. paper; see 'clbench list --presets'.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable), e.g. train.lr=0.01, sdlora.rank=8.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of config sections, applied before --set.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Where run directories go (default: ./results).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Dataset root for real benchmarks (sets benchmark.data_root).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    resume: Annotated[Path | None, typer.Option(
        "--resume", metavar="RUN_DIR",
        help="Continue the killed or interrupted run in RUN_DIR from its last checkpoint "
             "(--set may change train.* and engine.* values).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything, print the resolved configuration "
                                          "(as 'clbench config') and the runs it would start; write nothing.")] = False,
) -> None:
    """Train and evaluate methods on a benchmark; write one record per run and print a table.

    Config sections (--set section.key=value, or a --config YAML file of them): engine (device,
    precision, workers, output directory), train (epochs, optimiser, lr, schedule), backbone (timm
    arch.tag, weights, img_size), benchmark (n_tasks, init_cls, class order, data), and method,
    the method's own options (--set method.key=... or <method>.key=...). 'clbench config
    --methods M' prints every key with its value and source; 'clbench list --method M' explains
    the method's options.

    Under torchrun (torchrun --nproc-per-node=N -m clbench.cli run ...) every run uses N
    processes (DDP); rank 0 prints and writes."""
    from .config import parse_set
    from .engine.dist import is_main_process
    from .engine.progress import ProgressReporter
    from .experiment import DataCache, execute, plan

    file_overrides, overrides = load_config_file(config), parse_set(set_ or [])
    main_rank = is_main_process()
    if resume is not None:
        if dry_run:
            raise ConfigError("--dry-run does not apply to --resume; 'clbench report RUN_DIR' shows a recorded run.")
        if methods or output_dir is not None or data_root is not None or preset is not None:
            raise ConfigError("--resume continues one run as it was configured; drop --methods, --preset, "
                              "--output-dir and --data-root (use --set train.*=... to change training values).")
        _resume(resume, file_overrides + overrides + ([("engine.device", device)] if device else [])
                + ([] if progress else [("engine.progress", "false")]), progress and main_rank)
        return
    if output_dir is not None:
        overrides.append(("engine.output_dir", str(output_dir)))
    if device is not None:
        overrides.append(("engine.device", device))
    if data_root is not None:
        overrides.append(("benchmark.data_root", str(data_root)))
    if not progress:
        overrides.append(("engine.progress", "false"))
    cache = DataCache()
    runs = plan(split_list(methods), benchmark, parse_seeds(seeds), preset, overrides, cache,
                file_overrides=file_overrides, write_check=not dry_run)
    if dry_run:
        print_dry_run(runs)
        return
    records = []
    with ProgressReporter(err_console, enabled=runs[0].config.engine.progress and main_rank) as reporter:
        for run_ in runs:
            cfg = run_.config
            if main_rank:
                reporter.log(f"[bold]{cfg.method}[/] on {cfg.benchmark} (seed {cfg.seed}"
                             f"{', preset ' + cfg.preset if cfg.preset else ''})")
            records.append(execute(run_, reporter, cache))
    if main_rank:
        print_records(records)


def print_dry_run(runs: list) -> None:
    """The resolved configuration (YAML for --config) and, as comments, the runs 'run' would start."""
    from .resolve import to_yaml

    print(to_yaml(runs), end="")
    print(f"# --dry-run: {len(runs)} run(s) would start; nothing was written.")
    for run_ in runs:
        cfg = run_.config
        where = Path(cfg.engine.output_dir) / cfg.benchmark / cfg.method
        print(f"#   {cfg.method} seed {cfg.seed}{' preset ' + cfg.preset if cfg.preset else ''} -> {where}/<time>-s{cfg.seed}-<id>")


def print_records(records: list[dict]) -> None:
    console.print(results_table(records))
    for rec in records:
        console.print(f"  {rec['method']} seed {rec['seed']}: {Path(rec['run_dir']) / 'record.json'}", highlight=False)


def _resume(run_dir: Path, overrides: list[tuple[str, Any]], show: bool) -> None:
    from .engine.dist import is_main_process
    from .engine.progress import ProgressReporter
    from .experiment import resume
    from .records import load_record

    main_rank = is_main_process()
    done = load_record(run_dir)["status"] == "complete"  # a missing or damaged record: a clear error here
    if done and main_rank:
        console.print(f"{run_dir} is complete already; nothing to resume.", highlight=False)
    with ProgressReporter(err_console, enabled=show and not done) as reporter:
        if show and not done:
            reporter.log(f"resuming [bold]{run_dir}[/]")
        record = resume(run_dir, reporter, overrides=overrides)
    if main_rank:
        print_records([record])


def results_table(records: list[dict]) -> Table:
    """Acc/AAA/forgetting per run, as printed at the end of 'clbench run'."""
    table = Table(title="Acc, AAA (sample-weighted %), forgetting (Chaudhry), BWT")
    for col in ("method", "seed", "Acc", "AAA", "Forgetting", "BWT", "trainable", "time"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    for rec in records:
        m = rec["metrics"] or {}
        trainable = max((t["trainable_params"] for t in rec["tasks"]), default=0)
        secs = rec["timing"]["train_s"] + rec["timing"]["eval_s"]
        table.add_row(rec["method"], str(rec["seed"]), fmt(m.get("acc")), fmt(m.get("aaa")),
                      fmt(m.get("forgetting")), fmt(m.get("bwt")), f"{trainable:,}", f"{secs:.0f}s")
    return table


@app.command("list")
@friendly
def list_(
    presets: Annotated[bool, typer.Option("--presets", help="List presets (filtered by --method/--benchmark).")] = False,
    method: Annotated[str | None, typer.Option("--method", help="Show this method's options (type, default, range, help).")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="Show this benchmark's options.")] = None,
) -> None:
    """Show registered methods, benchmarks and backbones; a method's or benchmark's options
    (--method, --benchmark); presets (--presets, filtered by --method/--benchmark)."""
    from .registry import BACKBONES, BENCHMARKS, METHODS

    console = Console(width=max(_console.width, 140))  # option and preset tables are wide; keep them so in logs
    if method is not None:
        cls = METHODS.get(method)
        console.print(options_table(f"Options of method '{method}' (--set {method}.KEY=VALUE or method.KEY=VALUE)",
                                    cls.Config))
        if cls.defaults:
            console.print(f"Training defaults it sets: {', '.join(f'{k}={v}' for k, v in cls.defaults.items())}",
                          highlight=False, markup=False)
    if benchmark is not None:
        cls = BENCHMARKS.get(benchmark)
        console.print(options_table(f"Options of benchmark '{benchmark}' (--set benchmark.KEY=VALUE)", cls.Config))
        if cls.defaults:
            console.print(f"Defaults it sets: {', '.join(f'{k}={v}' for k, v in cls.defaults.items())}",
                          highlight=False, markup=False)
    if method is None and benchmark is None:
        for title, registry in (("Methods", METHODS), ("Benchmarks", BENCHMARKS), ("Backbones", BACKBONES)):
            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column("name", style="bold")
            table.add_column("description")
            for entry in registry:
                table.add_row(escape(entry.name), escape(entry.description))
            console.print(table)
        console.print("Backbones also include every timm model by its full 'arch.tag' name. "
                      "'clbench list --method M' shows a method's options.")
    if presets:
        console.print(presets_table(method, benchmark))


_console = console


def options_table(title: str, config_cls: type) -> Table:
    """Name, type, default, range and help of every option of a config dataclass."""
    from .config import describe_options
    from .resolve import yaml_scalar

    table = Table(title=title, title_justify="left")
    for col in ("option", "type", "default", "range", "help"):
        table.add_column(col, style="bold" if col == "option" else None)
    for opt in describe_options(config_cls):
        table.add_row(escape(opt.name), escape(opt.type), escape(yaml_scalar(opt.default)), escape(opt.range or "—"),
                      escape(opt.help or "—"))
    return table


def presets_table(method: str | None = None, benchmark: str | None = None) -> Table:
    """Presets of ``method`` on ``benchmark`` (either may be None: all), conditions as text."""
    from .presets import PRESETS
    from .registry import load_plugins

    load_plugins()

    def num(value: float | None) -> str:
        return "—" if value is None else f"{value:g}"

    table = Table(title="Presets" + "".join(f" · {k} {v}" for k, v in (("method", method), ("benchmark", benchmark))
                                            if v), title_justify="left")
    for col in ("name", "method", "benchmark", "when", "reported Acc", "reported AAA", "Table 5 efficiency", "source"):
        table.add_column(col)
    for p in PRESETS:
        if (method and p.method != method) or (benchmark and p.benchmark != benchmark):
            continue
        when = ", ".join(f"{k} = {v}" for k, v in p.when.items()) or "any setting"
        rep = p.reported
        unverified = " (unverified)" if rep and not rep.verified else ""
        eff = f"{p.efficiency.gflops} GFLOPs, {p.efficiency.learnable_params_m} M" if p.efficiency else "—"
        table.add_row(*(escape(str(v)) for v in (p.name, p.method, p.benchmark, when,
                                                 num(rep.acc if rep else None) + unverified,
                                                 num(rep.aaa if rep else None), eff, p.source or "—")))
    return table


@app.command("pretrain-embedded")
@friendly
def pretrain_embedded(
    out: Annotated[Path | None, typer.Option(help="Output file (default: the bundled asset in the package).")] = None,
    epochs: Annotated[int, typer.Option(help="Pretraining epochs.")] = 30,
) -> None:
    """Re-create the embedded benchmark's pretrained backbone (about 25 min on 2 CPU cores)."""
    from .benchmarks.shapes import pretrain_backbone

    digest = pretrain_backbone(str(out) if out else None, epochs=epochs, log=console.print)
    console.print(f"saved; sha256 {digest}")


@app.command()
@friendly
def bench(
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods to time.")] = "lora",
    backbone: Annotated[str, typer.Option(help="Backbone arch.tag (random weights are enough for timing).")] = "vit_base_patch16_224",
    image_size: Annotated[int, typer.Option(help="Input size of the random images.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Batch size of the timed steps.")] = 32,
    late_task: Annotated[int, typer.Option(help="1-indexed late task to time besides task 1.")] = 20,
    repeats: Annotated[int, typer.Option("--repeats", "--steps", help="Timed interleaved rounds (medians reported).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed rounds first.")] = 3,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 autocast on CUDA), fp32 or bf16.")] = None,
    loader: Annotated[bool, typer.Option(help="Also time the data loader.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's choice).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Extra config overrides (as in 'run').")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the measurements to this JSON file.")] = None,
    efficiency: Annotated[bool, typer.Option("--efficiency", help="Instead of timing: the efficiency table (GFLOPs, "
                                             "learnable parameters, stored statistics) at the late task.")] = False,
) -> None:
    """Time training steps (task 1 vs a late task), evaluation (merged, unmerged, bare
    backbone), memory and the data loader, interleaved in one process."""
    import json

    import torch

    from .bench import measure, measure_loader
    from .config import parse_set

    if threads:
        torch.set_num_threads(threads)

    overrides = [("backbone.name", backbone), ("backbone.weights", "none"), ("benchmark.image_size", image_size),
                 ("benchmark.n_tasks", late_task), ("benchmark.n_classes", 10 * late_task)] + parse_set(set_ or [])
    overrides += [("engine.device", device)] if device else []
    overrides += [("engine.precision", precision)] if precision else []
    if efficiency:
        _bench_efficiency(split_list(methods), late_task, overrides, backbone, json_out)
        return
    rows = []
    for name in split_list(methods):
        rows.append(measure(name, late_task - 1, batch_size, "random", overrides, repeats=repeats, warmup=warmup))
        err_console.print(f"  measured {name}")
    load = measure_loader("random", batch_size, overrides, repeats=max(3, repeats // 2)) if loader else None
    wide = Console(width=max(console.width, 160))  # the table has many columns; let it be wide in logs too
    wide.print(bench_table(rows, backbone))
    if load:
        wide.print(f"data loader ({load['image_size']} px, batch {batch_size}, in memory, to {load['device']}): "
                      f"{load['loader_img_s_memory']:.0f} img/s plain, {load['loader_img_s_memory_augment']:.0f} img/s "
                      f"with crop+flip ({load['augment_cost']:.2f}x slower)", highlight=False)
    if json_out:
        from .records import atomic_write_text

        atomic_write_text(json_out, json.dumps({"methods": rows, "loader": load}, indent=1))


def _bench_efficiency(methods: list[str], late_task: int, overrides: list, backbone: str, json_out: Path | None) -> None:
    """``clbench bench --efficiency``: the efficiency figures of each method at the late task."""
    import json

    from .bench import measure_efficiency
    from .errors import ClbenchError
    from .records import atomic_write_text

    rows, failed = [], []
    for name in methods:  # one method's bad input does not lose the others' figures
        try:
            rows.append(measure_efficiency(name, late_task - 1, "random", overrides))
        except ClbenchError as e:
            failed.append(name)
            err_console.print(f"  error: {name}: {e}")
            continue
        err_console.print(f"  measured {name}")
        if json_out:  # after every method, so an interrupted measurement keeps what it measured
            atomic_write_text(json_out, json.dumps(rows, indent=1))
    size = rows[0]["input_size"][-1] if rows else 0
    table = Table(title=f"clbench bench --efficiency: {backbone}, {size} px, task {late_task} "
                        f"(learnable: what that task trains, heads included)")
    for col in ("method", "GFLOPs", "learnable params (M)", "stored features (M)", "stored MB", "added params (M)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["display_name"], f"{r['gflops']:.2f}", f"{r['learnable_params'] / 1e6:.3f}",
                      f"{r['stored_values'] / 1e6:.3f}", f"{r['stored_bytes'] / 2**20:.2f}",
                      f"{r['added_params'] / 1e6:.3f}")
    Console(width=max(console.width, 120)).print(table)
    if failed:
        raise ClbenchError(f"Not measured: {', '.join(failed)} (the errors above say why and how to fix each).")


def bench_table(rows: list[dict], backbone: str) -> Table:
    """The figures of 'clbench bench' as a table (medians; ratios side by side)."""
    first = rows[0]
    where = first["device"] if first["device"] != "cpu" else f"cpu, {first['threads']} threads"
    table = Table(title=f"clbench bench: {backbone}, batch {first['batch_size']}, {where} "
                        f"({first['autocast']}), task 1 vs task {first['late_task']}")
    for col in ("method", "trainable", "step ms t1", "step ms late", "late/t1", "eval img/s merged", "unmerged",
                "bare", "merged/bare", "peak MB step/eval", "model MB"):
        table.add_column(col, justify="right")

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for r in rows:
        peak = "–" if r["peak_mb_eval_merged"] is None else \
            f"{fmt(r.get('peak_mb_step_late'), '.0f')}/{r['peak_mb_eval_merged']:.0f}"
        table.add_row(r["method"], f"{r['trainable_late']:,}", fmt(r["step_s_first"] and 1000 * r["step_s_first"], ".1f"),
                      fmt(r["step_s_late"] and 1000 * r["step_s_late"], ".1f"), fmt(r["step_late_vs_first"], ".2f"),
                      f"{r['eval_img_s_merged']:.1f}", f"{r['eval_img_s_unmerged']:.1f}", f"{r['eval_img_s_bare']:.1f}",
                      f"{r['eval_merged_vs_bare']:.2f}", peak, f"{r['late_model_mb']:.1f}")
    return table
