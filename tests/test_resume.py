"""Checkpoint and resume: a run killed (SIGKILL) or stopped (Ctrl-C) in the middle of a task
and resumed gives exactly the results of an uninterrupted run with the same seed."""

import json
import signal
import subprocess
import sys

import jsonschema
import pytest

from clbench.engine.loop import Loop
from clbench.engine.trainer import Trainer
from clbench.errors import ConfigError, DamagedFileError
from clbench.experiment import DataCache, execute, plan, resume
from clbench.records import SCHEMA_PATH, load_record
from clbench.registry import METHODS

from conftest import TINY

# 2 tasks of 2 classes, 32 training samples per task, batch 16, 4 epochs: 8 steps per task
TWO_TASKS = [(k, v) for k, v in TINY if k not in ("benchmark.n_classes", "benchmark.n_tasks", "train.epochs")]
RUN = TWO_TASKS + [("benchmark.n_classes", 4), ("benchmark.n_tasks", 2), ("train.epochs", 4)]

# Runs the CLI, sending itself a signal at a given training step (before that step runs).
LAUNCH = '''
import os, signal, sys
from clbench.engine.loop import Loop

TASK, STEP, SIG = (int(v) for v in os.environ["SIGNAL_AT"].split(","))
# Ctrl-C as in a terminal: a shell's background job (e.g. a CI step started with &) inherits
# SIGINT ignored, and clbench rightly keeps an ignored SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
original, calls = Loop.step, {}


def step(self, spec, *args):
    calls[spec.task_index] = calls.get(spec.task_index, 0) + 1
    if spec.task_index == TASK and calls[spec.task_index] == STEP:
        os.kill(os.getpid(), SIG)
    return original(self, spec, *args)


Loop.step = step
from clbench.cli import main
sys.exit(main())
'''


def _cli(*args, env_signal=None, script=None):
    import os

    env = dict(os.environ, SIGNAL_AT=env_signal or "")
    cmd = [sys.executable, str(script)] if env_signal else [sys.executable, "-m", "clbench.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=600, env=env)


def _same_results(a, b):
    assert a["status"] == b["status"] == "complete"
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert [t["correct_per_class"] for t in a["tasks"]] == [t["correct_per_class"] for t in b["tasks"]]
    assert [t["train_logs"] for t in a["tasks"]] == [t["train_logs"] for t in b["tasks"]]
    assert [t["steps"] for t in a["tasks"]] == [t["steps"] for t in b["tasks"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    (planned,) = plan(["lora"], "shapes", [1993], None, RUN + [("engine.output_dir", str(out))])
    return execute(planned)


@pytest.mark.slow
@pytest.mark.parametrize("sig, step, every, expected_exit, resumed_at", [
    (signal.SIGKILL, 8, 3, -signal.SIGKILL, 6),  # killed during step 8: back to the checkpoint of step 6
    (signal.SIGINT, 5, 0, 130, 5),  # Ctrl-C during step 5: the step finishes, is saved, the run stops
])
def test_stopped_mid_task_then_resumed_equals_uninterrupted(tmp_path, uninterrupted, sig, step, every,
                                                            expected_exit, resumed_at):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    out = tmp_path / "results"
    sets = [a for k, v in RUN if k != "engine.progress" for a in ("--set", f"{k}={v}")]
    first = _cli("run", "--methods", "lora", "--no-progress", "--output-dir", str(out), *sets,
                 "--set", f"engine.checkpoint_every={every}", env_signal=f"1,{step},{int(sig)}", script=script)
    assert first.returncode == expected_exit, first.stderr[-2000:]
    (run_dir,) = (out / "shapes" / "lora").iterdir()
    stopped = load_record(run_dir)
    assert len(stopped["tasks"]) == 1  # task 0 finished; task 1 was in progress
    if sig == signal.SIGINT:
        assert stopped["status"] == "interrupted" and f"clbench run --resume {run_dir}" in first.stderr
    else:
        assert stopped["status"] == "running"  # SIGKILL: nobody wrote a final status

    second = _cli("run", "--resume", str(run_dir), "--no-progress")
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = load_record(run_dir)
    jsonschema.validate(resumed, json.loads(SCHEMA_PATH.read_text()))
    assert resumed["resumes"][0]["tasks_done"] == 1
    assert resumed["resumes"][0]["within_task"]["steps"] == resumed_at
    _same_results(resumed, uninterrupted)
    assert resumed["run_dir"] == str(run_dir) and not (run_dir / "checkpoint").exists()
    assert json.loads((run_dir / "record.json").read_text())["comparable"] is True


class Crash(BaseException):
    """Stands for the process dying: nothing in clbench handles it."""


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_resumes_to_the_same_results(method, tmp_path, monkeypatch):
    """Crash in task 2 of 2 (in training, or in evaluation for methods that do not train), resume."""
    cache = DataCache()
    overrides = TWO_TASKS + [("train.epochs", 1), ("benchmark.n_classes", 4), ("benchmark.n_tasks", 2),
                             ("engine.output_dir", str(tmp_path)), ("engine.checkpoint_every", 1)]
    (planned,) = plan([method], "shapes", [1993], None, overrides)
    reference = execute(planned, cache=cache)
    trains = reference["tasks"][1]["steps"] > 0
    calls = {"n": 0}

    def crash_after_one_step(loop, spec, *args):  # at task 2's second step, in whichever loop it falls
        calls["n"] += spec.task_index == 1
        if calls["n"] > 1:
            raise Crash
        return original_step(loop, spec, *args)

    def crash_in_evaluation(trainer, task):
        if task.index == 1:
            raise Crash
        return original_eval(trainer, task)

    original_step, original_eval = Loop.step, Trainer.evaluate
    if trains:
        monkeypatch.setattr(Loop, "step", crash_after_one_step)
    else:
        monkeypatch.setattr(Trainer, "evaluate", crash_in_evaluation)
    with pytest.raises(Crash):
        execute(planned, cache=cache)
    monkeypatch.undo()
    run_dir = max((tmp_path / "shapes" / method).iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert load_record(run_dir)["status"] == "failed"
    record = resume(run_dir, cache=cache)
    assert record["resumes"][0]["tasks_done"] == 1
    assert (record["resumes"][0]["within_task"] is not None) == trains
    _same_results(record, reference)


def test_resume_refuses_what_it_cannot_continue(tmp_path, uninterrupted):
    with pytest.raises(DamagedFileError, match="There is no run record .*record.json. Pass a run directory written by"):
        resume(tmp_path)
    record = {"method": "lora", "benchmark": "shapes", "seed": 1, "preset": None, "status": "failed",
              "config": {"engine": {}, "train": {}, "backbone": {}, "benchmark": {}, "method": {}}}
    (tmp_path / "record.json").write_text(json.dumps(record))
    with pytest.raises(DamagedFileError, match="does not match clbench's record schema: the record lacks 'schema_version'"):
        resume(tmp_path)
    (tmp_path / "record.json").write_text(json.dumps({**uninterrupted, "status": "failed"}))
    with pytest.raises(ConfigError, match="Cannot change 'benchmark.n_tasks' when resuming"):
        resume(tmp_path, overrides=[("benchmark.n_tasks", 2)])
    (tmp_path / "record.json").write_text(json.dumps(uninterrupted))
    assert resume(tmp_path)["status"] == "complete"  # nothing to do


@pytest.mark.slow
def test_resume_with_new_training_values_restarts_the_unfinished_task(tmp_path, monkeypatch):
    """The documented recovery after a divergence: --resume DIR --set train.lr=<lower> runs the
    unfinished task again from its start with the new value (a step checkpoint within it
    holds weights and optimiser moments of the old value), so the result equals a run that
    used the new value for that task from the start."""
    base = TWO_TASKS + [("train.epochs", 2), ("benchmark.n_classes", 4), ("benchmark.n_tasks", 2)]
    (planned,) = plan(["lora"], "shapes", [1993], None, base + [("train.first_task_lr", 0.05), ("train.lr", 0.01),
                                                                  ("engine.output_dir", str(tmp_path / "ref"))])
    reference = execute(planned)
    calls = {"n": 0}
    original = Loop.step

    def crash(loop, spec, *args):
        if spec.task_index == 1:
            calls["n"] += 1
            if calls["n"] == 3:
                raise Crash
        return original(loop, spec, *args)

    monkeypatch.setattr(Loop, "step", crash)
    (planned,) = plan(["lora"], "shapes", [1993], None, base + [("train.lr", 0.05), ("engine.checkpoint_every", 1),
                                                                  ("engine.output_dir", str(tmp_path / "run"))])
    with pytest.raises(Crash):
        execute(planned)
    monkeypatch.undo()
    run_dir = next((tmp_path / "run" / "shapes" / "lora").iterdir())
    assert (run_dir / "checkpoint" / "step.pt").exists()
    record = resume(run_dir, overrides=[("train.lr", 0.01)])
    assert record["resumes"][0]["within_task"] is None and not record["comparable"]
    _same_results(record, reference)
