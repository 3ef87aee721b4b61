"""Figures from run records (matplotlib/seaborn; each saved as PNG and PDF).

Per setting: the accuracy A_t after each task per method with a band of ± one standard
error over seeds; the accuracy matrix a(t, j) as a heatmap (mean over seeds) per method;
accuracy on the old classes and on the new task's classes after each task;
forgetting per method; the magnitudes a method logs per task (``method_log["magnitudes"]``,
e.g. SD-LoRA); trainable parameters and time per method. Values come from the stored
matrices through :mod:`clbench.metrics`.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import metrics  # noqa: E402
from ..records import atomic_write_with  # noqa: E402
from .aggregate import mean_se  # noqa: E402
from .collect import Collection  # noqa: E402
from .significance import old_new_curves  # noqa: E402


@dataclass
class Figure:
    """A saved figure: what it shows and where its PNG and PDF are."""

    kind: str
    title: str
    caption: str
    png: Path
    pdf: Path


MARKERS = "osD^vP*Xph<>d"


def method_colors(n: int) -> list:
    """n distinguishable colours: tab10 up to ten methods, evenly spaced hues beyond."""
    return sns.color_palette("tab10" if n <= 10 else "husl", n_colors=n)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "x"


def save_figure(fig: plt.Figure, stem: Path) -> tuple[Path, Path]:
    """Write ``stem``.png and ``stem``.pdf and close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    atomic_write_with(png, lambda fh: fig.savefig(fh, format="png", dpi=130, bbox_inches="tight"))
    atomic_write_with(pdf, lambda fh: fig.savefig(fh, format="pdf", bbox_inches="tight"))
    plt.close(fig)
    return png, pdf


def _save(fig: plt.Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    return save_figure(fig, out_dir / name)


def _matrix(record: dict[str, Any]) -> np.ndarray:
    return metrics.as_matrix(record["accuracy_matrix"])


def _curve(record: dict[str, Any]) -> np.ndarray:
    matrix = record["accuracy_matrix"]
    return metrics.accuracy_curve(matrix, record["test_counts"]["per_task"][: len(matrix)])


def _band(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds, element-wise (SE 0 for one seed)."""
    stack = np.stack(values)
    se = stack.std(axis=0, ddof=1) / math.sqrt(len(stack)) if len(stack) > 1 else np.zeros(stack.shape[1:])
    return stack.mean(axis=0), se


def outside_legend(ax: plt.Axes, fontsize: int = 8) -> None:
    """The legend beside the axes, never over the curves."""
    ax.legend(fontsize=fontsize, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def panel_title(label: str, n: int, width: int = 34) -> str:
    """A panel's title, wrapped so that neighbouring titles do not run into each other."""
    return textwrap.fill(f"{label} (n={n})", width=width, break_long_words=True)


def accuracy_curves(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure:
    """A_t after each task per method: mean line, ± SE band over seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = method_colors(len(groups))
    for i, (label, recs) in enumerate(groups.items()):
        mean, se = _band([_curve(r) for r in recs])
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, marker=MARKERS[i % len(MARKERS)], ms=4, color=colors[i], label=f"{label} (n={len(recs)})")
        ax.fill_between(x, mean - se, mean + se, color=colors[i], alpha=0.2, lw=0)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy on all seen classes A_t (%)")
    ax.set_xticks(x)
    ax.set_title(title)
    outside_legend(ax)
    png, pdf = _save(fig, out_dir, name)
    return Figure("curve", f"Accuracy after each task: {title}",
                  "Sample-weighted accuracy on the test data of all classes seen so far, after each task; "
                  "line: mean over seeds, band: ± one standard error.", png, pdf)


def accuracy_matrices(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure:
    """The accuracy matrix a(t, j) per method (mean over seeds) as heatmaps."""
    n = len(groups)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    T = len(next(iter(groups.values()))[0]["accuracy_matrix"])
    size = max(2.6, 1.2 + 0.45 * T)
    titles = [panel_title(label, len(recs)) for label, recs in groups.items()]
    title_h = 0.17 * max(t.count("\n") + 1 for t in titles)
    # one colour bar for all panels (constrained layout takes its room from every panel alike)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 1.2, rows * (size + title_h + 0.5) + 0.4),
                             squeeze=False, layout="constrained")
    image = None
    for ax, (label, recs), text in zip(axes.flat, groups.items(), titles):
        mean = np.mean(np.stack([_matrix(r) for r in recs]), axis=0)
        sns.heatmap(mean, ax=ax, vmin=0, vmax=100, cmap="viridis", mask=np.isnan(mean), square=True,
                    annot=T <= 10, fmt=".0f", annot_kws={"fontsize": 7}, cbar=False,
                    xticklabels=range(1, T + 1), yticklabels=range(1, T + 1))
        image = ax.collections[0]
        ax.grid(False)
        ax.set_title(text, fontsize=8)
        ax.set_xlabel("evaluated task j")
        ax.set_ylabel("after task t")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.8 if rows > 1 else 1.0)
    fig.suptitle(title)
    png, pdf = _save(fig, out_dir, name)
    return Figure("matrix", f"Accuracy matrix: {title}",
                  "a(t, j): accuracy (%) on task j's test data after training task t, mean over seeds.", png, pdf)


def stability_plasticity_plot(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure | None:
    """Accuracy on the old classes and on the new task's classes after each task (± SE band)."""
    if len(next(iter(groups.values()))[0]["tasks"]) < 2:
        return None
    fig, (old_ax, new_ax) = plt.subplots(1, 2, figsize=(10, 3.9), sharey=True, layout="constrained")
    colors = method_colors(len(groups))
    for i, (label, recs) in enumerate(groups.items()):
        curves = [old_new_curves(r) for r in recs]
        for ax, k in ((old_ax, 0), (new_ax, 1)):
            mean, se = _band([c[k] for c in curves])
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, marker=MARKERS[i % len(MARKERS)], ms=4, color=colors[i], label=f"{label} (n={len(recs)})")
            ax.fill_between(x, mean - se, mean + se, color=colors[i], alpha=0.2, lw=0)
            ax.set_xticks(x)
            ax.set_xlabel("after task t")
    old_ax.set_ylabel("accuracy (%)")
    old_ax.set_title("stability: classes of tasks 1…t−1", fontsize=9)
    new_ax.set_title("plasticity: task t's own classes", fontsize=9)
    outside_legend(new_ax)
    fig.suptitle(title)
    png, pdf = _save(fig, out_dir, name)
    return Figure("stability", f"Stability and plasticity: {title}",
                  "Accuracy on the test data of the classes learned before task t (left) and of task t's new "
                  "classes (right), after each task t, from the per-class counts; mean over seeds, band: ± one "
                  "standard error.", png, pdf)


def _bars(ax: plt.Axes, labels: list[str], values: list[list[float]], ylabel: str) -> None:
    stats = [mean_se(v) for v in values]
    means = [s[0] for s in stats]
    errs = [0 if math.isnan(s[1]) else s[1] for s in stats]
    x = np.arange(len(labels))
    colors = method_colors(len(labels))
    ax.bar(x, means, yerr=errs, capsize=4, color=colors, alpha=0.8)
    for i, vals in enumerate(values):
        ax.scatter(np.full(len(vals), x[i]), vals, color="black", s=10, zorder=3)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)


def forgetting_bars(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure | None:
    """Average forgetting (Chaudhry) per method: mean ± SE over seeds, seeds as dots."""
    values = {label: [metrics.forgetting(_matrix(r)) for r in recs] for label, recs in groups.items()}
    values = {k: [x for x in v if x is not None] for k, v in values.items()}
    if not any(values.values()):
        return None
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(values), 4))
    _bars(ax, list(values), list(values.values()), "forgetting (%)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(title)
    png, pdf = _save(fig, out_dir, name)
    return Figure("forgetting", f"Forgetting: {title}",
                  "Average forgetting at the last task (Chaudhry et al.; may be negative): bar = mean, "
                  "error bar = standard error, dots = seeds.", png, pdf)


def magnitude_values(record: dict[str, Any]) -> list[list[float]] | None:
    """``method_log["magnitudes"]`` of every task (list of floats per task), or None."""
    rows = []
    for task in record["tasks"]:
        mags = (task.get("method_log") or {}).get("magnitudes")
        if mags is None:
            return None
        try:  # a list of floats per task; per-layer lists are averaged
            flat = np.asarray(mags, dtype=float).reshape(len(mags), -1).mean(axis=1)
        except (TypeError, ValueError):
            return None
        rows.append(flat.tolist())
    return rows or None


MAGNITUDE_MAP = matplotlib.colors.LinearSegmentedColormap.from_list(
    "magnitudes", plt.cm.viridis(np.linspace(0.0, 0.88, 256)))  # sequential; stops before the pale yellow


def magnitude_colors(k: int) -> list:
    """k colours of one sequential map (earlier components darker), distinguishable for many k."""
    return [MAGNITUDE_MAP(x) for x in (np.linspace(0, 1, k) if k > 1 else [0.0])]


def magnitude_plot(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure | None:
    """Magnitude α_k of each task's component after each task (mean ± SE band over seeds)."""
    found = {label: [m for m in (magnitude_values(r) for r in recs) if m] for label, recs in groups.items()}
    found = {k: v for k, v in found.items() if v}
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(5.6 * len(found), 3.8), squeeze=False, layout="constrained")
    for ax, (label, runs) in zip(axes.flat, found.items()):
        T = min(len(r) for r in runs)
        K = max(len(r[t]) for r in runs for t in range(T))
        colors = magnitude_colors(K)
        for k in range(K):
            ts = [t for t in range(T) if all(len(r[t]) > k for r in runs)]
            if not ts:
                continue
            mean, se = _band([np.array([r[t][k] for t in ts]) for r in runs])
            x = np.array(ts) + 1
            ax.plot(x, mean, marker="o", ms=3, color=colors[k], label=f"α{k + 1}")
            ax.fill_between(x, mean - se, mean + se, color=colors[k], alpha=0.2, lw=0)
        ax.set_xlabel("after task")
        ax.set_ylabel("magnitude")
        ax.set_xticks(range(1, T + 1))
        ax.set_title(panel_title(label, len(runs), 48), fontsize=9)
        if K <= 8:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:  # many components: a colour bar of k instead of a legend
            bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0.5, K + 0.5), cmap=MAGNITUDE_MAP), ax=ax,
                               ticks=range(1, K + 1, max(1, K // 10)))
            bar.set_label("component k (task that added it)")
    fig.suptitle(title)
    png, pdf = _save(fig, out_dir, name)
    return Figure("magnitudes", f"Learned magnitudes: {title}",
                  "Magnitude of each task's component (α_k, from method_log['magnitudes']) after each task; "
                  "band: ± one standard error over seeds.", png, pdf)


def cost_bars(groups: dict[str, list[dict]], title: str, out_dir: Path, name: str) -> Figure:
    """Trainable parameters (at the last task) and wall time (training + evaluation) per method."""
    labels = list(groups)
    params = [[r["tasks"][-1]["trainable_params"] for r in recs] for recs in groups.values()]
    times = [[r["timing"]["train_s"] + r["timing"]["eval_s"] for r in recs] for recs in groups.values()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(2.5 + 2.2 * len(labels), 4))
    _bars(a, labels, params, "trainable parameters (last task)")
    positive = [p for ps in params for p in ps if p > 0]
    if positive and max(positive) / min(positive) > 100:
        a.set_yscale("log")
    _bars(b, labels, times, "time per run: training + evaluation (s)")
    fig.suptitle(title)
    png, pdf = _save(fig, out_dir, name)
    return Figure("cost", f"Trainable parameters and time: {title}",
                  "Left: parameters the optimiser trains in the last task. Right: wall time per run "
                  "(training and evaluation, as recorded; mean ± SE, dots = seeds; machines may differ).", png, pdf)


PLOTS: list[Callable[..., Figure | None]] = [accuracy_curves, accuracy_matrices, stability_plasticity_plot,
                                             forgetting_bars, magnitude_plot, cost_bars]


def all_figures(coll: Collection, summary: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Every figure for every setting of the summary, saved under ``out_dir``."""
    figures = []
    with sns.axes_style("whitegrid"), plt.rc_context({"figure.max_open_warning": 0}):
        for key, sub in summary.groupby("setting_key", sort=False):
            first = sub.iloc[0]
            title = f"{first['benchmark']} {first['setting']}"
            groups = {}
            for _, row in sub.sort_values("label").iterrows():
                groups[row["label"]] = [coll.records[p] for p in row["runs"].split(";")]
            base = f"{_slug(first['benchmark'])}_N{first['n_tasks']}_{key[:6]}"
            for plot in PLOTS:
                fig = plot(groups, title, out_dir, f"{plot.__name__}_{base}")
                if fig is not None:
                    figures.append(fig)
    return figures
