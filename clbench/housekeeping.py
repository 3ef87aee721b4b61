"""Unfinished run directories: runs that were killed, stopped or failed, and what they left.

A run directory (``<output_dir>/<benchmark>/<method>/<stamp>-s<seed>-<random>/``) is
*unfinished* when its record is not ``complete`` (``running`` after a kill, ``failed``,
``interrupted``), when it holds no record at all (killed before the first write) or when the
record cannot be read. A complete run whose ``checkpoint/`` folder is still there (killed
while removing it) is listed too: only that folder is in the way. ``clbench report`` and
``clbench sweep --dry-run`` count them; ``clbench clean`` lists or removes them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_NAME = re.compile(r"^\d{8}-\d{6}-s-?\d+-[0-9a-f]{6}$")  # records.new_run_dir
RECORD_NAME, CHECKPOINT_DIR = "record.json", "checkpoint"


@dataclass(frozen=True)
class Unfinished:
    run_dir: Path
    state: str  # 'running', 'failed', 'interrupted', 'no record', 'unreadable record', 'leftover checkpoint'
    idle_s: float  # seconds since anything in the directory was written

    @property
    def only_checkpoint(self) -> bool:
        return self.state == "leftover checkpoint"


def run_dirs(roots: list[Path] | Path) -> list[Path]:
    """Every run directory under ``roots`` (named as :func:`clbench.records.new_run_dir` names them)."""
    found: set[Path] = set()
    for root in [roots] if isinstance(roots, Path) else roots:
        root = Path(root)
        candidates = [root] if RUN_DIR_NAME.match(root.name) else root.rglob("*")
        found.update(p for p in candidates if p.is_dir() and RUN_DIR_NAME.match(p.name))
    return sorted(found)


def _idle_s(run_dir: Path) -> float:
    newest = max((p.stat().st_mtime for p in run_dir.rglob("*")), default=run_dir.stat().st_mtime)
    return max(0.0, time.time() - max(newest, run_dir.stat().st_mtime))


def unfinished_runs(roots: list[Path] | Path) -> list[Unfinished]:
    """The unfinished run directories under ``roots`` (see the module docstring)."""
    found = []
    for run_dir in run_dirs(roots):
        path = run_dir / RECORD_NAME
        if not path.is_file():
            state = "no record"
        else:
            try:
                record = json.loads(path.read_bytes())
                state = str(record["status"])
            except (OSError, ValueError, KeyError, TypeError):
                state = "unreadable record"
        if state == "complete":
            if not (run_dir / CHECKPOINT_DIR).exists():
                continue
            state = "leftover checkpoint"
        found.append(Unfinished(run_dir, state, _idle_s(run_dir)))
    return found


def summary(found: list[Unfinished]) -> str:
    """One line: how many run directories are unfinished, by state ('' when none)."""
    if not found:
        return ""
    states: dict[str, int] = {}
    for item in found:
        states[item.state] = states.get(item.state, 0) + 1
    parts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"{len(found)} unfinished run director{'y' if len(found) == 1 else 'ies'} ({parts})"


def remove(item: Unfinished) -> None:
    """Remove an unfinished run directory (for a complete run: only its leftover checkpoint)."""
    shutil.rmtree(item.run_dir / CHECKPOINT_DIR if item.only_checkpoint else item.run_dir)
