"""What a reviewer asks of a comparison: confidence intervals, which methods the best one is
not significantly better than, and stability against plasticity.

Each function adds columns to the summary of :func:`clbench.report.aggregate.summarize`:

* :func:`add_intervals`: ``<metric>_ci_lo`` / ``<metric>_ci_hi``, the 95 % confidence
  interval of the mean over seeds (t distribution);
* :func:`add_significance`: per setting and shown metric, ``<metric>_tied`` for every method
  variant whose mean the best one's does not significantly differ from (two-sided, α =
  :data:`~clbench.report.stats.ALPHA`), with the test (``<metric>_test``: ``paired`` where
  both ran the same seeds with the same class orders, ``welch`` otherwise) and its p-value
  (``<metric>_p``); the best itself has ``tied`` and test ``best``;
* :func:`add_stability_plasticity`: ``acc_old_T<t>`` and ``acc_new_T<t>``, accuracy on the
  classes of the earlier tasks and on task t's own classes after task t (mean over seeds),
  from the per-class counts of the records.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from .aggregate import LOWER_IS_BETTER, SHOWN
from .collect import METRICS, Collection
from .stats import ALPHA, confidence_interval, paired_t_test, welch_t_test

LEVEL = 0.95


def _records(coll: Collection, row: pd.Series) -> list[dict[str, Any]]:
    return [coll.records[p] for p in str(row["runs"]).split(";")]


def run_values(coll: Collection, row: pd.Series, metric: str) -> dict[int, tuple[float, list]]:
    """seed -> (the run's ``metric``, its class order), for one summary row."""
    runs = coll.runs[coll.runs["path"].isin(str(row["runs"]).split(";"))]
    return {int(r["seed"]): (float(r[metric]), coll.records[r["path"]]["protocol"]["class_order"])
            for _, r in runs.iterrows() if r[metric] is not None and not pd.isna(r[metric])}


def compare(a: dict[int, tuple[float, list]], b: dict[int, tuple[float, list]]) -> tuple[str, float]:
    """(test, p) for two methods' runs: paired by seed when both ran the same seeds (at least
    two) with the same class order each, else Welch's test over seeds."""
    same = set(a) == set(b) and len(a) >= 2 and all(a[s][1] == b[s][1] for s in a)
    if same:
        seeds = sorted(a)
        return "paired", paired_t_test([a[s][0] for s in seeds], [b[s][0] for s in seeds]).p
    return "welch", welch_t_test([v for v, _ in a.values()], [v for v, _ in b.values()]).p


def add_intervals(summary: pd.DataFrame, coll: Collection, level: float = LEVEL) -> pd.DataFrame:
    """``<metric>_ci_lo`` / ``_ci_hi`` for every metric (NaN below two seeds)."""
    for metric in METRICS:
        bounds = [confidence_interval([v for v, _ in run_values(coll, row, metric).values()], level)
                  for _, row in summary.iterrows()]
        summary[f"{metric}_ci_lo"] = [lo for lo, _ in bounds]
        summary[f"{metric}_ci_hi"] = [hi for _, hi in bounds]
    return summary


def add_significance(summary: pd.DataFrame, coll: Collection, alpha: float = ALPHA) -> pd.DataFrame:
    """``<metric>_tied`` / ``_test`` / ``_p`` against the best variant of each setting."""
    for metric in SHOWN:
        tied = pd.Series(False, index=summary.index)
        test = pd.Series("", index=summary.index, dtype=object)
        p = pd.Series(math.nan, index=summary.index)
        for _, group in summary.groupby("setting_key", sort=False):
            means = group[f"{metric}_mean"].dropna()
            if len(means) < 2:
                continue
            best = means.idxmin() if metric in LOWER_IS_BETTER else means.idxmax()
            best_runs = run_values(coll, summary.loc[best], metric)
            tied[best], test[best] = True, "best"
            for idx in means.index.drop(best):
                test[idx], p[idx] = compare(run_values(coll, summary.loc[idx], metric), best_runs)
                tied[idx] = bool(p[idx] >= alpha)  # NaN (too few seeds): not marked
        summary[f"{metric}_tied"], summary[f"{metric}_test"], summary[f"{metric}_p"] = tied, test, p
    return summary


def old_new_curves(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy (%) on the old classes (NaN after the first task) and on the new task's
    classes after each task of a record."""
    pairs = metrics.stability_plasticity([t["correct_per_class"] for t in record["tasks"]],
                                         record["test_counts"]["per_class"], record["protocol"]["task_ranges"])
    return (np.array([math.nan if old is None else old for old, _ in pairs]), np.array([new for _, new in pairs]))


def add_stability_plasticity(summary: pd.DataFrame, coll: Collection) -> pd.DataFrame:
    """``acc_old_T<t>`` and ``acc_new_T<t>``: means over seeds after each task t."""
    columns: dict[str, list[float]] = {}
    n_max = int(summary["n_tasks"].max()) if len(summary) else 0
    for _, row in summary.iterrows():
        curves = [old_new_curves(r) for r in _records(coll, row)]
        for t in range(n_max):
            for name, k in (("old", 0), ("new", 1)):
                vals = [c[k][t] for c in curves if t < len(c[k]) and not math.isnan(c[k][t])]
                columns.setdefault(f"acc_{name}_T{t + 1}", []).append(float(np.mean(vals)) if vals else math.nan)
    for key in sorted(columns, key=lambda k: (int(k.split("_T")[1]), k)):
        summary[key] = columns[key]
    return summary


def significance_note(alpha: float = ALPHA) -> str:
    """The sentence under a table that says what ≈ means."""
    return (f"≈: not significantly different from the best of ours (bold) in that column, two-sided t-test at "
            f"α = {alpha:g}: paired by seed where both ran the same seeds with the same class orders, Welch's "
            f"test over seeds otherwise; unmarked with fewer than two seeds.")
