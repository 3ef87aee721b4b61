"""Sweeps: many runs (method × benchmark × seed × preset × grid values) from one command or file.

Every run is planned (resolved and validated) before any starts, then handed to an executor:

``local``           a pool of worker processes on this machine (default; one GPU each when
                    there are GPUs); each run is its own process, so a crash costs one run
``slurm``           a SLURM job array through ``submitit`` (requeued on timeout/preemption;
                    the requeued job resumes from the run's checkpoint)
``submitit-local``  submitit's local executor (the slurm path, without a cluster)
``inline``          one after another in this process (debugging)

A run is identified by its *run key*: a hash of method, benchmark, seed, preset and the
resolved config, leaving out the engine values that do not change results (workers, output
directory, progress, checkpoint and state-saving policy; see :data:`clbench.config.RESULT_NEUTRAL_ENGINE`).
Before a run starts, its worker claims the key (an exclusive file under
``<output_dir>/.claims/``), then: a complete record with that key under the output directory
means the run is skipped; a record that is not complete (killed, interrupted, failed) is
resumed from its checkpoint; otherwise the run starts. Claims make concurrent sweeps over the
same directory run each run once. Failures are collected and reported at the end. Each run's
output goes to its log (one line per epoch, see :mod:`clbench.engine.progress`); the sweep
prints each finished run with its own elapsed time and ETA (:class:`SweepProgress`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import RESULT_NEUTRAL_ENGINE
from .errors import ClbenchError, ConfigError

EXECUTORS = ("local", "slurm", "submitit-local", "inline")
CLAIMS_DIR = ".claims"
SWEEPS_DIR = ".sweeps"
STALE_CLAIM_S = 6 * 3600  # a claim not refreshed for this long (task end, resume) is abandoned


# ---------------------------------------------------------------------------- what to run
@dataclass
class SweepSpec:
    """A sweep: the product of its lists (and of the ``grid`` values), with shared overrides."""

    methods: list[str]
    benchmarks: list[str] = field(default_factory=lambda: ["shapes"])
    seeds: list[int] = field(default_factory=lambda: [1993])
    presets: list[str | None] = field(default_factory=lambda: [None])  # None: the pair's default
    set: dict[str, Any] = field(default_factory=dict)  # dotted overrides for every run (the file's 'set:')
    grid: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values to cross
    output_dir: str = "results"
    executor: str = "local"
    workers: int | None = None  # local: processes at once (default: GPUs, or 1); slurm: array parallelism
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters, e.g. slurm_partition
    set_args: dict[str, Any] = field(default_factory=dict)  # command-line --set values, applied after 'set'

    @classmethod
    def from_file(cls, path: Path) -> SweepSpec:
        """Read a YAML sweep file (keys as the fields of this class; see the README)."""
        import yaml

        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read sweep file {path}: {exc}.") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"Sweep file {path} must hold a mapping (methods:, seeds:, ...).")
        known = set(cls.__dataclass_fields__) - {"set_args"}
        unknown = sorted(set(tree) - known)
        if unknown:
            raise ConfigError(f"Unknown keys {unknown} in sweep file {path}. Valid keys: {', '.join(sorted(known))}.")
        for key in ("methods", "benchmarks", "seeds", "presets"):
            if key in tree and not isinstance(tree[key], list):
                tree[key] = [tree[key]]
        if "presets" in tree:  # 'default' (or null): the pair's default preset, if it has one
            tree["presets"] = [None if p in (None, "default") else p for p in tree["presets"]]
        if "set" in tree:
            from .config import flatten

            tree["set"] = dict(flatten(tree["set"])) if isinstance(tree["set"], dict) else tree["set"]
        return cls(**tree)

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("A sweep needs methods: --methods a,b or 'methods: [a, b]' in the sweep file.")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"Unknown executor '{self.executor}'. Use one of {', '.join(EXECUTORS)}.")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid value of '{key}' must be a non-empty list, e.g. {key}: [0.01, 0.03].")


@dataclass(frozen=True)
class Job:
    """One run of a sweep: what ``clbench run`` would get, plus its run key."""

    method: str
    benchmark: str
    seed: int
    preset: str | None
    overrides: tuple[tuple[str, Any], ...]
    output_dir: str
    key: str
    grid: tuple[tuple[str, Any], ...] = ()  # the grid values of this run (for its label)
    file_overrides: tuple[tuple[str, Any], ...] = ()  # the sweep file's values (applied before overrides)

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.grid)
        return (f"{self.method} on {self.benchmark} s{self.seed}" + (f" [{self.preset}]" if self.preset else "")
                + (f" {extra}" if extra else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overrides": [list(o) for o in self.overrides], "grid": [list(g) for g in self.grid],
                "file_overrides": [list(o) for o in self.file_overrides]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{**d, "overrides": tuple(tuple(o) for o in d["overrides"]),
                      "grid": tuple(tuple(g) for g in d.get("grid", ())),
                      "file_overrides": tuple(tuple(o) for o in d.get("file_overrides", ()))})


def run_key(method: str, benchmark: str, seed: int, preset: str | None, config: dict[str, Any]) -> str:
    """The identity of a run's results: its resolved config without the neutral engine values."""
    config = {**config, "engine": {k: v for k, v in config["engine"].items() if k not in RESULT_NEUTRAL_ENGINE}}
    blob = json.dumps([method, benchmark, seed, preset, config], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_key(record: dict[str, Any]) -> str:
    return run_key(record["method"], record["benchmark"], record["seed"], record["preset"], record["config"])


def expand(spec: SweepSpec) -> list[Job]:
    """Every run of ``spec``, resolved and validated (nothing runs if one is invalid)."""
    from .config import to_plain
    from .experiment import plan

    spec.validate()
    grid_keys = list(spec.grid)
    jobs, seen = [], set()
    from_file = list(spec.set.items())
    for benchmark, preset, values in itertools.product(spec.benchmarks, spec.presets,
                                                       itertools.product(*spec.grid.values())):
        overrides = [*spec.set_args.items(), *zip(grid_keys, values), ("engine.output_dir", spec.output_dir)]
        for run in plan(spec.methods, benchmark, spec.seeds, preset, overrides, file_overrides=from_file):
            cfg = run.config
            others = set(spec.methods) - {cfg.method}  # a job re-plans its one method: drop keys of the others
            own, own_file = (tuple((k, v) for k, v in items if k.partition(".")[0] not in others)
                             for items in (overrides, from_file))
            key = run_key(cfg.method, cfg.benchmark, cfg.seed, cfg.preset, to_plain(cfg.to_dict()))
            if key in seen:
                continue  # e.g. a preset that resolves like the default
            seen.add(key)
            jobs.append(Job(cfg.method, cfg.benchmark, cfg.seed, preset, own, spec.output_dir, key,
                            tuple(zip(grid_keys, values)), own_file))
    return jobs


def existing_runs(output_dir: Path, benchmark: str = "*",
                  method: str = "*") -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Records under ``output_dir`` (``<benchmark>/<method>/<run>/``, optionally of one
    benchmark and method) by run key; unreadable records are ignored."""
    from .records import RECORD_NAME

    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in Path(output_dir).glob(f"{benchmark}/{method}/*/{RECORD_NAME}"):
        try:
            record = json.loads(path.read_text())
            found.setdefault(record_key(record), []).append((path.parent, record))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def decide(job: Job, runs: dict[str, list[tuple[Path, dict[str, Any]]]]
           ) -> tuple[str, Path | None, dict[str, Any] | None]:
    """('skip', dir, record) for a complete run, ('resume', dir, record) for an unfinished one,
    ('start', None, None)."""
    mine = runs.get(job.key, [])
    complete = [(d, r) for d, r in mine if r.get("status") == "complete"]
    if complete:
        return "skip", *complete[0]
    if mine:
        best = max(mine, key=lambda dr: (len(dr[1].get("tasks", [])), dr[1].get("created", "")))
        return "resume", *best
    return "start", None, None


# ---------------------------------------------------------------------------- claims
def _owner() -> str:
    job = os.environ.get("SLURM_JOB_ID")  # a requeued SLURM job keeps its id and takes its claim back
    if job:
        return f"slurm:{job}:{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return f"{socket.gethostname()}:{os.getpid()}"


class Claim:
    """An exclusive claim on a run key: a file created with O_EXCL, refreshed while the run
    lives. A claim is abandoned when its process is gone (same host), when it belongs to
    this SLURM job (requeued), or when it was not refreshed for :data:`STALE_CLAIM_S`."""

    def __init__(self, output_dir: Path, key: str):
        self.path = Path(output_dir) / CLAIMS_DIR / f"{key}.claim"
        self.owner = _owner()
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._abandoned():
                    return False
                try:  # exactly one of several takers wins this rename
                    os.rename(self.path, self.path.with_name(f"{self.path.name}.{os.getpid()}.abandoned"))
                except FileNotFoundError:
                    return False
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, fh)
            self.held = True
            return True
        return False

    def _abandoned(self) -> bool:
        try:
            info = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return False  # being written right now
        if info.get("owner") == self.owner and self.owner.startswith("slurm:"):
            return True  # this SLURM job, requeued
        if info.get("host") == socket.gethostname() and not info.get("owner", "").startswith("slurm:"):
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError):
                pass
        return age > STALE_CLAIM_S

    def refresh(self, *_: Any) -> None:
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            for old in self.path.parent.glob(f"{self.path.name}.*.abandoned"):
                old.unlink(missing_ok=True)
            self.held = False


# ---------------------------------------------------------------------------- one job
def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one sweep job in this process; never raises (the outcome says what happened)."""
    from .engine.progress import ProgressReporter
    from .experiment import execute, plan, resume

    j = Job.from_dict(job)
    start = time.time()
    outcome: dict[str, Any] = {"job": j.to_dict(), "label": j.label, "run_dir": None, "error": None}
    claim = Claim(Path(j.output_dir), j.key)
    reporter = ProgressReporter(enabled=True, lines=True)  # a log file: one line per epoch
    try:
        if not claim.acquire():
            return {**outcome, "status": "busy", "error": "another process is running it (claim held)"}
        action, run_dir, record = decide(j, existing_runs(Path(j.output_dir), j.benchmark, j.method))
        if action == "skip":
            status = "skipped"
        elif action == "resume":
            record = resume(run_dir, reporter, on_task=claim.refresh)
            status = "resumed"
        else:
            (planned,) = plan([j.method], j.benchmark, [j.seed], j.preset, list(j.overrides),
                              file_overrides=list(j.file_overrides))
            record = execute(planned, reporter, on_task=claim.refresh)
            status = "complete"
        metrics = record.get("metrics") or {}
        return {**outcome, "status": status, "run_dir": record["run_dir"], "acc": metrics.get("acc"),
                "aaa": metrics.get("aaa"), "seconds": time.time() - start}
    except KeyboardInterrupt as exc:
        return {**outcome, "status": "interrupted", "error": str(exc) or "interrupted", "seconds": time.time() - start}
    except ClbenchError as exc:
        return {**outcome, "status": "failed", "error": str(exc), "seconds": time.time() - start}
    except Exception as exc:  # a bug or an environment problem: keep the traceback for the report
        tb = traceback.format_exc(limit=6)
        return {**outcome, "status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tb}", "seconds": time.time() - start}
    finally:
        claim.release()


class SweepWorker:
    """The callable submitit runs on a node; checkpointable: on timeout or preemption submitit
    requeues it, and the requeued job resumes the run from its checkpoint."""

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        if "SLURM_CPUS_PER_TASK" in os.environ and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        return run_job(job)

    def checkpoint(self, job: dict[str, Any]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


# ---------------------------------------------------------------------------- executors
Finished = Callable[[dict[str, Any]], None]


class SweepProgress:
    """Says, as each run of a sweep finishes, how it ended and when the sweep will (its ETA:
    the runs left at the pace of those finished, which already counts the parallel workers)."""

    def __init__(self, total: int, show: Callable[[str], None] = print):
        self.total, self.done, self.show = total, 0, show
        self.start = time.time()

    def line(self, outcome: dict[str, Any]) -> str:
        from .engine.progress import duration, eta

        elapsed = time.time() - self.start
        acc = outcome.get("acc")
        parts = [f"[{self.done}/{self.total}] {outcome['label']}: {outcome['status']}"]
        if acc is not None:
            parts.append(f"Acc {acc:.2f}")
        if outcome.get("seconds") is not None:
            parts.append(f"{duration(outcome['seconds'])}")
        parts.append(f"sweep {duration(elapsed)} ETA {duration(eta(elapsed, self.done / max(1, self.total)))}")
        return " · ".join(parts)

    def __call__(self, outcome: dict[str, Any]) -> None:
        self.done += 1
        self.show(self.line(outcome))


def _failed(job: Job, message: str) -> dict[str, Any]:
    return {"job": job.to_dict(), "label": job.label, "status": "failed", "run_dir": None, "error": message}


def _told(outcome: dict[str, Any], finished: Finished | None) -> dict[str, Any]:
    if finished is not None:
        finished(outcome)
    return outcome


def run_inline(jobs: Sequence[Job], finished: Finished | None = None) -> list[dict[str, Any]]:
    return [_told(run_job(j.to_dict()), finished) for j in jobs]


def run_local(jobs: Sequence[Job], workers: int, sweep_dir: Path, poll_s: float = 0.2,
              finished: Finished | None = None) -> list[dict[str, Any]]:
    """Run jobs in at most ``workers`` processes at once (``python -m clbench.sweep``); each
    job's output goes to ``<sweep_dir>/logs/``. Ctrl-C stops the running jobs cleanly (they
    checkpoint) and starts no more."""
    import signal

    from .records import atomic_write_json

    logs = sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = _visible_gpus()
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    pending = list(enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, Job, Path, Any, int]] = {}
    outcomes: dict[int, dict[str, Any]] = {}
    free_slots = list(range(workers))
    stopping = False
    try:
        while pending or running:
            while pending and free_slots and not stopping:
                i, job = pending.pop(0)
                slot = free_slots.pop(0)
                job_file, out_file = sweep_dir / f"job-{i:04d}.json", sweep_dir / f"job-{i:04d}.out.json"
                atomic_write_json(job_file, job.to_dict())
                env = dict(os.environ)
                env.setdefault("OMP_NUM_THREADS", str(threads))
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                log = open(logs / f"job-{i:04d}.log", "w")
                # own session: a Ctrl-C at the terminal reaches this process only, which then
                # asks each run once to checkpoint and stop
                proc = subprocess.Popen([sys.executable, "-m", "clbench.sweep", str(job_file), str(out_file)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[i] = (proc, job, out_file, log, slot)
            for i in [i for i, r in running.items() if r[0].poll() is not None]:
                proc, job, out_file, log, slot = running.pop(i)
                log.close()
                free_slots.append(slot)
                outcomes[i] = _told(_read_outcome(job, out_file, proc.returncode, logs / f"job-{i:04d}.log"), finished)
            if stopping and not running:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        stopping = True
        for proc, *_ in running.values():
            proc.send_signal(signal.SIGINT)  # each run saves a checkpoint and stops
        for i, (proc, job, out_file, log, _) in running.items():
            proc.wait()
            log.close()
            outcomes[i] = _read_outcome(job, out_file, proc.returncode, logs / f"job-{i:04d}.log")
    for i, job in pending:
        outcomes[i] = {"job": job.to_dict(), "label": job.label, "status": "not started", "run_dir": None,
                       "error": "the sweep was interrupted before this run started"}
    return [outcomes[i] for i in sorted(outcomes)]


def _read_outcome(job: Job, path: Path, returncode: int, log: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return _failed(job, f"the worker process ended with exit code {returncode} (see {log}):\n{tail}")


def _visible_gpus() -> list[str]:
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        count = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v for v in visible.split(",") if v] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_submitit(jobs: Sequence[Job], sweep_dir: Path, cluster: str, params: dict[str, Any],
                 workers: int | None, wait: bool = True, finished: Finished | None = None) -> list[dict[str, Any]]:
    """Submit the jobs as one submitit job array (``cluster``: 'slurm' or 'local') and collect
    their outcomes (or, with ``wait=False``, report them as submitted)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("The slurm executors need submitit: pip install 'clbench[sweep]'.") from None
    try:
        executor = submitit.AutoExecutor(folder=str(sweep_dir / "submitit" / "%j"), cluster=cluster)
    except RuntimeError as exc:
        raise ConfigError(f"Cannot use the '{cluster}' cluster here ({exc}). Run the sweep on a SLURM login "
                          f"node, or use --executor local.") from None
    defaults = {"name": "clbench", "timeout_min": 24 * 60}
    if workers:
        defaults["slurm_array_parallelism"] = workers
    try:
        executor.update_parameters(**{**defaults, **params})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Bad submitit parameter: {exc}. Use submitit's names, e.g. slurm_partition=gpu, "
                          f"gpus_per_node=1, cpus_per_task=8, timeout_min=240, mem_gb=64.") from None
    submitted = executor.map_array(SweepWorker(), [j.to_dict() for j in jobs])
    if not wait:
        return [{"job": j.to_dict(), "label": j.label, "status": "submitted", "run_dir": None,
                 "error": None, "slurm_job": s.job_id} for j, s in zip(jobs, submitted)]
    outcomes = []
    for job, handle in zip(jobs, submitted):
        try:
            outcomes.append(_told(handle.result(), finished))
        except Exception as exc:  # noqa: BLE001 - the job died (node failure, timeout, OOM)
            outcomes.append(_told(_failed(job, f"submitit job {handle.job_id}: {str(exc)[-1500:]}"), finished))
    return outcomes


def run_sweep(spec: SweepSpec, jobs: Sequence[Job], wait: bool = True,
              runs: dict[str, list[tuple[Path, dict[str, Any]]]] | None = None,
              show: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], Path]:
    """Run ``jobs`` on the spec's executor, skipping runs whose complete record exists (in
    ``runs``, from :func:`existing_runs`; scanned when not given); the outcomes in job order
    (also written to ``<output_dir>/.sweeps/<id>/outcomes.json``). ``show`` receives a line
    per finished run with the sweep's ETA."""
    from .records import atomic_write_json, ensure_writable

    output = Path(spec.output_dir)
    ensure_writable(output)
    sweep_dir = output / SWEEPS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs = existing_runs(output) if runs is None else runs
    outcomes: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, Job]] = []
    for i, job in enumerate(jobs):
        action, run_dir, record = decide(job, runs)
        if action == "skip":  # no process needed; the worker would check again anyway
            metrics = record.get("metrics") or {}
            outcomes[i] = {"job": job.to_dict(), "label": job.label, "status": "skipped", "run_dir": str(run_dir),
                           "error": None, "acc": metrics.get("acc"), "aaa": metrics.get("aaa")}
        else:
            todo.append((i, job))
    pending = [job for _, job in todo]
    workers = spec.workers or max(1, len(_visible_gpus()))
    finished = SweepProgress(len(pending), show) if show is not None else None
    if not pending:
        results = []
    elif spec.executor == "inline":
        results = run_inline(pending, finished)
    elif spec.executor == "local":
        results = run_local(pending, workers, sweep_dir, finished=finished)
    else:
        cluster = "slurm" if spec.executor == "slurm" else "local"
        results = run_submitit(pending, sweep_dir, cluster, spec.slurm, spec.workers, wait, finished)
    outcomes.update({i: result for (i, _), result in zip(todo, results)})
    ordered = [outcomes[i] for i in sorted(outcomes)]
    atomic_write_json(sweep_dir / "outcomes.json", ordered)
    return ordered, sweep_dir


def _worker_main(argv: Iterable[str]) -> int:
    """``python -m clbench.sweep JOB.json OUT.json``: one job of a local sweep."""
    job_file, out_file = list(argv)
    outcome = run_job(json.loads(Path(job_file).read_text()))
    from .records import atomic_write_json

    atomic_write_json(Path(out_file), outcome)
    return 0 if outcome["status"] in ("complete", "resumed", "skipped") else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
