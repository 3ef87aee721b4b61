"""Figures of ``clbench landscape``: the line (SD-LoRA Fig. 4 style) and plane contours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402

from .plots import save_figure  # noqa: E402


def line_figure(line: dict[str, np.ndarray], meta: dict[str, Any], title: str, stem: Path) -> list[Path]:
    """Accuracy and loss on each task's test data along θ(λ) = (1−λ)θ_i + λθ_j."""
    lams = line["lambdas"]
    i, j = meta["from_task"], meta["to_task"]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, task in enumerate(line["tasks"]):
        acc_ax.plot(lams, line["acc"][:, k], marker="o", ms=4, label=f"T{task} test")
        loss_ax.plot(lams, line["loss"][:, k], marker="o", ms=4, label=f"T{task} test")
    ticks = lams if len(lams) <= 21 else np.linspace(lams[0], lams[-1], 11)
    labels = [f"W{i}" if t == 0 else f"W{j}" if t == 1 else f"{t:g}" for t in np.round(ticks, 3)]
    for ax, ylabel in ((acc_ax, "accuracy (%)"), (loss_ax, "cross-entropy")):
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_xlabel(f"λ: (1−λ)·W{i} + λ·W{j}")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        for end in (0, 1):
            ax.axvline(end, color="grey", lw=0.6, ls=":")
    acc_ax.legend(fontsize=8)
    fig.suptitle(f"{title}: T{i} → T{j} solution (classes seen at T{j})", fontsize=10)
    return list(save_figure(fig, stem))


def filled_levels(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(values to fill, contour levels, where the values were not finite, flat) for a plane.

    The levels span the finite values from their minimum to their maximum, so every point is
    filled (contourf leaves values outside its levels white); non-finite points (a diverged
    loss) take the maximum and are returned for hatching. A plane flat to within 1e-6 of its
    magnitude (float noise) is one colour band around its value, not noise stretched over the
    colour map.
    """
    bad = ~np.isfinite(Z)
    finite = Z[~bad]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.where(bad, hi, Z)
    scale = max(1.0, abs(lo), abs(hi))
    if hi - lo <= 1e-6 * scale:
        pad = 0.01 * scale
        return np.full_like(values, (lo + hi) / 2), np.array([lo - pad, hi + pad]), bad, True
    return values, np.linspace(lo, hi, 21), bad, False


def plane_figures(plane: dict[str, np.ndarray], title: str, stem: Path) -> list[Path]:
    """Contours of loss and of accuracy on the plane, per task and over all seen classes
    (filled everywhere, see :func:`filled_levels`)."""
    X, Y = np.meshgrid(plane["xs"], plane["ys"])
    tasks = [int(t) for t in plane["tasks"]]
    panels = [(f"T{t} test", k) for k, t in enumerate(tasks) if t in set(plane["solutions"].tolist())] + [("all seen", None)]
    files = []
    for metric, cmap, unit in (("loss", "viridis", "cross-entropy"), ("acc", "magma", "accuracy (%)")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.9), squeeze=False, layout="constrained")
        for ax, (name, k) in zip(axes.flat, panels):
            Z, levels, bad, flat = filled_levels(np.asarray(plane[f"{metric}_all"] if k is None else plane[metric][k],
                                                            dtype=float))
            filled = ax.contourf(X, Y, Z, levels=levels, cmap=cmap)
            if not flat:
                ax.contour(X, Y, Z, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.6)
            if bad.any():  # not finite there (e.g. a diverged loss): hatched over the maximum's colour
                ax.contourf(X, Y, bad.astype(float), levels=[0.5, 1.5], colors="none", hatches=["xxx"])
            fig.colorbar(filled, ax=ax, shrink=0.85, label=unit)
            for (x, y), t in zip(plane["coords"], plane["solutions"]):
                ax.plot(x, y, marker="o", ms=6, color="red", mec="white")
                ax.annotate(f"W{t}", (x, y), textcoords="offset points", xytext=(5, 5), color="black", fontsize=9,
                            fontweight="bold", path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
            ax.set_aspect("equal")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("e1 (towards W%d)" % plane["solutions"][1])
        axes.flat[0].set_ylabel("e2")
        fig.suptitle(f"{title}: plane through W{', W'.join(str(t) for t in plane['solutions'])} ({unit})", fontsize=10)
        files += save_figure(fig, stem.with_name(f"{stem.name}_{metric}"))
    return files
