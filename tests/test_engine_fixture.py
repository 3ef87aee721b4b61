"""Every method's results on a short ``shapes`` run equal the stored fixture: accuracies,
per-class counts and steps exactly, per-task losses to float32 rounding (their last bits
depend on the CPU's kernels).

The fixture (``tests/fixtures/engine_results_short.json``) was recorded before the engine was
reshaped; an engine change that moves any accuracy, per-class count, step count or per-task
loss fails here. A deliberate change regenerates the fixture in its own commit that says what
moved and why (see ``tests/fixtures/make_engine_fixture.py``).
"""

import json
import sys
from pathlib import Path

import pytest

from clbench.experiment import DataCache

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_engine_fixture as fixture  # noqa: E402

EXPECTED = json.loads(fixture.fixture_path("short").read_text())
CACHE = DataCache()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_results_equal_the_fixture(method, tmp_path):
    result = json.loads(json.dumps(fixture.run(method, CACHE, str(tmp_path))))
    expected = EXPECTED[method]
    assert result["correct_per_class"] == expected["correct_per_class"]
    assert result["accuracy_matrix"] == expected["accuracy_matrix"]
    assert result["steps"] == expected["steps"]
    assert fixture.agrees(result, expected), (result["train_logs"], expected["train_logs"])


def test_agreement_tolerates_rounding_only():
    expected = EXPECTED["lora"]
    moved = json.loads(json.dumps(expected))
    first = moved["train_logs"][0]
    key = next(iter(first))
    first[key] *= 1 + 1e-7  # another CPU's float32 kernels
    assert fixture.agrees(moved, expected)
    first[key] *= 1 + 1e-3  # a real change of the computation
    assert not fixture.agrees(moved, expected)
    moved = json.loads(json.dumps(expected))
    moved["correct_per_class"][0][0] -= 1  # one prediction flipped
    assert not fixture.agrees(moved, expected)
