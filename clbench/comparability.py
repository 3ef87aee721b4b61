"""Whether a run may stand beside its preset's published numbers, and if not, why.

A preset that reports numbers (accuracy or efficiency) fixes a setting: its own values on top
of the benchmark's and the method's defaults. A run is comparable with those numbers only
when every result-relevant value of its resolved configuration equals the value that
setting fixes. Each departure is named (``train.epochs=1 (preset paper: 20)``) in the
record's ``noncomparable_reasons`` beside the reasons the method itself gives (e.g. a batch
majority vote) and is printed as a warning when the run starts.

Result-relevant: every ``train.*`` value but the evaluation batch size, every ``method.*``
value, every ``backbone.*`` value but the hash pin and the input size it is built for (the
benchmark's, compared there), and every ``benchmark.*`` value but where
the data lie (roots, folders, the decoded cache). Engine values are not: they decide where
and how fast a run goes; the autocast precision is recorded and kept apart by the report.
A run without a preset, or whose preset reports nothing, has no published numbers to
depart from.
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig, to_plain
from .presets import Preset

SECTIONS = ("backbone", "benchmark", "train", "method")
# backbone.img_size is derived: resolution makes it equal the benchmark's input size, itself compared
NEUTRAL = {"train": {"eval_batch_size"}, "backbone": {"weights_sha256", "img_size"},
           "benchmark": {"data_root", "path", "cache", "cache_dir", "split_dir"}}
_PATH_SUFFIXES = ("root", "_dir", "_path", "_file")


def reports_numbers(preset: Preset | None) -> bool:
    """Whether ``preset`` carries published numbers a run could be compared with."""
    return preset is not None and (preset.reported is not None or preset.efficiency is not None)


def relevant(section: str, key: str) -> bool:
    """Whether ``section.key`` can change a run's numbers (the rule in the module docstring)."""
    if key in NEUTRAL.get(section, ()):
        return False
    return not (section == "benchmark" and key.endswith(_PATH_SUFFIXES))


def preset_config(config: RunConfig, preset: Preset) -> dict[str, dict[str, Any]]:
    """The sections the preset fixes for this run's method and benchmark: dataclass
    defaults < benchmark defaults < method defaults < preset values, with the benchmark
    values the preset is chosen by (``when``) taken from the run."""
    from .registry import BENCHMARKS, METHODS
    from .resolve import _apply, _split_defaults, fresh_sections

    method_cls, bench_cls = METHODS.get(config.method), BENCHMARKS.get(config.benchmark)
    sections = fresh_sections(method_cls, bench_cls)
    when = [("benchmark", k, getattr(config.benchmark_cfg, k)) for k in preset.when]
    for items in (_split_defaults(bench_cls.defaults), _split_defaults(method_cls.defaults),
                  _split_defaults(preset.values), when):
        _apply(sections, items, config.method)
    return {name: to_plain(sections[name]) for name in SECTIONS}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "()"
    return str(value)


def departures(config: RunConfig, preset: Preset | None) -> list[str]:
    """Every result-relevant value of ``config`` that differs from what ``preset`` fixes,
    as ``key=value (preset <name>: value)``; empty when the preset reports nothing."""
    if not reports_numbers(preset):
        return []
    fixed = preset_config(config, preset)
    ran = config.to_dict()
    out = []
    for section in SECTIONS:
        for key, want in fixed[section].items():
            have = ran[section].get(key)
            if relevant(section, key) and have != want:
                out.append(f"{section}.{key}={_show(have)} (preset {preset.name}: {_show(want)})")
    return out


def warning(config: RunConfig, preset: Preset | None, reasons: list[str]) -> str:
    """The line printed when a run starts that its preset's numbers do not apply to."""
    what = f"the published numbers of preset '{preset.name}'" if reports_numbers(preset) else "published numbers"
    return (f"{config.method} seed {config.seed} is NOT comparable with {what}: " + "; ".join(reasons)
            + ". The report will not show those numbers beside it.")
