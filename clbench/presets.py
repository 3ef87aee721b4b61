"""Named presets: a paper's hyperparameters for one method on one benchmark.

A preset sets dotted config keys (``train.lr``, ``method.rank``, ``benchmark.n_tasks``, ...)
and may carry the numbers the paper reports for that setting, so reports can show them
beside ours. Presets only apply when their ``when`` conditions on the benchmark config hold
(e.g. ``{"n_tasks": 20}``). If ``--preset`` is not given, the preset named ``default`` for the
method × benchmark pair (if any) applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .errors import RegistryError, closest


@dataclass(frozen=True)
class Reported:
    """A published result: mean and, where given, standard error over runs (in %)."""

    acc: float
    aaa: float | None = None
    acc_se: float | None = None
    aaa_se: float | None = None
    source: str = ""  # e.g. "SD-LoRA (ICLR 2025) Table 2"
    verified: bool = True  # False: the preset's author could not check the numbers against the source

    def to_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "aaa": self.aaa, "acc_se": self.acc_se, "aaa_se": self.aaa_se, "source": self.source,
                "verified": self.verified}


@dataclass(frozen=True)
class ReportedEfficiency:
    """A published efficiency row (the SD-LoRA paper's Table 5 layout)."""

    gflops: float | None  # inference GFLOPs per image
    learnable_params_m: float | None  # learnable parameters, millions
    stored_features_m: float | None  # stored features/statistics, millions of values
    source: str = ""
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "learnable_params_m": self.learnable_params_m,
                "stored_features_m": self.stored_features_m, "source": self.source, "verified": self.verified}


@dataclass(frozen=True)
class Preset:
    """Config values for ``method`` on ``benchmark`` under the name ``name``."""

    name: str
    method: str
    benchmark: str
    values: dict[str, Any]
    when: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the values come from (paper section, repo file)
    reported: Reported | None = None
    efficiency: ReportedEfficiency | None = None

    def matches(self, method: str, benchmark: str, bench_values: dict[str, Any]) -> bool:
        return (self.method == method and self.benchmark == benchmark
                and all(bench_values.get(k) == v for k, v in self.when.items()))


PRESETS: list[Preset] = []


def register_preset(preset: Preset) -> Preset:
    """Add a preset (called at import time of the benchmark modules)."""
    PRESETS.append(preset)
    return preset


def add_preset(name: str, method: str, benchmark: str, values: dict[str, Any], source: str,
               reported: Reported | None = None, **when: Any) -> Preset:
    """Register a preset from its parts; ``when`` holds benchmark conditions (e.g. ``n_tasks=10``)."""
    return register_preset(Preset(name, method, benchmark, values, when=when, source=source, reported=reported))


def cite_efficiency(name: str, method: str, benchmark: str, efficiency: ReportedEfficiency, **when: Any) -> Preset:
    """Attach published efficiency numbers to the registered preset ``name`` of ``method`` on
    ``benchmark`` for the setting ``when`` (e.g. ``n_tasks=20``)."""
    for i, preset in enumerate(PRESETS):
        if (preset.name, preset.method, preset.benchmark, preset.when) == (name, method, benchmark, when):
            PRESETS[i] = replace(preset, efficiency=efficiency)
            return PRESETS[i]
    raise RegistryError(f"No preset '{name}' for {method} on {benchmark} with {when} to attach efficiency numbers to.")


def find_preset(name: str | None, method: str, benchmark: str, bench_values: dict[str, Any]) -> Preset | None:
    """The preset ``name`` (or ``default``) for this method/benchmark setting, if any.

    An explicitly named preset that does not exist for the pair is an error.
    """
    from .registry import load_plugins

    load_plugins()
    wanted = name or "default"
    for preset in PRESETS:
        if preset.name == wanted and preset.matches(method, benchmark, bench_values):
            return preset
    if name is None:
        return None
    names = sorted({p.name for p in PRESETS if p.method == method and p.benchmark == benchmark})
    settings = [p.when for p in PRESETS if p.name == name and p.method == method and p.benchmark == benchmark]
    hint = f" It exists for the settings {settings}." if settings else closest(name, names)
    raise RegistryError(
        f"No preset '{name}' for method '{method}' on benchmark '{benchmark}' with "
        f"{bench_values}.{hint} Presets for this pair: {', '.join(names) or '(none)'}. "
        f"See 'clbench list --presets'."
    )
