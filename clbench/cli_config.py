"""The ``config`` command: every run's resolved configuration, each value with its source
(attached to :data:`clbench.cli_common.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import app, friendly, load_config_file, parse_seeds, split_list
from .errors import ConfigError


@app.command()
@friendly
def config(
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated method names (see 'clbench list').")] = "",
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="Benchmark name; default: the embedded 'shapes'.")] = "shapes",
    seeds: Annotated[str, typer.Option("--seeds", "-s", help="Comma-separated seeds (only the seed differs between them).")] = "1993",
    preset: Annotated[str | None, typer.Option(help="Named preset, as in 'clbench run'.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML file of config sections, applied before --set.")] = None,
) -> None:
    """Print the fully resolved configuration of each run, every value with its source
    (default, benchmark, method, preset, file, --set) as a comment, as YAML that --config
    accepts back. Nothing is loaded or written."""
    typer.echo(resolved_yaml(methods, benchmark, seeds, preset, set_, config_file), nl=False)


def resolved_yaml(methods: str, benchmark: str, seeds: str, preset: str | None, set_: list[str] | None,
                  config_file: Path | None) -> str:
    from .config import parse_set
    from .resolve import resolve, to_yaml

    names = split_list(methods)
    if not names:
        raise ConfigError("No methods given. Pass --methods, e.g. --methods sdlora,inflora (see 'clbench list').")
    overrides, file_overrides = parse_set(set_ or []), load_config_file(config_file)
    return to_yaml([resolve(m, benchmark, s, preset, overrides, names, file_overrides=file_overrides)
                    for m in names for s in parse_seeds(seeds)])
