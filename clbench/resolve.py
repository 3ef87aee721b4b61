"""Resolving a run's configuration, apart from running it (no torch, no engine imports).

Values are applied in layers, later winning: the dataclass defaults, the benchmark's
``defaults``, the method's ``defaults``, the preset, a ``--config`` file, ``--set`` overrides.
Overrides name a section (``train.lr=0.01``) or target one method (``sdlora.rank=8``,
``sdlora.train.lr=0.01``). Every resolved value remembers the layer it came from
(:attr:`PlannedRun.sources`), and every value is checked against its option's range
(:func:`clbench.config.check_options`) before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import (SECTIONS, BackboneConfig, EngineConfig, RunConfig, TrainConfig, apply_values, check_options,
                     field_types, to_plain)
from .errors import ConfigError
from .presets import Preset, find_preset
from .registry import BENCHMARKS, METHODS, Registry

Override = tuple[str, Any]  # (dotted key, value); values may be command-line strings
Item = tuple[str, str, Any]  # (section, key, value)

# Where a resolved value came from (PlannedRun.sources); a preset's is 'preset <name>'.
DEFAULT, BENCHMARK, METHOD, FILE, SET = "default", "benchmark", "method", "file", "--set"
RESUMABLE = ("train.", "engine.")  # what may change when a recorded run is rebuilt (resume)
FIXED = ("engine.output_dir",)  # a recorded run stays in its directory


@dataclass
class PlannedRun:
    """A fully resolved run, ready to execute."""

    config: RunConfig
    preset: Preset | None
    overrides: list[Override] = field(default_factory=list)  # file values, then --set values (as recorded)
    sources: dict[str, str] = field(default_factory=dict)  # 'train.lr' -> 'default', 'preset paper', '--set', ...


def route_overrides(overrides: Sequence[Override], method: str, selected: Sequence[str],
                    methods: Registry = METHODS) -> list[Item]:
    """(section, key, value) for the overrides that apply to ``method`` (one of ``selected``)."""
    routed = []
    for dotted, value in overrides:
        head, _, rest = dotted.partition(".")
        if head in SECTIONS:
            section, key = head, rest
        elif head in selected or head in methods:
            if head not in selected:
                raise ConfigError(f"Override '{dotted}' targets method '{head}', which is not among --methods ({', '.join(selected)}).")
            if head != method:
                continue
            sub, _, subkey = rest.partition(".")
            section, key = (sub, subkey) if sub in SECTIONS and subkey else ("method", rest)
        else:
            raise ConfigError(
                f"Unknown config section '{head}' in '{dotted}'. Use one of {', '.join(SECTIONS)} "
                f"(e.g. train.lr=0.01), or a method name to target one method (e.g. sdlora.rank=8)."
            )
        if not key or "." in key:
            raise ConfigError(f"Malformed config key '{dotted}'. Write section.key=value, e.g. train.lr=0.01.")
        routed.append((section, key, value))
    return routed


def _apply(sections: dict[str, Any], items: Sequence[Item], method: str,
           sources: dict[str, str] | None = None, source: str = "") -> None:
    for section, key, value in items:
        obj = sections[section]
        if key not in field_types(type(obj)) and section == "method":
            raise ConfigError(
                f"Method '{method}' has no option '{key}'. Its options: "
                f"{', '.join(field_types(type(obj))) or '(none)'}. To target one method use <method>.{key}=..."
            )
        sections[section] = apply_values(obj, {key: value}, section)
        if sources is not None:
            sources[f"{section}.{key}"] = source


def _split_defaults(defaults: dict[str, Any]) -> list[Item]:
    items = []
    for dotted, value in defaults.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"Default key '{dotted}' has no valid section")
        items.append((section, key, value))
    return items


def fresh_sections(method_cls: type, bench_cls: type) -> dict[str, Any]:
    """Every config section at its dataclass defaults, keyed by section name."""
    return {"engine": EngineConfig(), "train": TrainConfig(), "backbone": BackboneConfig(),
            "benchmark": bench_cls.Config(), "method": method_cls.Config()}


def check_sections(sections: dict[str, Any], method: str) -> None:
    """Every value within its option's range; method options are named ``<method>.<key>``."""
    for name, obj in sections.items():
        check_options(obj, method if name == "method" else name)


def _fit_img_size(sections: dict[str, Any], bench_cls: type, sources: dict[str, str]) -> None:
    """``backbone.img_size`` defaults to the benchmark's input size, and must equal it."""
    size = bench_cls.input_size(sections["benchmark"]) if hasattr(bench_cls, "input_size") else None
    backbone = sections["backbone"]
    if size is None:
        return
    if backbone.img_size is None:
        sections["backbone"] = apply_values(backbone, {"img_size": size}, "backbone")
        sources["backbone.img_size"] = f"{BENCHMARK} input size"
    elif backbone.img_size != size:
        raise ConfigError(
            f"backbone.img_size={backbone.img_size} but the benchmark feeds {size} px images, which the model "
            f"built for {backbone.img_size} px cannot take. Drop backbone.img_size (it defaults to the benchmark's "
            f"size; position embeddings are resized), or set --set backbone.img_size={size}"
            f"{' or --set benchmark.image_size=' + str(backbone.img_size) if hasattr(sections['benchmark'], 'image_size') else ''}.")


def run_config(method: str, benchmark: str, seed: int, preset: str | None, sections: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from the sections of :func:`fresh_sections`."""
    return RunConfig(method=method, benchmark=benchmark, seed=seed, preset=preset, engine=sections["engine"],
                     train=sections["train"], backbone=sections["backbone"], benchmark_cfg=sections["benchmark"],
                     method_cfg=sections["method"])


def resolve(method: str, benchmark: str, seed: int, preset_name: str | None,
            overrides: Sequence[Override] = (), selected: Sequence[str] | None = None, *,
            file_overrides: Sequence[Override] = (), methods: Registry = METHODS,
            benchmarks: Registry = BENCHMARKS) -> PlannedRun:
    """Resolve one run's config: defaults < benchmark < method < preset < file < ``--set``.

    ``overrides`` are the ``--set`` values, ``file_overrides`` those of a ``--config`` file;
    ``selected`` are the methods of the request (method-scoped keys may target any of them).
    """
    method_cls, bench_cls = methods.get(method), benchmarks.get(benchmark)
    selected = list(selected or [method])
    from_file = route_overrides(file_overrides, method, selected, methods)
    from_set = route_overrides(overrides, method, selected, methods)

    # The benchmark setting (e.g. n_tasks) decides which preset variant applies.
    probe = fresh_sections(method_cls, bench_cls)
    _apply(probe, [i for i in _split_defaults(bench_cls.defaults) + from_file + from_set if i[0] == "benchmark"], method)
    preset = find_preset(preset_name, method, benchmark, to_plain(probe["benchmark"]))

    sections = fresh_sections(method_cls, bench_cls)
    sources = {f"{name}.{key}": DEFAULT for name, obj in sections.items() for key in field_types(type(obj))}
    layers = [(BENCHMARK, _split_defaults(bench_cls.defaults)), (METHOD, _split_defaults(method_cls.defaults))]
    if preset is not None:
        layers.append((f"preset {preset.name}", _split_defaults(preset.values)))
    for source, items in [*layers, (FILE, from_file), (SET, from_set)]:
        _apply(sections, items, method, sources, source)
    _fit_img_size(sections, bench_cls, sources)
    check_sections(sections, method)
    config = run_config(method, benchmark, seed, preset.name if preset else None, sections)
    return PlannedRun(config, preset, [*file_overrides, *overrides], sources)


def config_from_record(record: dict[str, Any], overrides: Sequence[Override] = (), *,
                       changeable: tuple[str, ...] = RESUMABLE, methods: Registry = METHODS,
                       benchmarks: Registry = BENCHMARKS) -> RunConfig:
    """The configuration a record was run with, with ``overrides`` applied.

    Only keys under the ``changeable`` prefixes (resume: ``train.*`` and ``engine.*``) may
    change, and never ``engine.output_dir``.
    """
    method_cls, bench_cls = methods.get(record["method"]), benchmarks.get(record["benchmark"])
    try:
        sections = {name: apply_values(obj, record["config"][name], name)
                    for name, obj in fresh_sections(method_cls, bench_cls).items()}
    except ConfigError as exc:
        raise ConfigError(f"The record's configuration does not fit this clbench version ({exc}). Use the "
                          f"version that started the run (record: environment.git).") from None
    for dotted, value in overrides:
        section, _, key = dotted.partition(".")
        if not dotted.startswith(changeable) or dotted in FIXED:
            allowed = " and ".join(f"{p}*" for p in changeable)
            raise ConfigError(f"Cannot change '{dotted}' when resuming or re-evaluating a run: only {allowed} values "
                              f"(not {', '.join(FIXED)}) may change. Start a new run to change anything else.")
        sections[section] = apply_values(sections[section], {key: value}, section)
    check_sections(sections, record["method"])
    return run_config(record["method"], record["benchmark"], int(record["seed"]), record.get("preset"), sections)


def yaml_scalar(value: Any) -> str:
    """``value`` as one line of YAML flow style (``0.01``, ``null``, ``[0.9, 0.999]``, ``auto``)."""
    import yaml

    return yaml.safe_dump([to_plain(value)], default_flow_style=True, width=10**6).strip()[1:-1]


def to_yaml(runs: Sequence[PlannedRun]) -> str:
    """The resolved configuration of ``runs`` as YAML that ``--config`` accepts back, each value
    followed by its source as a comment. One method: its sections at the top level; several:
    each method's sections under its name (``lora: {train: {lr: ...}}``). Seeds only change
    the seed, so each method is shown once."""
    scalar = yaml_scalar
    first: dict[str, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.config.method, run)
    seeds = sorted({run.config.seed for run in runs})
    lines = [f"# clbench: {', '.join(first)} on {runs[0].config.benchmark}, seeds {', '.join(map(str, seeds))}",
             f"# sources: {DEFAULT} (dataclass), {BENCHMARK}, {METHOD} (their defaults), preset <name>, {FILE}, {SET}",
             "# Pass it back with --config FILE (same --methods, --benchmark and --preset; --set still wins)."]
    nested = len(first) > 1
    for method, run in first.items():
        indent = "  " if nested else ""
        lines.append(f"{method}:{'  # preset ' + run.preset.name if run.preset else ''}" if nested else
                     f"# preset: {run.preset.name if run.preset else '(none)'}")
        for section, values in run.config.to_dict().items():
            lines.append(f"{indent}{section}:{' {}' if not values else ''}")
            for key, value in values.items():
                source = run.sources.get(f"{section}.{key}", DEFAULT)
                lines.append(f"{indent}  {key}: {scalar(value)}  # {source}")
    return "\n".join(lines) + "\n"
