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
    assert record["environment"]["plugins"] == []  # all built in


def test_a_plugin_entry_is_listed_with_its_distribution_version_and_file(tmp_path, monkeypatch):
    import sys
    import types

    from clbench import registry
    from clbench.benchmarks.shapes import Shapes

    module = types.ModuleType("fake_clbench_plugin")
    module.__file__ = str(tmp_path / "fake_clbench_plugin.py")
    monkeypatch.setitem(sys.modules, "fake_clbench_plugin", module)
    monkeypatch.setattr(registry, "_loading", registry.Plugin("fake-plugin", "2.1", "fake = fake_clbench_plugin"))
    bench = type("PluginShapes", (Shapes,), {"__module__": "fake_clbench_plugin"})
    registry.register_benchmark("plugin-shapes")(bench)
    monkeypatch.setattr(registry, "_loading", None)
    try:
        (run,) = plan(["simplecil"], "plugin-shapes", [1], None, TINY + [("engine.output_dir", str(tmp_path))])
        data, stream, method = build(run.config, DataCache())
        head = header(run, stream, data, method.backbone, {"device": "cpu", "autocast": "fp32"}, 1, tmp_path / "r")
        jsonschema.validate(RunRecorder(tmp_path / "r", head, write=False).record, json.loads(SCHEMA_PATH.read_text()))
        assert head["environment"]["plugins"] == [{
            "kind": "benchmark", "name": "plugin-shapes", "distribution": "fake-plugin", "version": "2.1",
            "entry_point": "fake = fake_clbench_plugin", "module": "fake_clbench_plugin", "file": module.__file__}]
    finally:
        registry.BENCHMARKS._entries.pop("plugin-shapes")
