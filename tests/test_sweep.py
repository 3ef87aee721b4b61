"""Sweeps: expansion and run keys, claims, the local process pool and submitit's local executor
(finished runs skipped, unfinished resumed, failures collected)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clbench.sweep import Claim, Job, SweepProgress, SweepSpec, expand, run_job, run_sweep

from conftest import TINY

SETS = {k: v for k, v in TINY if k != "engine.progress"}
SMALL = {**SETS, "benchmark.n_classes": 4, "benchmark.n_tasks": 2}


def test_spec_file_grid_and_run_keys(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("methods: [finetune, lora]\nseeds: [1, 2]\nset:\n  train: {epochs: 1}\n  lora.rank: 2\n"
                    "grid:\n  train.lr: [0.01, 0.1]\nexecutor: inline\npresets: [default]\n")
    spec = SweepSpec.from_file(path)
    spec.output_dir = str(tmp_path / "out")
    jobs = expand(spec)
    assert len(jobs) == 2 * 2 * 2 and len({j.key for j in jobs}) == 8
    # re-plannable alone: the file's values travel as file values, those of other methods stay behind
    assert all(("lora.rank", 2) in j.file_overrides for j in jobs if j.method == "lora")
    assert all(("lora.rank", 2) not in j.overrides + j.file_overrides for j in jobs if j.method == "finetune")
    assert {j.label for j in jobs} >= {"lora on shapes s1 train.lr=0.01", "finetune on shapes s2 train.lr=0.1"}
    # engine values that do not change results leave the run key alone; others change it
    spec.set.update({"engine.num_workers": 3, "engine.checkpoint_every": 5, "engine.progress": False})
    assert [j.key for j in expand(spec)] == [j.key for j in jobs]
    spec.set["engine.precision"] = "fp32"
    assert not {j.key for j in expand(spec)} & {j.key for j in jobs}
    with pytest.raises(Exception, match="Unknown keys"):
        path.write_text("methods: [lora]\nseed: [1]\n")
        SweepSpec.from_file(path)


def test_claims_are_exclusive_and_abandoned_claims_are_taken_over(tmp_path, monkeypatch):
    first, second = Claim(tmp_path, "k"), Claim(tmp_path, "k")
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
    # a claim of a process that is gone (same host) is abandoned
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = Claim(tmp_path, "k")
    ghost.path.parent.mkdir(exist_ok=True)
    ghost.path.write_text(json.dumps({"owner": "x", "host": os.uname().nodename, "pid": int(dead.stdout)}))
    assert Claim(tmp_path, "k").acquire()
    # a requeued SLURM job takes its own claim back; another job does not
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    job = Claim(tmp_path, "s")
    assert job.acquire()
    job.held = False  # the job was killed without releasing
    assert Claim(tmp_path, "s").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    assert not Claim(tmp_path, "s").acquire()


def test_a_claimed_run_is_left_to_its_owner(tmp_path):
    spec = SweepSpec(methods=["simplecil"], set=SMALL, output_dir=str(tmp_path), executor="inline")
    (job,) = expand(spec)
    held = Claim(tmp_path, job.key)
    assert held.acquire()
    outcome = run_job(job.to_dict())
    assert outcome["status"] == "busy" and not (tmp_path / "shapes").exists()


def _sweep(*args):
    return subprocess.run([sys.executable, "-m", "clbench.cli", "sweep", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_local_pool_runs_skips_resumes_and_reports_failures(tmp_path):
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
    args = ["--methods", "finetune", "--grid", "train.lr=0.01,1e6", "--workers", "2", "--output-dir", str(tmp_path), *sets]
    first = _sweep(*args)
    assert first.returncode == 1, first.stderr[-2000:]  # one run diverged: reported, the other finished
    outcomes = json.loads(next((tmp_path / ".sweeps").glob("*/outcomes.json")).read_text())
    assert [o["status"] for o in outcomes] == ["complete", "failed"]
    assert "The training loss" in outcomes[1]["error"] and "failed: finetune on shapes s1993 train.lr=1e6" in first.stdout
    logs = sorted((tmp_path / ".sweeps").glob("*/logs/job-000[01].log"))
    assert len(logs) == 2  # each run's output, an epoch per line
    assert re.search(r"^task 1/2 train · epoch 1/1 · loss \d+\.\d{4} · lr 0\.01 · .* run \S+ ETA \S+$",
                     logs[0].read_text(), re.M)
    finished = re.findall(r"^\[(\d)/2\] finetune on shapes .*: (complete|failed) · .*sweep \S+ ETA \S+$", first.stdout, re.M)
    assert sorted(finished) == [("1", finished[0][1]), ("2", finished[1][1])]  # each run as it finished

    again = _sweep(*args)
    assert again.returncode == 1 and "(0 to start, 1 to resume, 1 complete already)" in again.stdout
    latest = sorted((tmp_path / ".sweeps").glob("*/outcomes.json"))[-1]
    statuses = [o["status"] for o in json.loads(latest.read_text())]
    assert statuses == ["skipped", "failed"]  # the failed run was resumed (and diverged again)
    assert len(list((tmp_path / "shapes" / "finetune").iterdir())) == 2  # no new run directories
    assert not list((tmp_path / ".claims").glob("*.claim"))  # claims released


@pytest.mark.slow
def test_submitit_local_executor(tmp_path):
    spec = SweepSpec(methods=["simplecil"], seeds=[1, 2], set=SMALL, output_dir=str(tmp_path),
                     executor="submitit-local", slurm={"timeout_min": 10})
    jobs = expand(spec)
    outcomes, sweep_dir = run_sweep(spec, jobs)
    assert [o["status"] for o in outcomes] == ["complete", "complete"], outcomes
    assert all(json.loads((Path(o["run_dir"]) / "record.json").read_text())["status"] == "complete" for o in outcomes)
    assert list((sweep_dir / "submitit").iterdir())  # submitit's job folders
    outcomes, _ = run_sweep(spec, jobs)
    assert [o["status"] for o in outcomes] == ["skipped", "skipped"]


def test_job_round_trips_through_json():
    job = Job("lora", "shapes", 1, None, (("train.lr", 0.1), ("lora.rank", 2)), "out", "abc", (("train.lr", 0.1),))
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_sweep_progress_prints_each_finished_run_with_the_sweeps_eta(monkeypatch):
    shown, now = [], [1000.0]
    monkeypatch.setattr("clbench.sweep.time.time", lambda: now[0])
    progress = SweepProgress(4, shown.append)
    now[0] += 60
    progress({"label": "lora on shapes s1", "status": "complete", "acc": 81.234, "seconds": 55})
    now[0] += 60
    progress({"label": "lora on shapes s2", "status": "failed", "acc": None, "seconds": 50})
    assert shown == ["[1/4] lora on shapes s1: complete · Acc 81.23 · 0:55 · sweep 1:00 ETA 3:00",
                     "[2/4] lora on shapes s2: failed · 0:50 · sweep 2:00 ETA 2:00"]
