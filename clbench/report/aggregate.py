"""Aggregation over seeds and the papers' table layout.

:func:`summarize` turns the runs of a :class:`~clbench.report.collect.Collection` into one
row per (setting, method variant): number of seeds, mean and standard error (sample standard
deviation / √n; undefined for one seed) of every metric, and the paper's numbers.
:func:`paper_tables` arranges it as the papers do: one table per benchmark, a group of
columns per setting (``N=5``, ``N=10``, ...) with Acc, AAA, forgetting and the number of
seeds, one row per method, the reported numbers in a labelled row under ours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .collect import COMPARABILITY, COST, EFFICIENCY, METRICS, PAPER_EFFICIENCY, SETTING_FIELDS, Collection

SHOWN = ("acc", "aaa", "forgetting")  # the columns of a paper table, per setting
TITLES = {"acc": "Acc", "aaa": "AAA", "forgetting": "Forg.", "n": "n"}
LOWER_IS_BETTER = {"forgetting", "forgetting_clipped", "forgetting_coda", "trainable_params", "time_s", "train_s", "eval_s"}


def mean_se(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, standard error, n) over the finite values; SE is NaN for fewer than two."""
    arr = np.array([float(v) for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(arr.mean()), se, n


def _short(key: str, value: Any) -> str:
    if key == "weights_sha256" and isinstance(value, str):
        return value[:8]
    if key == "task_ranges":
        ranges = json.loads(value) if isinstance(value, str) else value
        sizes = [hi - lo for lo, hi in ranges]
        rest = sizes[1:]
        return f"{sizes[0]}+{rest[0]}×{len(rest)}" if rest and len(set(rest)) == 1 else "/".join(map(str, sizes))
    if key == "noncomparable_reasons":
        return "; ".join(json.loads(value)) if isinstance(value, str) else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _differing(items: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for item in items for k in item})
    return [k for k in keys if len({json.dumps(item.get(k), sort_keys=True, default=str) for item in items}) > 1]


def display_name(method: str) -> str:
    """The method's name as its paper writes it (``display_name`` of the registered class;
    the registered name for methods that set none or are not installed)."""
    from ..errors import RegistryError
    from ..registry import METHODS

    try:
        cls = METHODS.get(method)
    except RegistryError:
        return method
    return getattr(cls, "__dict__", {}).get("display_name") or method


NOT_COMPARABLE = "not comparable"  # label mark of a group that may not stand beside published numbers


def _variant_labels(summary: pd.DataFrame, variants: dict[str, dict[str, Any]]) -> list[str]:
    """The method's paper name, plus the config values that tell its variants in one setting
    apart, marked when the group is not comparable with its preset's published numbers."""
    names = {m: display_name(m) for m in summary["method"].unique()}
    labels = [names[m] for m in summary["method"]]
    for _, group in summary.groupby(["setting_key", "method"], sort=False):
        if len(group) < 2:
            continue
        configs = [variants.get(k, {}) for k in group["variant_key"]]
        keys = [k for k in _differing(configs) if k not in COMPARABILITY] or ["variant"]
        for idx, cfg in zip(group.index, configs):
            shown = [f"{k}={_short(k, cfg.get(k))}" for k in keys[:3]] + (["…"] if len(keys) > 3 else [])
            if keys == ["variant"] and not group.loc[idx, "comparable"]:
                shown = []  # told apart by the mark alone
            labels[summary.index.get_loc(idx)] += f" [{', '.join(shown)}]" if shown else ""
    return [f"{label} ({NOT_COMPARABLE})" if not comparable else label
            for label, comparable in zip(labels, summary["comparable"])]


def _setting_labels(summary: pd.DataFrame) -> list[str]:
    """``N=<tasks>``; settings of one benchmark with the same N also name how they differ from
    the one with the most runs (the reference, labelled ``N=<tasks>`` alone)."""
    labels = {}
    fields = [f for f in SETTING_FIELDS if f not in ("benchmark", "n_tasks")]
    runs = summary.groupby("setting_key", sort=False)["n"].sum()
    settings = summary.drop_duplicates("setting_key")
    for _, group in settings.groupby(["benchmark", "n_tasks"], sort=False):
        ref = group.loc[group["setting_key"].map(runs).idxmax()]
        for _, row in group.iterrows():
            text = f"N={row['n_tasks']}"
            keys = [f for f in fields if row[f] != ref[f]]
            if keys:
                text += " · " + ", ".join(f"{k}={_short(k, row[k])}" for k in keys)
            labels[row["setting_key"]] = text
    seen: dict[tuple[str, str], int] = {}
    for _, row in settings.iterrows():  # a label must name one setting
        key = (row["benchmark"], labels[row["setting_key"]])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            labels[row["setting_key"]] += f" #{row['setting_key'][:6]}"
    return [labels[k] for k in summary["setting_key"]]


def summarize(coll: Collection) -> pd.DataFrame:
    """One row per (setting, method, variant): n, seeds, mean and SE of each metric, paper."""
    runs = coll.runs
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for (_, _, _), g in runs.groupby(["setting_key", "method", "variant_key"], sort=False):
        first = g.iloc[0]
        row: dict[str, Any] = {f: first[f] for f in SETTING_FIELDS + COMPARABILITY}
        row.update(setting_key=first["setting_key"], method=first["method"], variant_key=first["variant_key"],
                   preset=first["preset"], n=len(g), seeds=",".join(str(s) for s in sorted(g["seed"])),
                   runs=";".join(g["path"]))
        for metric in METRICS + COST + EFFICIENCY:
            row[f"{metric}_mean"], row[f"{metric}_se"], _ = mean_se(g[metric])
        row.update(_paper_columns(first))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary.insert(0, "label", _variant_labels(summary, coll.variants))
    summary.insert(0, "setting", _setting_labels(summary))
    return summary.sort_values(["benchmark", "n_tasks", "setting", "label"]).reset_index(drop=True)


def _paper_columns(first: pd.Series) -> dict[str, Any]:
    """The published numbers of a group: only for a group comparable with them (others get
    none, and ``paper_hidden`` says that numbers exist); ``paper_verified`` False where the
    preset labels them unverified."""
    keys = [f"paper_{k}" for k in ("acc", "acc_se", "aaa", "aaa_se", "source", "verified", *PAPER_EFFICIENCY,
                                   "efficiency_source", "efficiency_verified")]
    published = any(not pd.isna(first[k]) for k in ("paper_acc", *(f"paper_{k}" for k in PAPER_EFFICIENCY)))
    if first["comparable"]:
        return {**{k: first[k] for k in keys}, "paper_hidden": False}
    return {**{k: None for k in keys}, "paper_hidden": bool(published)}


# ----------------------------------------------------------------------------- paper layout

@dataclass
class Column:
    """One setting: a group of columns (Acc, AAA, forgetting, n) in a paper table."""

    key: str
    label: str
    fields: dict[str, Any]


@dataclass
class Row:
    """One method variant (``kind='ours'``) or the numbers its paper reports (``'paper'``)."""

    label: str
    method: str
    kind: str
    cells: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # setting -> metric -> (mean, se)
    n: dict[str, int] = field(default_factory=dict)
    source: str = ""
    tied: dict[str, set[str]] = field(default_factory=dict)  # setting -> metrics not significantly below the best


@dataclass
class PaperTable:
    """A benchmark's table: settings as column groups, methods as rows."""

    benchmark: str
    columns: list[Column]
    rows: list[Row]
    metrics: tuple[str, ...] = SHOWN

    def value(self, row: Row, key: str, metric: str) -> tuple[float, float]:
        return row.cells.get(key, {}).get(metric, (math.nan, math.nan))

    def is_best(self, row: Row, key: str, metric: str) -> bool:
        """True for the best mean of our rows in this column (ties included)."""
        if row.kind != "ours":
            return False
        mean = self.value(row, key, metric)[0]
        means = [self.value(r, key, metric)[0] for r in self.rows if r.kind == "ours"]
        means = [m for m in means if not math.isnan(m)]
        if math.isnan(mean) or len(means) < 2:
            return False
        best = min(means) if metric in LOWER_IS_BETTER else max(means)
        return abs(mean - best) < 1e-12

    def is_tied(self, row: Row, key: str, metric: str) -> bool:
        """True for a row (not the best) the best one is not significantly better than."""
        return metric in row.tied.get(key, set()) and not self.is_best(row, key, metric)


def _nan(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


UNVERIFIED = "unverified: the preset could not check these numbers against the source"


def paper_tables(summary: pd.DataFrame) -> list[PaperTable]:
    """The summary as one :class:`PaperTable` per benchmark."""
    tables = []
    if summary.empty:
        return tables
    for benchmark, sub in summary.groupby("benchmark", sort=True):
        settings = sub.drop_duplicates("setting_key").sort_values(["n_tasks", "setting"])
        columns = [Column(r["setting_key"], r["setting"], {f: r[f] for f in SETTING_FIELDS}) for _, r in settings.iterrows()]
        rows = []
        for label, group in sub.groupby("label", sort=True):
            ours = Row(label, group["method"].iloc[0], "ours")
            paper = Row(f"{label}, reported", ours.method, "paper")
            sources, unverified = [], False
            for _, r in group.iterrows():
                ours.cells[r["setting_key"]] = {m: (r[f"{m}_mean"], r[f"{m}_se"]) for m in SHOWN}
                ours.n[r["setting_key"]] = int(r["n"])
                ours.tied[r["setting_key"]] = {m for m in SHOWN if bool(r.get(f"{m}_tied", False))}
                if not math.isnan(_nan(r["paper_acc"])):  # the paper reports this setting
                    paper.cells[r["setting_key"]] = {"acc": (_nan(r["paper_acc"]), _nan(r["paper_acc_se"])),
                                                     "aaa": (_nan(r["paper_aaa"]), _nan(r["paper_aaa_se"]))}
                    if r["paper_source"] and r["paper_source"] not in sources:
                        sources.append(r["paper_source"])
                    unverified = unverified or r["paper_verified"] is False
            rows.append(ours)
            if paper.cells:
                paper.source = "; ".join(sources)
                if paper.source:
                    paper.label = f"{label}, reported ({paper.source})"
                if unverified:
                    paper.label += f" [{UNVERIFIED}]"
                rows.append(paper)
        tables.append(PaperTable(str(benchmark), columns, rows))
    return tables


def setting_notes(summary: pd.DataFrame) -> list[str]:
    """One line per setting saying exactly what it is (so kept-apart runs show what differs)."""
    notes = []
    for _, r in summary.drop_duplicates("setting_key").iterrows():
        text = (f"{r['benchmark']} {r['setting']}: tasks {_short('task_ranges', r['task_ranges'])} classes; "
                f"split {r['split_id']}; labels {r['label_map_id']}; order {r['order_rule']}; "
                f"backbone {r['backbone']} (weights sha256 {_short('weights_sha256', r['weights_sha256'])}); "
                f"input {r['input_norm']}")
        notes.append(text)
    return notes + comparability_notes(summary)


def comparability_notes(summary: pd.DataFrame) -> list[str]:
    """One line per group that is not comparable with its preset's published numbers: why,
    and whether the report left published numbers out for it."""
    notes = []
    for _, r in summary[~summary["comparable"].astype(bool)].iterrows():
        hidden = "; its published numbers are not shown" if r.get("paper_hidden") else ""
        notes.append(f"{r['benchmark']} {r['setting']}, {r['label']} (seeds {r['seeds']}): NOT comparable"
                     f"{' with preset ' + str(r['preset']) if r['preset'] else ''}{hidden}: "
                     f"{_short('noncomparable_reasons', r['noncomparable_reasons'])}")
    return notes
