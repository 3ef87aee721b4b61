"""``clbench data``: list, check, download and prepare the real benchmarks; time the data path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from .cli_common import app, console, err_console, friendly
from .errors import ConfigError, DataError

data_app = typer.Typer(
    help="Real benchmarks: where their files go ('list'), verify them ('check'), fetch them ('download'), "
         "build the decoded cache that makes loading fast ('prepare'), and time the data path ('speed').",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Folder holding the datasets (default: $CLBENCH_DATA_ROOT).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Benchmark option, e.g. benchmark.split=coda (repeatable).")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Where decoded caches live (default: $CLBENCH_CACHE_DIR or ~/.cache/clbench/data).")]


def real_benchmark(name: str, data_root: Path | None, set_: list[str] | None, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """(benchmark instance, its resolved config): benchmark defaults, then ``--set`` values."""
    from .benchmarks.real import RealBenchmark
    from .config import apply_values, check_options, parse_set
    from .registry import BENCHMARKS

    cls = BENCHMARKS.get(name)
    if not issubclass(cls, RealBenchmark):
        real = [n for n in BENCHMARKS.names() if issubclass(BENCHMARKS.get(n), RealBenchmark)]
        raise ConfigError(f"'{name}' is generated, not read from disk; 'clbench data' handles {', '.join(real)}.")
    values: dict[str, Any] = {k.split(".", 1)[1]: v for k, v in cls.defaults.items() if k.startswith("benchmark.")}
    for key, value in parse_set(set_ or []):
        section, _, field = key.partition(".")
        if section != "benchmark" or not field:
            raise ConfigError(f"'clbench data' takes benchmark options only (--set benchmark.KEY=VALUE), got '{key}'.")
        values[field] = value
    if data_root is not None:
        values["data_root"] = str(data_root)
    if cache_dir is not None:
        values["cache_dir"] = str(cache_dir)
    cfg = apply_values(cls.Config(), values, "benchmark")
    check_options(cfg, "benchmark")
    return cls(), cfg


def _progress(transfer: bool = False) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if transfer else [MofNCompleteColumn()]
    return Progress(*columns, TimeRemainingColumn(), console=err_console, transient=True)


@data_app.command("list")
@friendly
def list_(data_root: DataRoot = None) -> None:
    """Every real benchmark: its default split, the expected layout, and whether it is in the data root."""
    import os

    from .benchmarks.real import ENV_DATA_ROOT, RealBenchmark
    from .registry import BENCHMARKS

    root = data_root or (Path(os.environ[ENV_DATA_ROOT]) if os.environ.get(ENV_DATA_ROOT) else None)
    table = Table(title=f"Real benchmarks (data root: {root or 'not set; --data-root or ' + ENV_DATA_ROOT})", title_justify="left")
    for col in ("benchmark", "expected under the data root", "files", "found"):
        table.add_column(col, overflow="fold")
    for name in BENCHMARKS.names():
        cls = BENCHMARKS.get(name)
        if not issubclass(cls, RealBenchmark):
            continue
        bench, cfg = real_benchmark(name, root, None)
        sources = bench.sources(cfg)
        files = ", ".join(f"{s.filename}" + ("" if s.url else " (by hand)") for s in sources[:3])
        files += f" and {len(sources) - 3} more" if len(sources) > 3 else ""
        found = "–"
        if root is not None:
            hits = [n for n in bench.dirnames(cfg) if (root / n).is_dir()]
            found = f"yes ({hits[0]})" if hits else "no"
        table.add_row(name, bench.layout(cfg), files, found)
    console.print(table)
    console.print("Other splits: --set benchmark.split=... (see README, 'Real benchmarks'). "
                  "'clbench data check NAME' verifies a dataset; 'clbench data download NAME' fetches it.")


@data_app.command()
@friendly
def check(
    benchmark: Annotated[str, typer.Argument(help="Benchmark name, e.g. imagenet_r.")],
    data_root: DataRoot = None,
    set_: SetOpt = None,
    cache_dir: CacheDir = None,
    quick: Annotated[bool, typer.Option("--quick", help="Skip decoding every image.")] = False,
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 8,
) -> None:
    """Find the dataset, verify layout, counts and checksums, decode every image; say what is wrong and how to fix it."""
    bench, cfg = real_benchmark(benchmark, data_root, set_, cache_dir)
    with _progress() as progress:
        task = progress.add_task(f"decoding {benchmark} images", total=None)

        def advance(n: int) -> None:
            progress.update(task, advance=n)

        findings = bench.check(cfg, decode=not quick, workers=workers, on_progress=advance)
    table = Table(title=f"clbench data check {benchmark}", title_justify="left", show_lines=False)
    for col in ("", "check", "result"):
        table.add_column(col, overflow="fold")
    for f in findings:
        table.add_row("[green]ok[/]" if f.ok else "[red]FAIL[/]", f.what, f.detail if f.ok else f.detail.splitlines()[0].split(". ")[0])
    console.print(table)
    problems = [f for f in findings if not f.ok]
    for f in problems:
        err_console.print(f"[bold red]{f.what}:[/] {f.detail}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    console.print(f"{benchmark}: everything checked is in order.")


@data_app.command()
@friendly
def download(
    benchmark: Annotated[str, typer.Argument(help="Benchmark name, e.g. cifar100.")],
    data_root: DataRoot = None,
    set_: SetOpt = None,
    archive: Annotated[list[Path] | None, typer.Option("--archive", help="An archive you downloaded by hand: verify and unpack it (repeatable).")] = None,
    mirror: Annotated[str | None, typer.Option(help="Base URL of a mirror holding the same file names.")] = None,
    keep_archive: Annotated[bool, typer.Option(help="Keep downloaded archives after unpacking.")] = False,
    force: Annotated[bool, typer.Option(help="Download even when the dataset is already in place.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Fetch a benchmark's files where a public URL exists (resumable, checksummed) and unpack them into the data root."""
    from .data.download import install

    bench, cfg = real_benchmark(benchmark, data_root, set_)
    if not cfg.data_root:
        import os

        from .benchmarks.real import ENV_DATA_ROOT

        if not os.environ.get(ENV_DATA_ROOT):
            raise DataError(f"Say where the data goes: --data-root DIR (or set {ENV_DATA_ROOT}).")
        cfg.data_root = os.environ[ENV_DATA_ROOT]
    root = Path(cfg.data_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if not force and not archive:
        try:
            bench.summary(cfg)
            console.print(f"{benchmark} is already in place under {root}; nothing to download (--force downloads anyway).")
            return
        except DataError:
            pass
    by_name = {Path(a).name: Path(a) for a in archive or []}
    sources = bench.sources(cfg)
    unknown = [n for n in by_name if n not in {s.filename for s in sources}]
    if unknown and len(sources) == 1 and len(by_name) == 1:  # a renamed single archive
        by_name = {sources[0].filename: next(iter(by_name.values()))}
    elif unknown:
        raise DataError(f"--archive {', '.join(unknown)}: {benchmark} expects {', '.join(s.filename for s in sources)}.")
    for src in sources:
        target = root / src.subdir / src.filename
        if not src.unpack and target.is_file() and src.filename not in by_name:
            from .data.download import verify

            verify(target, src)
            console.print(f"  {src.filename}: already present and verified")
            continue
        if by_name and src.filename not in by_name and src.url is None:
            continue
        with (_progress(transfer=True) if progress else _NoProgress()) as bar:
            task = bar.add_task(f"{src.filename}", total=None)
            result = install(src, root, archive=by_name.get(src.filename), mirror=mirror, keep_archive=keep_archive,
                             on_progress=lambda done, total: bar.update(task, completed=done, total=total))
        state = "checksum verified" if result["verified"] else f"no published checksum; sha256 {result['sha256']}"
        console.print(f"  {src.filename}: {state}; in {result['into']}", highlight=False)
    try:
        console.print(f"{benchmark}: {bench.summary(cfg)} in place.")
    except DataError as exc:
        raise DataError(f"The files are unpacked, but {benchmark} is not complete yet: {exc}") from None


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


@data_app.command()
@friendly
def prepare(
    benchmark: Annotated[str, typer.Argument(help="Benchmark name, e.g. imagenet_r.")],
    data_root: DataRoot = None,
    set_: SetOpt = None,
    cache_dir: CacheDir = None,
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 8,
) -> None:
    """Build the decoded cache (images decoded once and resized, packed as uint8): runs then load several times faster."""
    from .data.cache import build_cache, cache_root

    bench, cfg = real_benchmark(benchmark, data_root, set_, cache_dir)
    if bench.stored_decoded:
        console.print(f"{benchmark} is stored decoded already; it needs no cache.")
        return
    lists = bench.lists(cfg)
    pipe = bench.pipeline(cfg)
    with _progress() as progress:
        task = progress.add_task(f"decoding {benchmark}", total=len(lists.train) + len(lists.test))
        directory, meta = build_cache(benchmark, lists, pipe, cache_root(cfg.cache_dir), workers,
                                      on_progress=lambda n: progress.update(task, advance=n))
    console.print(f"decoded cache of {benchmark} ({lists.split_id}): {directory}, {meta['bytes'] / 1e9:.2f} GB, "
                  f"shorter side {pipe.resize} px ({pipe.eval_interp}), built in {meta['seconds']}s.", highlight=False)
    if meta["bad"]:
        listed = "; ".join(f"{b['split']}/{b['path']}: {b['problem']}" for b in meta["bad"])
        raise DataError(f"{len(meta['bad'])} image(s) could not be decoded and are not in the cache: {listed}. Runs "
                        f"stop on them unless --set benchmark.skip_bad_images=true; or replace the files and run "
                        f"'clbench data prepare {benchmark}' again.")


@data_app.command()
@friendly
def speed(
    images: Annotated[int, typer.Option(help="Number of images to time.")] = 512,
    workers: Annotated[str, typer.Option(help="Comma-separated data-loader worker counts (0: in-process).")] = "0",
    benchmark: Annotated[str | None, typer.Option(help="Time a real benchmark's files instead of synthetic 500x375 JPEGs.")] = None,
    data_root: DataRoot = None,
    set_: SetOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Images per second of the decoded cache against the plain PIL file loader (same files, same transforms)."""
    from .data import speed as speed_mod

    try:
        worker_counts = [int(w) for w in workers.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--workers must be comma-separated integers, e.g. 0,4; got '{workers}'.") from None
    lists, transforms, size, pipe = None, "pilot", 224, None
    if benchmark:
        bench, cfg = real_benchmark(benchmark, data_root, set_)
        if bench.stored_decoded:
            raise ConfigError(f"{benchmark} is stored decoded already (no image files, no cache to compare): "
                              f"'clbench data speed' times image-file benchmarks such as imagenet_r.")
        lists, transforms, size, pipe = bench.lists(cfg), cfg.transforms, cfg.image_size, bench.pipeline(cfg)
    result = speed_mod.run(images, workers=worker_counts, lists=lists, transforms=transforms, image_size=size,
                           pipe=pipe, log=err_console.print)
    table = Table(title=f"data path: {result['source']}, {result['images']} images, {transforms} transforms, "
                        f"{size} px", title_justify="left")
    for col in ("transform", "workers", "files img/s", "cache img/s", "speed-up"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(row["transform"], str(row["workers"]), f"{row['files_img_s']:.0f}", f"{row['cache_img_s']:.0f}",
                      f"{row['speedup']:.1f}x")
    console.print(table)
    if json_out:
        from .records import atomic_write_text

        atomic_write_text(json_out, json.dumps(result, indent=1))
