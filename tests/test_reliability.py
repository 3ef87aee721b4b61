"""Bad values, corrupt files, full disks and killed runs end in one clear message, never a
traceback (issue 16). Every bad input is generated here."""

from __future__ import annotations

import errno
import re
import os
from pathlib import Path

import pytest
import torch

import clbench.records as records
from clbench.errors import ConfigError, OutputError
from clbench.experiment import DataCache, execute, plan, resume
from clbench.records import load_record

from conftest import TINY


def _plan(tmp_path, *overrides, method="lora", cache=None):
    return plan([method], "shapes", [1993], None, TINY + [("engine.output_dir", str(tmp_path / "out")), *overrides],
                cache)


@pytest.mark.parametrize("key, value, message", [
    ("train.lr", "nan", r"'train.lr' must be in \(0, 1000000\], got nan\. Fix it, e\.g\. --set train\.lr=0\.01\."),
    ("train.lr", "-0.1", r"'train.lr' must be in \(0, 1000000\], got -0\.1\."),
    ("train.lr", "1e300", r"'train.lr' must be in \(0, 1000000\], got 1e\+300\."),  # Adam/SGD overflowed
    ("train.first_task_lr", "inf", r"'train.first_task_lr' must be in \(0, 1000000\], got inf\."),
    ("train.batch_size", "0", r"'train.batch_size' must be >= 1, got 0\. Fix it, e\.g\. --set train\.batch_size=64\."),
    ("train.epochs", "0", r"'train.epochs' must be >= 1, got 0\. Fix it, e\.g\. --set train\.epochs=5\."),
    ("train.epochs", "-2", r"'train.epochs' must be >= 1, got -2\."),
    ("train.first_task_epochs", "0", r"'train.first_task_epochs' must be >= 1, got 0\."),
    ("benchmark.n_classes", "0", r"'benchmark.n_classes' must be in \[1, \d+\), got 0\."),
    ("benchmark.n_tasks", "0", r"'benchmark.n_tasks' must be >= 1, got 0\."),
    ("engine.checkpoint_every", "-1", r"'engine.checkpoint_every' must be >= 0, got -1\."),
    ("lora.rank", "0", r"'lora.rank' must be >= 1, got 0\. Fix it, e\.g\. --set lora\.rank=10\."),
])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, (key, value))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_overflowing_lr_is_a_clear_error_on_the_command_line(tmp_path, optimizer):
    """Adam with lr=1e300 ended in 'RuntimeError: value cannot be converted to type float without overflow'."""
    for lr in ("1e300", "inf"):
        result = cli("run", "--methods", "lora", "--output-dir", tmp_path, "--set", f"train.optimizer={optimizer}",
                     "--set", f"train.lr={lr}")
        assert result.exit_code == 2 and said(result, f"error: Config key 'train.lr' must be in (0, 1000000], got "
                                                      f"{float(lr)!r}. Fix it, e.g. --set train.lr="), result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method, key, value, message", [
    ("inflora", "inflora.rank", "0", r"'inflora.rank' must be >= 1"),
    ("inflora", "inflora.lamb", "1.5", r"'inflora.lamb' must be in \[0, 1\], got 1\.5\. Fix it, e\.g\. --set inflora\.lamb=0\.95"),
    ("inflora", "inflora.blocks", "0,-1", r"'inflora.blocks' must have every value >= 0"),
    ("dualprompt", "dualprompt.pool_size", "0", r"'dualprompt.pool_size' must be >= 1"),
    ("dualprompt", "dualprompt.e_length", "0", r"'dualprompt.e_length' must be >= 1"),
    ("coda-prompt", "coda-prompt.prompt_length", "0", r"'coda-prompt.prompt_length' must be >= 2"),
    ("coda-prompt", "coda-prompt.ortho_mu", "-1", r"'coda-prompt.ortho_mu' must be >= 0"),
])
def test_method_options_have_ranges(tmp_path, method, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, (key, value), method=method)


def test_every_method_option_has_help_and_a_range_its_default_meets():
    from clbench.config import check_options, describe_options
    from clbench.registry import METHODS

    for name in ("lora", "inflora", "inflora-b5", "dualprompt", "coda-prompt", "finetune", "simplecil"):
        cls = METHODS.get(name).Config
        check_options(cls(), name)
        options = describe_options(cls)
        assert all(o.help for o in options), name
        assert all(o.range for o in options if o.type in ("int", "float", "tuple[int, ...]")), name


def test_a_run_that_would_not_train_is_refused(tmp_path):
    """16 training samples per task, batch 32, drop_last: zero steps. Refused for a method
    that trains; fine for one that trains nothing by design."""
    bad = [("train.batch_size", 32), ("train.drop_last", "true")]
    with pytest.raises(ConfigError, match=r"Task 1 of shapes has 32 training samples, which with train\.batch_size=64 "
                                          r"and train\.drop_last=true gives no training step: 'lora' would record a run "
                                          r"that did not train\. Fix it, e\.g\. --set train\.batch_size=32 or "
                                          r"--set train\.drop_last=false\."):
        _plan(tmp_path, ("train.batch_size", 64), ("train.drop_last", "true"), cache=DataCache())
    assert not (tmp_path / "out").exists()
    _plan(tmp_path, *bad, cache=DataCache())  # 2 classes x 16 = 32 samples: one step
    (run,) = _plan(tmp_path, ("train.batch_size", 64), ("train.drop_last", "true"), method="simplecil",
                   cache=DataCache())
    assert run.config.train.batch_size == 64


def test_first_session_methods_are_checked_only_where_they_train(tmp_path):
    """Task 0 of 4 classes (64 samples), then tasks of one class (16 samples), batch 32 with
    drop_last: the later tasks give no step, which matters only for methods training there."""
    small_late = [("benchmark.init_cls", 4), ("train.batch_size", 32), ("train.drop_last", "true")]
    with pytest.raises(ConfigError, match=r"Task 2 of shapes has 16 training samples"):
        _plan(tmp_path, *small_late, cache=DataCache())
    _plan(tmp_path, *small_late, method="ranpac", cache=DataCache())  # trains task 0 only
    big_batch = [("train.batch_size", 128), ("train.drop_last", "true")]
    with pytest.raises(ConfigError, match=r"Task 1 of shapes has 32 training samples.*'ranpac'"):
        _plan(tmp_path, *big_batch, method="ranpac", cache=DataCache())
    _plan(tmp_path, *big_batch, method="fecam", cache=DataCache())  # petl=none (default): trains nothing
    with pytest.raises(ConfigError, match=r"Task 1 of shapes .*'fecam'"):
        _plan(tmp_path, *big_batch, ("fecam.petl", "adapter"), method="fecam", cache=DataCache())


# ---------------------------------------------------------------------------- full disk, I/O errors

class _FillingFile:
    """A file whose disk fills up after ``room`` bytes (or fails with ``code`` at once)."""

    def __init__(self, fh, room: int, code: int):
        self._fh, self._room, self._code = fh, room, code

    def write(self, data):
        self._room -= len(data)
        if self._room < 0:
            raise OSError(self._code, os.strerror(self._code))
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _fill_disk(monkeypatch, marker: str, room: int = 1000, code: int = errno.ENOSPC, from_write: int = 1):
    """From the ``from_write``-th on, writes of temporary files whose name holds ``marker``
    hit a full disk (or fail with ``code``)."""
    real, seen = os.fdopen, {"n": 0}

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        if marker not in os.readlink(f"/proc/self/fd/{fd}"):
            return fh
        seen["n"] += 1
        return _FillingFile(fh, room, code) if seen["n"] >= from_write else fh

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("code, problem", [(errno.ENOSPC, r"the disk \(or your quota\) is full"),
                                           (errno.EIO, "Input/output error")])
def test_torch_zip_writer_failure_becomes_one_clear_error(tmp_path, monkeypatch, code, problem):
    target = tmp_path / "step.pt"
    target.write_bytes(b"old")
    _fill_disk(monkeypatch, ".step.pt.", code=code)
    with pytest.raises(OutputError, match=f"Cannot write {target}: {problem}"):
        records.atomic_write_with(target, lambda fh: torch.save({"w": torch.zeros(10_000)}, fh))
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_a_writer_failure_that_is_no_io_error_is_not_disguised(tmp_path):
    def broken(fh):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        records.atomic_write_with(tmp_path / "x", broken)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("marker, from_write", [
    (".step.pt.", 3),  # task 1 takes 2 steps, each checkpointed
    pytest.param(".boundary.pt.", 2, marks=pytest.mark.slow),
    pytest.param(".task_01.safetensors.", 1, marks=pytest.mark.slow),
])
def test_full_disk_while_checkpointing_leaves_a_truthful_resumable_run(tmp_path, monkeypatch, marker, from_write):
    """The disk fills up while a step checkpoint, a task checkpoint or a task state of task 2
    is written: one clear error, no temporary file, a 'failed' record that says how to go
    on, and resuming (disk freed) finishes the run."""
    cache = DataCache()
    (planned,) = _plan(tmp_path, ("engine.checkpoint_every", 1), cache=cache)
    _fill_disk(monkeypatch, marker, from_write=from_write)
    with pytest.raises(OutputError, match=r"the disk \(or your quota\) is full.*The run stopped; once the disk has "
                                          r"room, continue it with: clbench run --resume"):
        execute(planned, cache=cache)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "out" / "shapes" / "lora").iterdir()
    failed = load_record(run_dir)
    assert failed["status"] == "failed" and "clbench run --resume" in failed["error"]
    assert len(failed["tasks"]) == (2 if marker == ".boundary.pt." else 1) and not list(run_dir.rglob("*.tmp"))
    record = resume(run_dir, cache=cache)
    assert record["status"] == "complete" and len(record["tasks"]) == 3
    assert not (run_dir / "checkpoint").exists()


# ---------------------------------------------------------------------------- damaged and hostile files

class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A lora run (3 tasks, 2 steps each, a step checkpoint after every step) that crashed
    at the second step of task 3: boundary.pt after task 2 and step.pt within task 3."""
    from clbench.engine.loop import Loop

    out = tmp_path_factory.mktemp("stopped")
    (planned,) = plan(["lora"], "shapes", [1993], None,
                      TINY + [("engine.output_dir", str(out)), ("engine.checkpoint_every", 1)])
    original, calls = Loop.step, {"n": 0}

    def step(loop, spec, *args):
        if spec.task_index == 2:
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash
        return original(loop, spec, *args)

    Loop.step = step
    try:
        with pytest.raises(Crash):
            execute(planned)
    finally:
        Loop.step = original
    (run_dir,) = (out / "shapes" / "lora").iterdir()
    assert {p.name for p in (run_dir / "checkpoint").iterdir()} == {"boundary.pt", "step.pt"}
    return run_dir


@pytest.fixture
def damaged(stopped_run, tmp_path):
    """A fresh copy of the stopped run to damage (its record names the copy's directory)."""
    import shutil

    run_dir = tmp_path / stopped_run.name
    shutil.copytree(stopped_run, run_dir)
    return run_dir


def cli(*args):
    from typer.testing import CliRunner

    import clbench.cli  # noqa: F401 (attaches the commands)
    from clbench.cli_common import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    return result


def said(result, *parts: str) -> bool:
    """Whether the command's output holds every part (line wrapping ignored)."""
    flat = re.sub(r"\s+", "", result.output)
    return all(re.sub(r"\s+", "", part) in flat for part in parts)


def _pickled_payload(marker: Path) -> bytes:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"version": 2, "tasks_done": 1, "model": Payload(), "rng": []})


NOT_OURS = ("is no checkpoint clbench wrote: it is corrupt, or holds Python objects other than tensors and plain values "
            "(it was refused, so nothing in it ran)")
STEP_DAMAGE = {
    "truncated": (lambda b: b[: len(b) // 2], "is truncated or corrupt (not a complete checkpoint archive)"),
    "garbage": (lambda b: b"not a checkpoint" * 20, NOT_OURS),
    "empty": (lambda b: b"", "is empty"),
}


@pytest.mark.parametrize("damage", sorted(STEP_DAMAGE))
def test_a_damaged_step_checkpoint_falls_back_to_the_task_boundary(damaged, damage):
    step = damaged / "checkpoint" / "step.pt"
    spoil, problem = STEP_DAMAGE[damage]
    step.write_bytes(spoil(step.read_bytes()))
    result = cli("run", "--resume", damaged, "--no-progress")
    assert result.exit_code == 0, result.output
    assert said(result, f"warning: The step checkpoint {step} {problem}. It is ignored: the run resumes from the end "
                        f"of task 2 (the last task boundary)."), result.output
    record = load_record(damaged)
    assert record["status"] == "complete" and len(record["tasks"]) == 3
    assert record["resumes"][0]["within_task"] is None and "step checkpoint" in record["resumes"][0]["fallback"]
    assert not (damaged / "checkpoint").exists()


@pytest.mark.parametrize("damage, problem", [
    ("truncated", STEP_DAMAGE["truncated"][1]),
    ("empty", "is empty"),
    ("garbage", NOT_OURS),
    ("pickled", NOT_OURS),
    ("list", "is no clbench checkpoint of this version (missing or malformed: version, tasks_done, model, rng)"),
])
def test_a_damaged_task_checkpoint_is_one_clear_message(damaged, tmp_path, damage, problem):
    boundary = damaged / "checkpoint" / "boundary.pt"
    marker = tmp_path / "payload-ran"
    if damage == "pickled":
        boundary.write_bytes(_pickled_payload(marker))
    elif damage == "list":
        torch.save([1, 2, 3], boundary)
    else:
        spoil = STEP_DAMAGE[damage][0]
        boundary.write_bytes(spoil(boundary.read_bytes()))
    result = cli("run", "--resume", damaged, "--no-progress")
    assert result.exit_code == 2 and said(
        result, f"error: The task checkpoint {boundary} {problem}. Resuming needs it: delete it to resume from the "
                f"first task (the finished tasks are trained again), or start a new run."), result.output
    assert not marker.exists()
    if damage == "empty":  # the advice works: the run starts again and completes
        boundary.unlink()
        assert cli("run", "--resume", damaged, "--no-progress").exit_code == 0
        assert load_record(damaged)["status"] == "complete"


@pytest.mark.parametrize("name", ["boundary.pt", "step.pt"])
def test_a_checkpoint_that_does_not_fit_the_method_is_one_clear_message(damaged, name):
    path = damaged / "checkpoint" / name
    saved = torch.load(path, weights_only=True)
    key = next(k for k in saved["model"] if k.startswith("head."))
    saved["model"]["unknown." + key] = saved["model"].pop(key)  # a readable file holding another model's state
    torch.save(saved, path)
    result = cli("run", "--resume", damaged, "--no-progress")
    earlier = "the last task boundary" if name == "step.pt" else "the first task (the finished tasks are trained again)"
    assert result.exit_code == 2 and said(
        result, f"error: The checkpoint {path} does not fit this run's 'lora' method (", "missing",
        f"it was replaced or edited. Delete it to resume from {earlier}, or start a new run."), result.output
    assert load_record(damaged)["status"] != "complete"  # nothing written over the finished tasks
    path.unlink()  # the advice works
    assert cli("run", "--resume", damaged, "--no-progress").exit_code == 0
    assert load_record(damaged)["status"] == "complete"


RECORD_EDITS = {
    "no protocol": (lambda r: {k: v for k, v in r.items() if k != "protocol"}, "the record lacks 'protocol'"),
    "task is a number": (lambda r: {**r, "tasks": [5]}, "tasks[0] is a number, not an object"),
    "a list": (lambda r: [r], "the record is an array, not an object"),
    "seed text": (lambda r: {**r, "seed": "x"}, "seed is a string, not an integer"),
}


@pytest.mark.parametrize("edit", sorted(RECORD_EDITS))
@pytest.mark.parametrize("command", ["resume", "landscape"])
def test_a_hand_edited_record_is_reported_as_not_matching_the_schema(damaged, edit, command):
    import json

    path = damaged / "record.json"
    change, problem = RECORD_EDITS[edit]
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    args = ["run", "--resume", damaged] if command == "resume" else ["landscape", damaged, "--plane", "none"]
    result = cli(*args, "--no-progress")
    assert result.exit_code == 2 and said(
        result, f"error: The run record {path} does not match clbench's record schema: {problem}. It was damaged or "
                f"edited by hand; restore it from a copy, or remove the run directory and start a new run."), result.output


def test_a_record_that_is_no_json_is_one_clear_message(damaged):
    path = damaged / "record.json"
    path.write_bytes(b"\xff\xfe{")
    result = cli("run", "--resume", damaged)
    assert result.exit_code == 2 and said(result, f"error: The run record {path} is not readable JSON"), result.output


@pytest.mark.parametrize("content, detail", [
    (lambda b: (10**12).to_bytes(8, "little") + b"{}", "header too large|HeaderTooLarge"),
    (lambda b: (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc", "utf|UTF|invalid"),
    (lambda b: b[: len(b) // 2], ""),
    (lambda b: b"", ""),
])
def test_a_damaged_task_state_is_one_clear_message_for_landscape(damaged, content, detail):
    state = damaged / "state" / "task_00.safetensors"
    state.write_bytes(content(state.read_bytes()))
    result = cli("landscape", damaged, "--plane", "none", "--points", 2, "--no-progress")
    assert result.exit_code == 2 and said(result, f"error: The task state {state} is damaged or no safetensors state "
                                                  f"written by clbench (", "Restore it from a copy"), result.output
    assert re.search(detail, result.output)


# ---------------------------------------------------------------------------- housekeeping

def test_unfinished_run_directories_are_counted_listed_and_removed(stopped_run, tmp_path):
    import json
    import shutil

    root = tmp_path / "results"
    parent = root / "shapes" / "lora"
    parent.mkdir(parents=True)
    states = {"20260101-000000-s1-aaaaaa": "failed", "20260101-000000-s2-bbbbbb": "running",
              "20260101-000000-s3-cccccc": "complete"}
    for name, status in states.items():
        shutil.copytree(stopped_run, parent / name)
        record = json.loads((parent / name / "record.json").read_text())
        (parent / name / "record.json").write_text(json.dumps({**record, "status": status}))
    (parent / "20260101-000000-s4-dddddd").mkdir()  # killed before its record was written
    (parent / "20260101-000000-s5-eeeeee").mkdir()
    (parent / "20260101-000000-s5-eeeeee" / "record.json").write_text("{")
    expected = ("5 unfinished run directories (1 failed, 1 leftover checkpoint, 1 no record, 1 running, "
                "1 unreadable record)")

    listing = cli("clean", root)
    assert listing.exit_code == 0 and said(listing, expected, "Continue one with 'clbench run --resume RUN_DIR'")
    line = f"{expected}. List them with 'clbench clean {root}'; remove them with 'clbench clean {root} --remove'"
    dry = cli("sweep", "--methods", "simplecil", "--output-dir", root, "--dry-run")
    assert dry.exit_code == 0 and said(dry, line), dry.output
    report = cli("report", root, "--no-plots", "--no-html")  # the one complete run is reported
    assert report.exit_code == 0 and said(report, "3 record(s) skipped", line), report.output

    kept = cli("clean", root, "--remove")  # everything was written just now: maybe still running
    assert said(kept, "Removed 0 of 5.", "Kept 5 written to in the last 24 h") and len(list(parent.iterdir())) == 5
    assert cli("clean", root, "--remove", "--idle", 0).exit_code == 0
    assert [p.name for p in parent.iterdir()] == ["20260101-000000-s3-cccccc"]  # complete: only its checkpoint went
    assert not (parent / "20260101-000000-s3-cccccc" / "checkpoint").exists()
    assert said(cli("clean", root), f"No unfinished run directories under {root}.")


def test_report_without_complete_runs_counts_the_unfinished_ones(tmp_path):
    (tmp_path / "shapes" / "lora" / "20260101-000000-s1-aaaaaa").mkdir(parents=True)
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and said(result, "No complete run records under", "1 unfinished run directory "
                                                  "(1 no record): see 'clbench clean'."), result.output


def test_resuming_a_complete_run_removes_a_leftover_checkpoint(damaged):
    import json

    path = damaged / "record.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "complete"}))
    assert resume(damaged)["status"] == "complete" and not (damaged / "checkpoint").exists()


def test_a_record_naming_a_state_outside_its_run_is_refused(damaged):
    import json

    path = damaged / "record.json"
    record = json.loads(path.read_text())
    record["tasks"][0]["state"]["file"] = "../../../etc/passwd"
    path.write_text(json.dumps(record))
    result = cli("landscape", damaged, "--plane", "none", "--points", 2, "--no-progress")
    assert result.exit_code == 2 and said(result, f"error: The record of {damaged} names a task state outside its run "
                                                  f"directory"), result.output
