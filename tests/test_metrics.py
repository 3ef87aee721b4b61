"""Metrics are pure functions of the accuracy matrix; values checked by hand."""

import math

import numpy as np
import pytest

from clbench import metrics

# a(t, j): rows = after task t, columns = task j.
A = [[90.0], [70.0, 80.0], [60.0, 75.0, 85.0]]
COUNTS = [100, 300, 100]


def test_curve_sample_weighted_and_task_averaged():
    assert metrics.accuracy_curve(A).tolist() == pytest.approx([90.0, 75.0, 220 / 3])
    # step 1: (70*100 + 80*300) / 400 = 77.5; step 2: (6000 + 22500 + 8500) / 500 = 74
    assert metrics.accuracy_curve(A, COUNTS).tolist() == pytest.approx([90.0, 77.5, 74.0])
    assert metrics.final_accuracy(A, COUNTS) == pytest.approx(74.0)
    assert metrics.average_incremental_accuracy(A, COUNTS) == pytest.approx((90 + 77.5 + 74) / 3)


def test_forgetting_bwt_learning_accuracy():
    # task 0: max(90, 70) - 60 = 30; task 1: max(80) - 75 = 5
    assert metrics.forgetting(A) == pytest.approx(17.5)
    assert metrics.forgetting(A, clipped=True) == pytest.approx(17.5)
    assert metrics.backward_transfer(A) == pytest.approx(((60 - 90) + (75 - 80)) / 2)
    assert metrics.learning_accuracy(A) == pytest.approx((90 + 80 + 85) / 3)
    # CODA: step 1 drop on task 0 = 20; step 2 drops (10 + 5)/2 = 7.5; mean 13.75
    assert metrics.coda_forgetting(A) == pytest.approx(13.75)


def test_chaudhry_can_be_negative_clipped_cannot():
    improving = [[50.0], [60.0, 70.0], [80.0, 70.0, 90.0]]
    # Chaudhry: task 0: max(50, 60) - 80 = -20; task 1: 70 - 70 = 0 -> -10
    assert metrics.forgetting(improving) == pytest.approx(-10.0)
    # clipped: max includes the final step: task 0: 80 - 80 = 0
    assert metrics.forgetting(improving, clipped=True) == pytest.approx(0.0)


def test_single_task_has_no_forgetting():
    s = metrics.summarize([[88.0]], [10])
    assert s["acc"] == 88.0 and s["forgetting"] is None and s["bwt"] is None


def test_matrix_typed_in_from_sdlora_logs():
    # SD-LoRA's official log logs/InR-T5.log: its curve -> AAA 83.00; InA final row task-mean 59.24 (A_N is 58.66 weighted)
    curve = [89.64, 84.43, 81.37, 80.22, 79.32]
    square = np.full((5, 5), np.nan)
    for t, v in enumerate(curve):
        square[t, : t + 1] = v  # a matrix whose per-task rows all equal A_t
    assert metrics.average_incremental_accuracy(square) == pytest.approx(83.00, abs=0.005)
    ina_final = [53.71, 55.68, 64.66, 54.5, 62.94, 67.16, 62.33, 59.84, 55.1, 56.45]
    rows = [[0.0] * (t + 1) for t in range(9)] + [ina_final]
    assert metrics.final_accuracy(rows) == pytest.approx(59.24, abs=0.005)


def test_matrix_from_counts_groups_classes_by_task():
    totals = [10, 10, 20, 20]  # classes 0,1 -> task 0; 2,3 -> task 1
    correct = [[9, 8], [5, 5, 20, 10]]
    matrix, counts = metrics.matrix_from_counts(correct, totals, [(0, 2), (2, 4)])
    assert counts == [20, 40]
    assert matrix == [[85.0], [50.0, 75.0]]


def test_invalid_matrices_are_rejected():
    with pytest.raises(ValueError, match="row 1"):
        metrics.as_matrix([[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        metrics.as_matrix([[101.0]])
    with pytest.raises(ValueError, match="positive"):
        metrics.accuracy_curve(A, [1, 0, 1])
    assert math.isnan(metrics.as_matrix(A)[0, 2])
