"""``clbench landscape``: loss and accuracy between the task solutions of one run.

The solutions after the chosen tasks are rebuilt from the run's per-task states
(``tasks[].state.file``) on fresh instances of the method (the state contract), each read
inside its ``eval_context()`` (adapters merged into the weights: SD-LoRA Fig. 4 interpolates
merged weight updates, not the factors). The latest of them is the *target*: its head is
used for every point (the default; ``grown="interpolate"`` interpolates the block of
grown tensors that all solutions share instead), and evaluation runs on the test data of
every task up to the target, over the classes the target has seen. For the earlier endpoint
the accuracy over the classes seen at that task is recorded too, so both endpoints can be
checked against the run's recorded predictions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..config import RunConfig
from ..engine.progress import ProgressReporter
from ..engine.state import StateMismatch, restore_state
from ..engine.trainer import Trainer
from ..errors import ConfigError, DamagedFileError, DataError
from ..records import atomic_write_text, atomic_write_with, ensure_writable, load_record
from ..resolve import config_from_record
from ..statefile import load_state_file
from . import landscape as ls


class EvalPass:
    """Per-class correct counts and summed cross-entropy on the test data of tasks ≤ target,
    over the target's seen classes and over the classes seen at an earlier task."""

    def __init__(self, trainer: Trainer, target: int, inner: int):
        self.trainer = trainer
        stream = trainer.stream
        self.hi, self.inner_hi = stream.tasks[target].hi, stream.tasks[inner].hi
        loader = trainer.loaders.evaluation(stream.test_data(target), trainer.cfg.train.eval_batch_size)
        self.batches = [(x.to(trainer.device), y.to(trainer.device)) for x, y in loader]  # decoded once

    def probe(self) -> torch.Tensor:
        """A few test images, for telling which tensors the forward uses."""
        x, y = self.batches[0]
        return self.trainer.loaders.to_device(x[:4], y[:4])[0]

    @torch.no_grad()
    def __call__(self) -> dict[str, np.ndarray]:
        method, dev = self.trainer.method, self.trainer.device
        out = {k: torch.zeros(n, dtype=torch.float64, device=dev) for k, n in
               (("correct", self.hi), ("loss", self.hi), ("correct_inner", self.inner_hi), ("loss_inner", self.inner_hi))}
        method.eval()
        with self.trainer.autocast():
            for x, y in self.batches:
                x, y = self.trainer.loaders.to_device(x, y)
                logits = method.predict(x)[:, : self.hi].float()
                for suffix, lg, yy in (("", logits, y), ("_inner", logits[y < self.inner_hi, : self.inner_hi], y[y < self.inner_hi])):
                    hits = (lg.argmax(dim=1) == yy).double()
                    out["correct" + suffix].index_add_(0, yy, hits)
                    out["loss" + suffix].index_add_(0, yy, F.cross_entropy(lg, yy, reduction="none").double())
        return {k: v.cpu().numpy() for k, v in out.items()}


def per_task(values: np.ndarray, per_class: list[int], ranges: list[tuple[int, int]]) -> np.ndarray:
    """Per-class sums → per-task means (accuracy in %, or mean loss) for the ranges given."""
    return np.array([values[lo:hi].sum() / sum(per_class[lo:hi]) for lo, hi in ranges])


@dataclass
class Landscape:
    """What ``clbench landscape`` computed and wrote."""

    out_dir: Path
    meta: dict[str, Any]
    line: dict[str, np.ndarray] | None = None
    plane: dict[str, np.ndarray] | None = None
    files: list[Path] = field(default_factory=list)


def _check_tasks(record: dict[str, Any], run_dir: Path, tasks: list[int]) -> None:
    done = len(record["tasks"])
    for t in tasks:
        if t >= done:
            raise ConfigError(f"The run {run_dir} finished {done} task(s); task {t + 1} does not exist. "
                              f"Choose tasks between 1 and {done}.")
        state = record["tasks"][t].get("state") or {}
        if state.get("file") and not (run_dir / state["file"]).resolve().is_relative_to(run_dir.resolve()):
            raise DamagedFileError(f"The record of {run_dir} names a task state outside its run directory "
                                   f"({state['file']}); it was edited by hand. Restore the record from a copy.")
        if not state.get("file") or not (run_dir / state["file"]).is_file():
            why = state.get("skipped") or "engine.save_task_state=never, or the file was removed"
            raise DataError(f"The run {run_dir} did not keep the state after task {t + 1} ({why}). Landscapes "
                            f"rebuild solutions from per-task states: re-run with --set engine.save_task_state=always.")


def _solution(cfg: RunConfig, record: dict, run_dir: Path, task: int, cache: Any) -> tuple[Any, Any]:
    from ..experiment import build

    _, stream, method = build(cfg, cache)
    path = run_dir / record["tasks"][task]["state"]["file"]  # inside run_dir (_check_tasks)
    try:
        restore_state(method, load_state_file(path))
    except StateMismatch as exc:
        raise DamagedFileError(f"The task state {path} does not fit a freshly built '{record['method']}' ({exc}); it "
                               f"was replaced or damaged. Restore it from a copy, or re-run the run.") from None
    return stream, method


def _exact(values: np.ndarray) -> np.ndarray:
    """Snap values within 1e-9 of 0 or 1 onto them (so the endpoints are the solutions)."""
    values = np.asarray(values, dtype=float).copy()
    for end in (0.0, 1.0):
        values[np.isclose(values, end, atol=1e-9)] = end
    return values


class _Pass:
    """One scan: the target solution live on the compute device, the other solutions' values,
    the selection of interpolated tensors and the test pass."""

    def __init__(self, ctx: dict[str, Any], tasks: tuple[int, ...], inner: int):
        self.ctx, self.tasks = ctx, tasks
        self.target_task = max(tasks)
        self.stream, self.method = _solution(ctx["cfg"], ctx["record"], ctx["run_dir"], self.target_task, ctx["cache"])
        self.trainer = Trainer(self.method, self.stream, ctx["cfg"])
        self.method.to(self.trainer.device)
        self.inner = inner
        self.per_class = self.stream.test_counts()[1]
        self.ranges = [(t.lo, t.hi) for t in self.stream.tasks[: self.target_task + 1]]

    def __enter__(self) -> _Pass:
        self._context = self.method.eval_context()
        self._context.__enter__()
        self.tensors = ls.named_tensors(self.method)
        snaps = {t: {n: v.to(self.trainer.device) for n, v in self.ctx["snapshots"][t].items()}
                 for t in self.tasks if t != self.target_task}
        snaps[self.target_task] = {n: v.detach().clone() for n, v in self.tensors.items()}
        self.evaluate = EvalPass(self.trainer, self.target_task, self.inner)
        used = ls.used_by(self.tensors, lambda: self.method.predict(self.evaluate.probe()))
        self.sel = ls.select([snaps[t] for t in self.tasks], self.tensors, self.ctx["grown"])
        if used is not None:  # tensors the forward ignores (e.g. adapter factors while merged) stay put
            idle = {n for n in self.sel.names if n not in used}
            self.sel.from_target += [f"{n} (unused by the forward)" for n in self.sel.names if n in idle]
            keep = [k for k, n in enumerate(self.sel.names) if n not in idle]
            self.sel.names = [self.sel.names[k] for k in keep]
            self.sel.regions = [self.sel.regions[k] for k in keep]
        if not self.sel.names:
            raise ConfigError(
                f"The solutions after tasks {', '.join(str(t + 1) for t in self.tasks)} of this "
                f"{self.ctx['record']['method']} run share every tensor their forward uses (or differ only in grown "
                f"heads): there is nothing to interpolate. Landscapes need methods that train parameters, e.g. lora "
                f"or finetune.")
        self.points = [ls.snapshot(snaps[t], self.sel) for t in self.tasks]
        self.live = ls.LiveBlocks(self.tensors, self.sel)
        self.used_check = used is not None
        return self

    def __exit__(self, *exc: Any) -> None:
        self._context.__exit__(*exc)

    def summary(self, res: dict[str, np.ndarray], inner: bool = False) -> dict[str, np.ndarray]:
        """Per-task accuracy (%) and mean loss, over the target's classes (and the inner task's)."""
        out = {"acc": 100 * per_task(res["correct"], self.per_class, self.ranges),
               "loss": per_task(res["loss"], self.per_class, self.ranges)}
        seen = sum(self.per_class[: self.ranges[-1][1]])
        out["acc_all"], out["loss_all"] = 100 * res["correct"].sum() / seen, res["loss"].sum() / seen
        if inner:
            inner_ranges = self.ranges[: self.inner + 1]
            out["acc_inner"] = 100 * per_task(res["correct_inner"], self.per_class, inner_ranges)
            out["loss_inner"] = per_task(res["loss_inner"], self.per_class, inner_ranges)
        return out

    def describe(self) -> dict[str, Any]:
        return {"interpolated": {n: int(self.tensors[n][r].numel()) for n, r in zip(self.sel.names, self.sel.regions)},
                "interpolated_numel": self.sel.numel(self.tensors), "from_target": self.sel.from_target,
                "used_check": self.used_check, "label_space": f"classes seen at task {self.target_task + 1}"}


def compute(run_dir: Path, line: tuple[int, int] | None = (0, 1), plane: tuple[int, int, int] | None = (0, 1, 2),
            lambdas: np.ndarray | None = None, grid: int = 21, margin: float = 0.25, grown: str = "target",
            device: str = "auto", progress: ProgressReporter | None = None) -> Landscape:
    """Evaluate the line between two task solutions and/or the plane through three (0-indexed).

    Each scan evaluates with the latest of its solutions (its head, its seen classes).
    """
    from ..experiment import DataCache

    run_dir = Path(run_dir)
    record = load_record(run_dir)
    progress = progress or ProgressReporter(enabled=False)
    if line is not None and not line[0] < line[1]:
        raise ConfigError(f"--tasks must name an earlier then a later task, got {line[0] + 1},{line[1] + 1}.")
    if plane is not None and len(set(plane)) != 3:
        raise ConfigError("--plane needs three different tasks, e.g. --plane 1,2,3.")
    needed = sorted(set(line or ()) | set(plane or ()))
    if not needed:
        raise ConfigError("Nothing to compute: give --tasks and/or --plane.")
    _check_tasks(record, run_dir, needed)
    cfg = config_from_record(record, [("engine.device", device), ("engine.progress", False)],
                             changeable=("engine.",))
    ctx = {"cfg": cfg, "record": record, "run_dir": run_dir, "cache": DataCache(), "grown": grown, "snapshots": {}}
    passes = [p for p in (line, plane) if p is not None]
    for t in sorted({t for p in passes for t in p if t != max(p)}):  # each scan reads its target live
        _, method = _solution(cfg, record, run_dir, t, ctx["cache"])
        with method.eval_context():  # the solution as evaluated: adapters merged into the weights
            ctx["snapshots"][t] = {n: v.detach().clone() for n, v in ls.named_tensors(method).items()}
        del method
    result = Landscape(run_dir, {"run": str(run_dir), "method": record["method"], "seed": record["seed"],
                                 "benchmark": record["benchmark"], "grown": grown,
                                 "run_engine": record.get("engine") or {}})
    start = time.perf_counter()
    if line is not None:
        i, j = line
        with _Pass(ctx, (i, j), inner=i) as scan:
            result.meta["device"] = str(scan.trainer.device)
            result.meta["autocast"] = str(scan.trainer.amp_dtype or "fp32").replace("torch.", "")
            lams = _exact(np.linspace(0, 1, 11) if lambdas is None else lambdas)
            bar = progress.bar(f"line T{i + 1}→T{j + 1}", len(lams))
            rows = ls.scan_line(scan.live, *scan.points, lams, scan.evaluate, step=lambda: progress.advance(bar))
            progress.done(bar)
            stats = [scan.summary(r, inner=True) for r in rows]
            diff = [b - a for a, b in zip(*scan.points)]
            result.line = {"lambdas": lams, "tasks": np.arange(1, j + 2), "inner_tasks": np.arange(1, i + 2),
                           **{k: np.stack([s[k] for s in stats]) for k in ("acc", "loss", "acc_inner", "loss_inner")}}
            result.meta["line"] = {"from_task": i + 1, "to_task": j + 1, "lambdas": lams.tolist(), **scan.describe(),
                                   "distance": float(np.sqrt(ls.dot(diff, diff))),
                                   "endpoints": _endpoint_checks(record, lams, rows, i, j)}
    if plane is not None:
        with _Pass(ctx, tuple(plane), inner=max(plane)) as scan:
            result.meta["device"] = str(scan.trainer.device)
            geometry = ls.plane_through(*scan.points)
            xs, ys = ls.plane_grid(geometry.coords, grid, margin)
            bar = progress.bar(f"plane T{plane[0] + 1},T{plane[1] + 1},T{plane[2] + 1}", grid * grid + 3)
            at = [scan.summary(r) for r in ls.at_points(scan.live, scan.points, scan.evaluate)]
            progress.advance(bar, 3)
            cells = ls.scan_plane(scan.live, geometry, xs, ys, scan.evaluate, step=lambda: progress.advance(bar))
            progress.done(bar)
            stats = [[scan.summary(c) for c in row] for row in cells]

            def grid_of(key: str) -> np.ndarray:  # (tasks, ys, xs), or (ys, xs) for the all-seen values
                return np.moveaxis(np.array([[s[key] for s in row] for row in stats]), -1, 0) if np.ndim(
                    stats[0][0][key]) else np.array([[s[key] for s in row] for row in stats])

            result.plane = {"xs": xs, "ys": ys, "coords": geometry.coords, "tasks": np.arange(1, scan.target_task + 2),
                            "solutions": np.array([t + 1 for t in plane]),
                            **{k: grid_of(k) for k in ("acc", "loss", "acc_all", "loss_all")},
                            "solution_acc": np.stack([s["acc"] for s in at]),
                            "solution_loss": np.stack([s["loss"] for s in at])}
            result.meta["plane"] = {"tasks": [t + 1 for t in plane], "grid": grid, "margin": margin,
                                    "coords": geometry.coords.tolist(), **scan.describe()}
    result.meta["seconds"] = time.perf_counter() - start
    return result


def _endpoint_checks(record: dict, lams: np.ndarray, rows: list[dict], i: int, j: int) -> list[dict[str, Any]]:
    """Compare λ=1 (classes seen at j) and λ=0 (classes seen at i) with the recorded counts."""
    checks = []
    for lam, task, key in ((1.0, j, "correct"), (0.0, i, "correct_inner")):
        hit = np.flatnonzero(lams == lam)
        if not len(hit):
            continue
        ours = np.rint(rows[hit[0]][key]).astype(int).tolist()
        recorded = record["tasks"][task]["correct_per_class"]
        checks.append({"lambda": lam, "task": task + 1, "match": ours == recorded,
                       "correct": int(sum(ours)), "recorded_correct": int(sum(recorded)),
                       "recorded_row": record["accuracy_matrix"][task]})
    return checks


def save(result: Landscape, out_dir: Path) -> list[Path]:
    """Write CSV + NPZ data, PNG + PDF figures and ``landscape.json`` into ``out_dir``."""
    import pandas as pd

    from .landscape_plots import line_figure, plane_figures

    ensure_writable(out_dir)
    files = []
    title = f"{result.meta['method']} · {result.meta['benchmark']} · seed {result.meta['seed']}"
    if result.line is not None:
        ln = result.line
        name = f"line_T{result.meta['line']['from_task']}-T{result.meta['line']['to_task']}"
        rows = []
        for li, lam in enumerate(ln["lambdas"]):
            for ki, task in enumerate(ln["tasks"]):
                inner = ki < len(ln["inner_tasks"])
                rows.append({"lambda": lam, "task": int(task), "acc": ln["acc"][li, ki], "loss": ln["loss"][li, ki],
                             "acc_within_from_task_classes": ln["acc_inner"][li, ki] if inner else np.nan,
                             "loss_within_from_task_classes": ln["loss_inner"][li, ki] if inner else np.nan})
        atomic_write_text(out_dir / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_with(out_dir / f"{name}.npz", lambda fh: np.savez(fh, **ln))
        files += [out_dir / f"{name}.csv", out_dir / f"{name}.npz"]
        files += line_figure(ln, result.meta["line"], title, out_dir / name)
    if result.plane is not None:
        pl = result.plane
        name = "plane_" + "-".join(f"T{t}" for t in result.meta["plane"]["tasks"])
        rows = [{"x": x, "y": y, "task": int(task), "acc": pl["acc"][ki, yi, xi], "loss": pl["loss"][ki, yi, xi]}
                for yi, y in enumerate(pl["ys"]) for xi, x in enumerate(pl["xs"]) for ki, task in enumerate(pl["tasks"])]
        atomic_write_text(out_dir / f"{name}.csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_with(out_dir / f"{name}.npz", lambda fh: np.savez(fh, **pl))
        files += [out_dir / f"{name}.csv", out_dir / f"{name}.npz"]
        files += plane_figures(pl, title, out_dir / name)
    atomic_write_text(out_dir / "landscape.json", json.dumps(result.meta, indent=1, default=float) + "\n")
    files.append(out_dir / "landscape.json")
    result.files = files
    return files
