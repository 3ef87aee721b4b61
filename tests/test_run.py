"""End-to-end runs on the embedded benchmark: every method, records, determinism."""

import json

import jsonschema
import numpy as np
import pytest

from clbench import metrics
from clbench.engine.state import restore_state
from clbench.engine.trainer import Trainer
from clbench.experiment import DataCache, build, execute, plan
from clbench.records import SCHEMA_PATH, load_record
from clbench.statefile import load_state_file
from clbench.registry import METHODS

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def run_one(method, overrides, seed=1993, cache=None):
    (planned,) = plan([method], "shapes", [seed], None, overrides)
    return execute(planned, cache=cache)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_and_writes_a_complete_record(method, tiny):
    cache = DataCache()
    (planned,) = plan([method], "shapes", [1993], None, tiny)
    rec = execute(planned, cache=cache)
    jsonschema.validate(rec, SCHEMA)
    on_disk = load_record(rec["run_dir"])
    assert on_disk == json.loads(json.dumps(rec)) and on_disk["status"] == "complete"
    assert len(rec["tasks"]) == 3 and [len(r) for r in rec["accuracy_matrix"]] == [1, 2, 3]
    assert rec["protocol"]["class_order"] == np.random.RandomState(1993).permutation(6).tolist()
    assert [t["classes"] for t in rec["tasks"]] == [rec["protocol"]["class_order"][i:i + 2] for i in (0, 2, 4)]
    assert rec["protocol"]["weights"]["source"] == "bundled" and rec["protocol"]["split_id"].startswith("shapes-v1")
    # metrics are a pure function of the stored per-class counts
    matrix, counts = metrics.matrix_from_counts([t["correct_per_class"] for t in rec["tasks"]],
                                                rec["test_counts"]["per_class"], rec["protocol"]["task_ranges"])
    assert matrix == rec["accuracy_matrix"] and rec["metrics"] == metrics.summarize(matrix, counts)
    assert rec["tasks"][0]["n_train"] == 16 * 2
    # the state saved after each task restores a fresh instance that predicts exactly as recorded
    for task in rec["tasks"]:
        _, stream, fresh = build(planned.config, cache)
        restore_state(fresh, load_state_file(f"{rec['run_dir']}/{task['state']['file']}"))
        trainer = Trainer(fresh.to("cpu"), stream, planned.config)
        assert trainer.evaluate(stream.tasks[task["index"]]) == task["correct_per_class"]


def test_joint_trains_on_all_seen_data(tiny):
    rec = run_one("joint", tiny)
    assert [t["n_train"] for t in rec["tasks"]] == [32, 64, 96]


def test_same_seed_same_matrix_other_seed_other_order(tiny):
    cache = DataCache()
    a = run_one("lora", tiny, cache=cache)
    b = run_one("lora", tiny, cache=cache)
    c = run_one("lora", tiny, seed=7, cache=cache)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert [t["train_logs"] for t in a["tasks"]] == [t["train_logs"] for t in b["tasks"]]
    assert a["run_dir"] != b["run_dir"]
    assert a["protocol"]["class_order"] != c["protocol"]["class_order"]


def test_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(Exception, match="Unknown config key"):
        plan(["lora"], "shapes", [1], None, [("engine.output_dir", str(out)), ("train.nope", "1")])
    assert not out.exists()
