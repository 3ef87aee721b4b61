"""What every ``clbench`` command module shares: the Typer :data:`app` the commands attach
to, the consoles, :func:`friendly` (user errors become a message, not a traceback) and the
parsers of common options. Command modules import this, never :mod:`clbench.cli`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .errors import ClbenchError, ConfigError

app = typer.Typer(
    help="clbench: benchmark continual-learning methods on pretrained vision transformers.\n\n"
    "Start with 'clbench run --methods sdlora,inflora' (embedded benchmark, a few minutes on a CPU), "
    "then 'clbench report'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def versions() -> str:
    """clbench's version and those of the libraries its results depend on (one line each)."""
    import platform
    from importlib import metadata

    lines = []
    for pkg in ("clbench", "torch", "torchvision", "timm", "numpy"):
        try:
            lines.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{pkg} (not installed)")
    return "\n".join(lines + [f"python {platform.python_version()}"])


def _print_version(value: bool) -> None:
    if value:
        typer.echo(versions())
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help=(
        "Print the versions of clbench, torch, timm, numpy and python."))] = False) -> None:
    """clbench: benchmark continual-learning methods on pretrained vision transformers."""


def friendly(func: Callable) -> Callable:
    """Decorator: user errors become a message and an exit code, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClbenchError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            detail = str(exc) or "Finished tasks are kept in the run record (status 'interrupted')."
            err_console.print(f"[yellow]Interrupted.[/] {detail}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def print_unfinished(paths: list[Path]) -> None:
    """One line on stderr when run directories under ``paths`` are unfinished."""
    from .housekeeping import summary, unfinished_runs

    line = summary(unfinished_runs(paths))
    if line:
        where = " ".join(str(p) for p in paths)
        err_console.print(f"[yellow]{line}.[/] List them with 'clbench clean {where}'; remove them with "
                          f"'clbench clean {where} --remove' (or continue one with 'clbench run --resume RUN_DIR').",
                          highlight=False, soft_wrap=True)


def split_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in split_list(text)]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, e.g. --seeds 1993,1994,1995; got '{text}'.") from None


def load_config_file(path: Path | None) -> list[tuple[str, Any]]:
    """Dotted overrides from a YAML file of sections (engine/train/backbone/benchmark/method)."""
    if path is None:
        return []
    import yaml

    from .config import flatten

    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}. Pass a YAML file of sections, e.g. 'train: {{lr: 0.01}}'.") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections (train:, method:, ...).")
    return flatten(tree)


