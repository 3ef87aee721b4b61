"""Gather run records into one row per run, keyed so that only comparable runs are averaged.

Two keys decide grouping:

* the **setting** (:func:`setting_of`): benchmark, task ranges, split id, label-map id, the
  class-order *rule* (``benchmark.class_order`` and ``order_seed``; the realised order
  differs per seed by design), backbone tag and weights SHA-256 and input scaling. Runs of
  different settings are never averaged;
* the **variant** (:func:`variant_of`): everything else in the resolved config that can
  change results (train and method sections, remaining benchmark and backbone options,
  preset, autocast precision) and whether the run is comparable with its preset's published
  numbers, with the reasons (:func:`noncomparable_reasons`). Seeds of one method are averaged
  only within one variant.

Only ``status == "complete"`` records enter; every other file found is listed in
:attr:`Collection.skipped` with the reason. Metrics are recomputed with
:func:`clbench.metrics.summarize` from the stored accuracy matrix and per-task test counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import metrics
from ..records import RECORD_NAME, SCHEMA_VERSION
from ..schema import schema_problem

METRICS = ("acc", "aaa", "acc_task_avg", "aaa_task_avg", "forgetting", "forgetting_clipped",
           "forgetting_coda", "bwt", "learning_acc")
COST = ("trainable_params", "time_s", "train_s", "eval_s")
# Measured efficiency (record 'efficiency'; clbench.efficiency) and the published figures.
EFFICIENCY = ("gflops", "learnable_m", "stored_m", "stored_mb", "train_s_task", "train_img_s", "peak_mb")
PAPER_EFFICIENCY = ("gflops", "learnable_m", "stored_m")
SETTING_FIELDS = ("benchmark", "n_tasks", "task_ranges", "split_id", "label_map_id", "order_rule", "backbone",
                  "weights_sha256", "input_norm")
COMPARABILITY = ("comparable", "noncomparable_reasons")
# Config keys that never change results, or are covered by the setting key.
_SETTING_BENCHMARK_KEYS = {"n_tasks", "init_cls", "class_order", "order_seed"}
_SETTING_BACKBONE_KEYS = {"name", "weights", "weights_sha256", "input_norm"}
_NEUTRAL_TRAIN_KEYS = {"eval_batch_size"}
_PATH_SUFFIXES = ("root", "_dir", "_path", "_file")


@dataclass
class Skipped:
    """A record file left out of the report, and why."""

    path: str
    reason: str


@dataclass
class Collection:
    """Complete runs (one row each) plus what was left out."""

    runs: pd.DataFrame
    records: dict[str, dict[str, Any]]  # run path -> record
    variants: dict[str, dict[str, Any]]  # variant key -> its flattened config
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_summary(self) -> str:
        """One line: how many files were skipped and why (empty when none)."""
        if not self.skipped:
            return ""
        reasons: dict[str, int] = {}
        for item in self.skipped:
            head = item.reason.split(":")[0]
            reasons[head] = reasons.get(head, 0) + 1
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        return f"{len(self.skipped)} record(s) skipped: {parts}."


def short_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def order_rule(record: dict[str, Any]) -> str:
    """The class-order rule of a run: 'natural', 'seeded(run seed)' or 'seeded(order_seed=S)'."""
    bench = record["config"]["benchmark"]
    if bench.get("class_order", "seeded") == "natural":
        return "natural"
    seed = bench.get("order_seed")
    return "seeded(run seed)" if seed is None else f"seeded(order_seed={seed})"


def setting_of(record: dict[str, Any]) -> dict[str, Any]:
    """The fields that must agree for runs to be averaged or compared."""
    proto = record["protocol"]
    return {
        "benchmark": record["benchmark"],
        "n_tasks": int(proto["n_tasks"]),
        "task_ranges": [list(r) for r in proto["task_ranges"]],
        "split_id": proto["split_id"],
        "label_map_id": proto["label_map_id"],
        "order_rule": order_rule(record),
        "backbone": proto["backbone"],
        "weights_sha256": (proto.get("weights") or {}).get("sha256"),
        "input_norm": proto["input_norm"],
    }


def _preset_of(record: dict[str, Any]) -> Any:
    """The registered preset the record names, for its method and setting (or None)."""
    if not record.get("preset"):
        return None
    from ..presets import PRESETS
    from ..registry import load_plugins

    load_plugins()
    return next((p for p in PRESETS if p.name == record["preset"] and p.matches(
        record["method"], record["benchmark"], record["config"]["benchmark"])), None)


def noncomparable_reasons(record: dict[str, Any]) -> list[str]:
    """Why the run may not stand beside its preset's published numbers: the record's reasons,
    plus every departure from the preset found again in its configuration now (so records
    written before departures were recorded cannot claim a comparability they lack)."""
    from ..comparability import departures
    from ..errors import ClbenchError
    from ..resolve import config_from_record

    reasons = list(record.get("noncomparable_reasons") or [])
    try:
        found = departures(config_from_record(record), _preset_of(record))
    except (ClbenchError, KeyError, TypeError, ValueError):  # a record of another version: its own word
        found = []
    return sorted(set(reasons) | set(found))


def efficiency_of(record: dict[str, Any]) -> dict[str, Any]:
    """The measured efficiency columns of a run (None where the record has none)."""
    eff = record.get("efficiency") or {}

    def scaled(key: str, factor: float) -> float | None:
        value = eff.get(key)
        return None if value is None else value / factor

    return {"gflops": eff.get("inference_gflops"), "learnable_m": scaled("learnable_params", 1e6),
            "stored_m": scaled("stored_values", 1e6), "stored_mb": scaled("stored_bytes", 2**20),
            "train_s_task": eff.get("train_s_per_task"), "train_img_s": eff.get("train_img_s"),
            "peak_mb": scaled("peak_memory_bytes", 2**20), "peak_memory": eff.get("peak_memory")}


def _pathlike(key: str) -> bool:
    return key.endswith(_PATH_SUFFIXES)


def variant_of(record: dict[str, Any], reasons: list[str] | None = None) -> dict[str, Any]:
    """Flattened config (``section.key`` → value) of everything besides the setting that can
    change a result, and the run's comparability; runs of one method are averaged only when
    this agrees. ``reasons``: :func:`noncomparable_reasons` of the record, if known."""
    cfg = record["config"]
    reasons = noncomparable_reasons(record) if reasons is None else reasons
    out: dict[str, Any] = {"preset": record.get("preset"),
                           "engine.precision": (record.get("engine") or {}).get("autocast"),
                           "comparable": not reasons, "noncomparable_reasons": reasons}
    for key, value in cfg["train"].items():
        if key not in _NEUTRAL_TRAIN_KEYS:
            out[f"train.{key}"] = value
    for key, value in cfg["method"].items():
        out[f"method.{key}"] = value
    for key, value in cfg["benchmark"].items():
        if key not in _SETTING_BENCHMARK_KEYS and not _pathlike(key):
            out[f"benchmark.{key}"] = value
    for key, value in cfg["backbone"].items():
        if key not in _SETTING_BACKBONE_KEYS:
            out[f"backbone.{key}"] = value
    return out


def paper_numbers(record: dict[str, Any]) -> dict[str, Any] | None:
    """The published numbers for the run's preset and setting (from the record, else the
    preset registry), or None. ``verified`` says whether the preset could check them
    (records written before the flag: the preset's word, else True)."""
    preset = _preset_of(record)
    paper = record.get("paper") or (preset.reported.to_dict() if preset and preset.reported else None)
    if paper is not None and "verified" not in paper:
        paper = {**paper, "verified": preset.reported.verified if preset and preset.reported else True}
    return paper


def paper_efficiency(record: dict[str, Any]) -> dict[str, Any] | None:
    """The published efficiency figures for the run's preset and setting, or None."""
    if record.get("paper_efficiency"):
        return record["paper_efficiency"]
    preset = _preset_of(record)
    return preset.efficiency.to_dict() if preset and preset.efficiency else None


def run_row(record: dict[str, Any], path: str) -> dict[str, Any]:
    """One run as a flat row: identity, setting fields and keys, metrics, cost, paper."""
    reasons = noncomparable_reasons(record)
    setting, variant = setting_of(record), variant_of(record, reasons)
    matrix = record["accuracy_matrix"]
    counts = record["test_counts"]["per_task"][: len(matrix)]
    values = metrics.summarize(matrix, counts)
    tasks = record["tasks"]
    paper = paper_numbers(record) or {}
    row = {
        "path": path, "run_id": record["run_id"], "method": record["method"], "seed": int(record["seed"]),
        "preset": record.get("preset"), "created": record.get("created") or "",
        "setting_key": short_hash(setting), "variant_key": short_hash(variant),
        **{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in setting.items()},
        **values,
        "trainable_params": int(tasks[-1]["trainable_params"]) if tasks else 0,
        "trainable_params_max": max((int(t["trainable_params"]) for t in tasks), default=0),
        "train_s": float(record["timing"]["train_s"]), "eval_s": float(record["timing"]["eval_s"]),
    }
    row["time_s"] = row["train_s"] + row["eval_s"]
    row.update(comparable=not reasons, noncomparable_reasons=json.dumps(reasons), **efficiency_of(record))
    for key in ("acc", "acc_se", "aaa", "aaa_se", "source", "verified"):
        row[f"paper_{key}"] = paper.get(key)
    eff = paper_efficiency(record) or {}
    for key, field_ in zip(PAPER_EFFICIENCY, ("gflops", "learnable_params_m", "stored_features_m")):
        row[f"paper_{key}"] = eff.get(field_)
    row["paper_efficiency_source"] = eff.get("source")
    row["paper_efficiency_verified"] = eff.get("verified")
    return row


def find_records(paths: list[Path] | Path) -> list[Path]:
    """Every ``record.json`` under the given directories (or the files themselves), sorted."""
    found: set[Path] = set()
    for p in [paths] if isinstance(paths, Path) else paths:
        p = Path(p)
        if p.is_file():
            found.add(p)
        elif (p / RECORD_NAME).is_file():
            found.add(p / RECORD_NAME)
        else:
            found.update(p.rglob(RECORD_NAME))
    return sorted(found)


def collect(paths: list[Path] | Path) -> Collection:
    """Load every record under ``paths``; complete ones become rows, the rest are skipped.

    Two complete runs of the same setting, variant and seed are repeats, not two seeds:
    the newest is kept and the others are listed as skipped.
    """
    rows, records, variants, skipped = [], {}, {}, []
    for path in find_records(paths):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            skipped.append(Skipped(str(path), f"unreadable: {exc}"))
            continue
        if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
            skipped.append(Skipped(str(path), f"other schema: schema_version {record.get('schema_version') if isinstance(record, dict) else None}"))
            continue
        status = record.get("status")
        if status != "complete":
            skipped.append(Skipped(str(path), f"status {status}: {record.get('error') or 'not finished'}"))
            continue
        problem = schema_problem(record)
        if problem:
            skipped.append(Skipped(str(path), f"malformed: does not match the record schema ({problem})"))
            continue
        try:
            row = run_row(record, str(path.parent))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            skipped.append(Skipped(str(path), f"malformed: {type(exc).__name__} {exc}"))
            continue
        rows.append(row)
        records[row["path"]] = record
        variants[row["variant_key"]] = variant_of(record, json.loads(row["noncomparable_reasons"]))
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs = runs.sort_values(["created", "path"], ascending=False)
        dup = runs.duplicated(["setting_key", "method", "variant_key", "seed"], keep="first")
        for _, r in runs[dup].iterrows():
            skipped.append(Skipped(r["path"], f"repeat: seed {r['seed']} again with the same setting and config; the newest run is kept"))
            records.pop(r["path"], None)
        runs = runs[~dup].sort_values(["benchmark", "n_tasks", "method", "seed"]).reset_index(drop=True)
    return Collection(runs, records, variants, skipped)
