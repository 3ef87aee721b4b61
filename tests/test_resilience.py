"""Faults: concurrent writers, a full disk, an unwritable directory, a diverging loss."""

import datetime
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

import clbench.records as records
from clbench.errors import OutputError, TrainingDiverged
from clbench.experiment import DataCache, execute, plan, resume
from clbench.records import SCHEMA_PATH, ensure_writable, load_record, new_run_dir

from conftest import TINY

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def test_run_directory_names_never_collide(tmp_path, monkeypatch):
    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 1, 12, 0, 0)

    suffixes = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(records._dt, "datetime", Frozen)
    monkeypatch.setattr(records.secrets, "token_hex", lambda n: next(suffixes))
    first = new_run_dir(tmp_path, "shapes", "lora", 1)
    second = new_run_dir(tmp_path, "shapes", "lora", 1)  # same second, same random suffix twice: retried
    assert first.name == "20260101-120000-s1-aaaaaa" and second.name == "20260101-120000-s1-bbbbbb"


@pytest.mark.slow
def test_two_runs_into_one_directory_at_once(tmp_path):
    sets = [a for k, v in TINY if k != "engine.progress" for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "clbench.cli", "run", "--methods", "simplecil", "--no-progress",
           "--output-dir", str(tmp_path), *sets]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    found = sorted((tmp_path / "shapes" / "simplecil").glob("*/record.json"))
    assert len(found) == 2
    recs = [json.loads(p.read_text()) for p in found]
    for rec in recs:
        jsonschema.validate(rec, SCHEMA)
        assert rec["status"] == "complete" and len(rec["tasks"]) == 3
    assert recs[0]["run_id"] != recs[1]["run_id"] and recs[0]["accuracy_matrix"] == recs[1]["accuracy_matrix"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_unwritable_directory_is_named_with_the_fix(tmp_path):
    if not os.path.ismount("/sys"):
        pytest.skip("no sysfs here (a directory no one may create files in, root included)")
    with pytest.raises(OutputError, match=r"Cannot write /sys/clbench-test: the directory is not writable\. "
                                          r"Fix its permissions or choose a writable directory with --output-dir"):
        ensure_writable(Path("/sys/clbench-test"))


def test_full_disk_mid_run_keeps_the_written_record(tmp_path, monkeypatch):
    """The disk fills up while the record of task 2 is written: a clear error, the record on
    disk is the one of task 1, no temporary files are left."""
    real_fsync, writes = os.fsync, {"record": 0}

    def fsync(fd):
        if ".record.json." in os.readlink(f"/proc/self/fd/{fd}"):
            writes["record"] += 1
            if writes["record"] > 2:  # created, task 1 written; then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    (planned,) = plan(["simplecil"], "shapes", [1993], None, TINY + [("engine.output_dir", str(tmp_path))])
    with pytest.raises(OutputError, match="the disk \\(or your quota\\) is full. Free disk space"):
        execute(planned)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "shapes" / "simplecil").iterdir()
    on_disk = load_record(run_dir)
    assert on_disk["status"] == "running" and len(on_disk["tasks"]) == 1
    jsonschema.validate(on_disk, SCHEMA)
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_diverging_loss_stops_cleanly_and_resumes_with_other_settings(tmp_path):
    cache = DataCache()
    overrides = TINY + [("engine.output_dir", str(tmp_path)), ("engine.checkpoint_every", 1),
                        ("train.first_task_lr", 0.01), ("train.lr", 1e6)]  # task 2 diverges
    (planned,) = plan(["finetune"], "shapes", [1993], None, overrides)
    with pytest.raises(TrainingDiverged, match="(became nan|made the parameters NaN or infinite) in task 2.*clbench run --resume"):
        execute(planned, cache=cache)
    (run_dir,) = (tmp_path / "shapes" / "finetune").iterdir()
    failed = load_record(run_dir)
    assert failed["status"] == "failed" and "Lower train.lr" in failed["error"] and len(failed["tasks"]) == 1
    assert all(v == v for v in failed["accuracy_matrix"][0])  # the record holds no garbage
    # no checkpoint of diverged weights: the task boundary after task 1 and, at most, a step
    # checkpoint from before the weights broke
    assert (run_dir / "checkpoint" / "boundary.pt").exists()
    for name in ("boundary.pt", "step.pt"):
        if (run_dir / "checkpoint" / name).exists():
            saved = torch.load(run_dir / "checkpoint" / name, weights_only=True)
            assert all(t.isfinite().all() for t in saved["model"].values() if torch.is_tensor(t) and t.is_floating_point())

    record = resume(run_dir, cache=cache, overrides=[("train.lr", 0.01)])
    assert record["status"] == "complete" and len(record["tasks"]) == 3
    assert record["tasks"][0] == failed["tasks"][0]  # task 1 kept as it was
    assert record["comparable"] is False and "train.lr=0.01" in record["noncomparable_reasons"][0]
    assert record["resumes"][0]["overrides"] == [["train.lr", "0.01"]] and record["config"]["train"]["lr"] == 0.01
    assert record["resumes"][0]["tasks_done"] == 1 and record["resumes"][0]["within_task"] is None  # task 2 anew
    assert record["tasks"][1]["steps"] == 2 and record["tasks"][1]["lr"] == 0.01
