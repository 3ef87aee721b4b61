"""Continual-learning metrics as pure functions of an accuracy matrix.

``a[t][j]`` is the accuracy (in %) on the test data of task ``j`` after training task ``t``
(GEM orientation: rows are training steps, 0-indexed; entries above the diagonal are
undefined). ``counts[j]`` is the number of test samples of task ``j``. The functions accept
any such matrix: one from a clbench record, or one typed in from a paper's log (a
lower-triangular list of rows, or a square array with NaN above the diagonal).

Definitions (docs/protocol.md, "Metrics"):

* A_t, sample-weighted: Σ_{j≤t} n_j a(t,j) / Σ_{j≤t} n_j (PyCIL/PILOT/SD-LoRA/InfLoRA code);
  task-averaged: (1/(t+1)) Σ_{j≤t} a(t,j) (L2P/DualPrompt/CODA).
* Acc = A_T (final); AAA = mean over t of A_t.
* Forgetting (Chaudhry et al. 2018): mean over j < T of max_{j≤l<T} a(l,j) − a(T,j); it can
  be negative. The clipped variant takes the max over j≤l≤T, so each term is ≥ 0 (the
  L2P/PILOT code). CODA's F_N is the mean one-step drop on old tasks.
* BWT (GEM): mean over j < T of a(T,j) − a(j,j). Learning accuracy: mean of a(j,j).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray


def as_matrix(a: Matrix) -> np.ndarray:
    """A T×T float array with NaN above the diagonal; validates shape and range."""
    rows = [np.asarray(r, dtype=float) for r in a]
    T = len(rows)
    if T == 0:
        raise ValueError("empty accuracy matrix")
    m = np.full((T, T), np.nan)
    for t, row in enumerate(rows):
        if len(row) < t + 1:
            raise ValueError(f"row {t} has {len(row)} entries; it needs at least {t + 1} (tasks 0..{t})")
        m[t, : t + 1] = row[: t + 1]
    if np.isnan(np.tril(m)).any() or ((np.tril(m) < 0) | (np.tril(m) > 100)).any():
        raise ValueError("accuracies on and below the diagonal must be numbers in [0, 100]")
    return m


def _weights(counts: Sequence[float] | None, T: int) -> np.ndarray:
    if counts is None:
        return np.ones(T)
    w = np.asarray(counts, dtype=float)
    if w.shape != (T,) or (w <= 0).any():
        raise ValueError(f"counts must be {T} positive test-set sizes, got {list(counts)}")
    return w


def accuracy_curve(a: Matrix, counts: Sequence[float] | None = None) -> np.ndarray:
    """A_t for every step t: sample-weighted with ``counts``, task-averaged without."""
    m = as_matrix(a)
    w = _weights(counts, len(m))
    return np.array([np.dot(m[t, : t + 1], w[: t + 1]) / w[: t + 1].sum() for t in range(len(m))])


def final_accuracy(a: Matrix, counts: Sequence[float] | None = None) -> float:
    """Acc = A_T."""
    return float(accuracy_curve(a, counts)[-1])


def average_incremental_accuracy(a: Matrix, counts: Sequence[float] | None = None) -> float:
    """AAA = (1/T) Σ_t A_t."""
    return float(accuracy_curve(a, counts).mean())


def forgetting(a: Matrix, clipped: bool = False) -> float | None:
    """Average forgetting at the last step (None with a single task)."""
    m = as_matrix(a)
    T = len(m)
    if T < 2:
        return None
    last = T if clipped else T - 1
    drops = [np.max(m[j:last, j]) - m[T - 1, j] for j in range(T - 1)]
    return float(np.mean(drops))


def backward_transfer(a: Matrix) -> float | None:
    """BWT = mean over old tasks of a(T,j) − a(j,j) (None with a single task)."""
    m = as_matrix(a)
    T = len(m)
    if T < 2:
        return None
    return float(np.mean([m[T - 1, j] - m[j, j] for j in range(T - 1)]))


def learning_accuracy(a: Matrix) -> float:
    """Mean accuracy on each task right after learning it (plasticity)."""
    return float(np.mean(np.diag(as_matrix(a))))


def coda_forgetting(a: Matrix) -> float | None:
    """CODA-Prompt's F_N: mean over steps of the mean one-step drop on old tasks."""
    m = as_matrix(a)
    T = len(m)
    if T < 2:
        return None
    steps = [np.mean(m[t - 1, :t] - m[t, :t]) for t in range(1, T)]
    return float(np.mean(steps))


def summarize(a: Matrix, counts: Sequence[float] | None = None) -> dict[str, float | None]:
    """Every headline metric. ``acc``/``aaa`` are sample-weighted when ``counts`` are given."""
    return {
        "acc": final_accuracy(a, counts),
        "aaa": average_incremental_accuracy(a, counts),
        "acc_task_avg": final_accuracy(a),
        "aaa_task_avg": average_incremental_accuracy(a),
        "forgetting": forgetting(a),
        "forgetting_clipped": forgetting(a, clipped=True),
        "forgetting_coda": coda_forgetting(a),
        "bwt": backward_transfer(a),
        "learning_acc": learning_accuracy(a),
    }


def matrix_from_counts(correct: Sequence[Sequence[int]], totals: Sequence[int],
                       task_ranges: Sequence[tuple[int, int]]) -> tuple[list[list[float]], list[int]]:
    """Accuracy matrix (%) and per-task test counts from per-class correct counts.

    ``correct[t][c]`` counts correct predictions on class ``c`` after step ``t`` (classes
    seen by then); ``totals[c]`` is the number of test samples of class ``c``.
    """
    counts = [int(sum(totals[lo:hi])) for lo, hi in task_ranges]
    matrix = []
    for t, row in enumerate(correct):
        matrix.append([100.0 * sum(row[lo:hi]) / counts[j] for j, (lo, hi) in enumerate(task_ranges[: t + 1])])
    return matrix, counts


def stability_plasticity(correct: Sequence[Sequence[int]], totals: Sequence[int],
                         task_ranges: Sequence[tuple[int, int]]) -> list[tuple[float | None, float]]:
    """After each step t: (accuracy on the old classes, accuracy on the new task's classes), in %.

    Old: the classes of tasks before t, sample-weighted (correct over test samples; None at
    the first step); new: task t's classes. ``correct`` and ``totals`` as for
    :func:`matrix_from_counts` (per-class correct counts after each step, test samples per class).
    """
    out = []
    for t, row in enumerate(correct):
        lo, hi = task_ranges[t]
        old = 100.0 * sum(row[:lo]) / sum(totals[:lo]) if lo and sum(totals[:lo]) else None
        out.append((old, 100.0 * sum(row[lo:hi]) / sum(totals[lo:hi])))
    return out
