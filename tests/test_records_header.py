"""The record header (records.header) fits record_schema.json before any task has run."""

import json

import jsonschema
from conftest import TINY

from clbench.experiment import DataCache, build, plan
from clbench.records import SCHEMA_PATH, RunRecorder, header
from clbench.resolve import PlannedRun


def test_a_fresh_record_fits_the_schema_and_keeps_what_was_asked(tmp_path):
    (run,) = plan(["simplecil"], "shapes", [3], None, TINY + [("engine.output_dir", str(tmp_path))],
                  file_overrides=[("train.epochs", 2)])
    data, stream, method = build(run.config, DataCache())
    run_dir = tmp_path / "run-x"
    engine = {"device": "cpu", "autocast": "fp32"}
    head = header(run, stream, data, method.backbone, engine, 1, run_dir)
    record = RunRecorder(run_dir, head, write=False).record
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    assert (record["run_id"], record["seed"], record["run_dir"]) == ("run-x", 3, str(run_dir))
    assert record["overrides"][0] == ["train.epochs", "2"]  # file values first, as strings
    assert record["engine"] == {**engine, "world_size": 1} and record["protocol"]["n_tasks"] == 3
    assert record["protocol"]["task_ranges"] == [[t.lo, t.hi] for t in stream.tasks]
    assert isinstance(run, PlannedRun) and record["config"] == run.config.to_dict()
