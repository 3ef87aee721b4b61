"""Run records: one directory per run, one JSON record, written atomically.

Layout of a run directory (``<output_dir>/<benchmark>/<method>/<stamp>-s<seed>-<random>/``)::

    record.json              the record (schema: clbench/record_schema.json, docs/record.md)
    state/task_00.safetensors  the method's per-task state (adapters, prompts, heads)
    checkpoint/              resume points while the run is not complete (clbench.engine.checkpoint)

The record is rewritten after every task (``status: running``) and once more at the end
(``complete``, ``failed`` or ``interrupted``), always through a temporary file and
``os.replace``, so a reader never sees a half-written file and a crash keeps every finished
task. Directory names carry a random suffix and are created with ``mkdir`` (which fails if
the name exists), so concurrent runs never share a directory. A write that fails (full disk,
permissions) raises :class:`~clbench.errors.OutputError` naming the path and the fix and
leaves the previous file in place.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from . import metrics
from .errors import DamagedFileError, OutputError
from .registry import plugins_used
from .schema import SCHEMA_PATH, schema_problem  # noqa: F401 (SCHEMA_PATH: clbench.records.SCHEMA_PATH)
from .statefile import split_extra

if TYPE_CHECKING:
    from .resolve import PlannedRun

SCHEMA_VERSION = 1
RECORD_NAME = "record.json"
STATE_LIMIT_BYTES = 64 << 20  # save_task_state=auto keeps per-task states up to this size
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def output_error(path: Path, exc: OSError) -> OutputError:
    """The one message for a write that failed: what happened to ``path`` and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        problem, fix = "the disk (or your quota) is full", "Free disk space or choose another disk with --output-dir"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem, fix = "the directory is not writable", "Fix its permissions or choose a writable directory with --output-dir"
    else:
        problem, fix = exc.strerror or str(exc), "Choose a writable directory with --output-dir"
    return OutputError(
        f"Cannot write {path}: {problem}. {fix} (or --set engine.output_dir=...); records "
        f"already written are untouched."
    )


_WRITER_FAILURES = ("PytorchStreamWriter", "inline_container", "file write failed")


def _write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: the exception itself, or the one behind torch's zip
    writer's RuntimeError (it reports a full disk as 'file write failed' or 'unexpected pos')."""
    if isinstance(exc, OSError):
        return exc
    if not isinstance(exc, RuntimeError):
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return cause
    if any(marker in str(exc) for marker in _WRITER_FAILURES):
        return OSError(errno.EIO, "the write failed (a full disk or an I/O error)")
    return None


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory, then
    ``os.replace``: readers see the old file or the new one, never a part. Every failure
    removes the temporary file and keeps the old one; a full disk or an I/O error (also as
    torch's zip-writer ``RuntimeError``) raises :class:`~clbench.errors.OutputError`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        failure = _write_failure(exc)
        if failure is None:
            raise
        raise output_error(path, failure) from exc


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_with`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and prove it is writable, before any run starts."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise output_error(directory, exc) from exc


def new_run_dir(output_dir: Path, benchmark: str, method: str, seed: int) -> Path:
    """Create a fresh, never reused run directory."""
    parent = Path(output_dir) / benchmark / method
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            run_dir = parent / f"{stamp}-s{seed}-{secrets.token_hex(3)}"
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as exc:
        raise output_error(parent, exc) from exc


def environment() -> dict[str, Any]:
    """Versions, git commit and machine facts for the record."""
    versions = {"python": platform.python_version()}
    for pkg in ("clbench", "torch", "torchvision", "timm", "numpy", "safetensors"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "git": git_info(Path(__file__).resolve().parent.parent),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }


def git_info(path: Path) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def jsonable(obj: Any) -> Any:
    """Tensors, arrays and NumPy scalars as lists and numbers; NaN as None (JSON has no NaN)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def header(run: PlannedRun, stream: Any, data: Any, backbone: Any, engine_info: dict[str, Any], world_size: int,
           run_dir: Path) -> dict[str, Any]:
    """The fields a run's record starts with (before any task): what was run, on which data
    and weights, under which protocol, where and with what (see record_schema.json).

    ``stream`` is the run's class-incremental stream, ``data`` the loaded benchmark data,
    ``backbone`` the pretrained model, ``engine_info`` the device and precision in use."""
    cfg = run.config
    per_task, per_class = stream.test_counts()
    return {
        "run_id": run_dir.name,
        "method": cfg.method, "benchmark": cfg.benchmark, "seed": cfg.seed, "preset": cfg.preset,
        "config": cfg.to_dict(),
        "overrides": [[k, str(v)] for k, v in run.overrides],
        "protocol": {
            "class_order": stream.order.tolist(), "order_id": stream.order_id(),
            "split_id": data.split_id, "label_map_id": data.label_map_id, "data_info": jsonable(data.info),
            "n_classes": stream.n_classes, "n_tasks": stream.n_tasks,
            "task_ranges": [[t.lo, t.hi] for t in stream.tasks],
            "backbone": cfg.backbone.name, "weights": backbone.weights.to_dict(),
            "input_norm": cfg.backbone.input_norm, "logit_mask": cfg.train.logit_mask,
            "evaluation": "after each task; test data of all seen classes; one head over seen classes; no task id",
        },
        "comparable": True, "noncomparable_reasons": [],
        "test_counts": {"per_task": per_task, "per_class": per_class},
        "paper": run.preset.reported.to_dict() if run.preset and run.preset.reported else None,
        "paper_efficiency": run.preset.efficiency.to_dict() if run.preset and run.preset.efficiency else None,
        "environment": {**environment(), "plugins": plugins_used(cfg.method, cfg.benchmark, cfg.backbone.name)},
        "engine": {**engine_info, "world_size": world_size},
        "params": {"backbone": sum(p.numel() for p in backbone.parameters())},
        "efficiency": None,  # measured at the end of the stream (clbench.efficiency)
        "run_dir": str(run_dir),
    }


def save_state(run_dir: Path, index: int, state: Mapping[str, Any], policy: str) -> dict[str, Any] | None:
    """Save a task's state as safetensors (per ``engine.save_task_state``); its record entry.

    Non-tensor entries (``_extra_state``) go into the file's metadata as JSON; read the file
    back with :func:`clbench.statefile.load_state_file`.
    """
    if policy == "never" or not state:
        return None
    from safetensors.torch import save

    tensors, meta = split_extra(state)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if policy == "auto" and size > STATE_LIMIT_BYTES:
        return {"file": None, "bytes": size, "skipped": "larger than 64 MB; set engine.save_task_state=always"}
    try:
        (run_dir / "state").mkdir(exist_ok=True)
    except OSError as exc:
        raise output_error(run_dir / "state", exc) from exc
    rel = f"state/task_{index:02d}.safetensors"
    atomic_write_bytes(run_dir / rel, save(tensors, metadata=meta or None))
    return {"file": rel, "bytes": size}


class RunRecorder:
    """Accumulates a run's record and rewrites ``record.json`` after every change.

    ``write=False`` keeps the record in memory only (ranks other than 0 of a multi-process
    run build the same record but never write it).
    """

    def __init__(self, run_dir: Path, header: dict[str, Any], write: bool = True,
                 record: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RECORD_NAME
        self.write = write
        self.record: dict[str, Any] = record if record is not None else {
            "schema_version": SCHEMA_VERSION, "status": "running", "created": now(), "finished": None,
            **header, "tasks": []}
        self._refresh()

    @classmethod
    def reopen(cls, run_dir: Path, record: dict[str, Any], tasks_done: int, resume_info: dict[str, Any],
               write: bool = True) -> RunRecorder:
        """Continue the record of a resumed run: keep its first ``tasks_done`` tasks (later
        entries, written before the run was killed and not covered by its checkpoint, are
        redone), set it running again and note the resume in ``resumes``."""
        record = dict(record)
        record["run_dir"] = str(run_dir)  # where it is now (a run directory may have been moved)
        record["tasks"] = record["tasks"][:tasks_done]
        record["status"], record["finished"] = "running", None
        record.pop("error", None)
        record["resumes"] = [*record.get("resumes", []), {"at": now(), **resume_info}]
        return cls(run_dir, {}, write, record)

    def add_task(self, entry: dict[str, Any]) -> None:
        self.record["tasks"].append(entry)
        self._refresh()

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Set the final status and write. For ``failed``/``interrupted`` a write error is
        noted on the record but not raised, so the original error stays the one reported."""
        self.record["status"] = status
        self.record["finished"] = now()
        if error:
            self.record["error"] = error
        try:
            self._refresh()
        except OutputError as exc:
            if status == "complete":
                raise
            self.record["write_error"] = str(exc)
        return self.record

    def _refresh(self) -> None:
        """Derive the matrix and metrics from the per-class counts, then write atomically."""
        rec = self.record
        tasks = rec["tasks"]
        ranges = [tuple(r) for r in rec["protocol"]["task_ranges"]]
        if tasks:
            matrix, counts = metrics.matrix_from_counts(
                [t["correct_per_class"] for t in tasks], rec["test_counts"]["per_class"], ranges)
            rec["accuracy_matrix"] = matrix
            rec["metrics"] = metrics.summarize(matrix, counts[: len(matrix)])
            rec["accuracy_curve"] = metrics.accuracy_curve(matrix, counts[: len(matrix)]).tolist()
        else:
            rec["accuracy_matrix"], rec["metrics"], rec["accuracy_curve"] = [], None, []
        rec["timing"] = {"train_s": sum(t["train_s"] for t in tasks), "eval_s": sum(t["eval_s"] for t in tasks)}
        if self.write:
            atomic_write_json(self.path, rec)


def load_record(path: Path) -> dict[str, Any]:
    """Read a record (a ``record.json`` path or its run directory), checked against the
    record schema before any field is used: a file that is missing, no JSON or does not
    match the schema raises :class:`~clbench.errors.DamagedFileError` naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DamagedFileError(f"There is no run record {path}. Pass a run directory written by 'clbench run' "
                               f"(it holds record.json).") from None
    except (OSError, ValueError) as exc:
        raise DamagedFileError(f"The run record {path} is not readable JSON ({exc}); it was damaged or edited by "
                               f"hand. Restore it from a copy, or remove the run directory and start a new run.") from None
    problem = schema_problem(record)
    if problem:
        raise DamagedFileError(f"The run record {path} does not match clbench's record schema: {problem}. It was "
                               f"damaged or edited by hand; restore it from a copy, or remove the run directory "
                               f"and start a new run.")
    return record
