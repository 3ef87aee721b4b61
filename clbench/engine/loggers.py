"""Experiment loggers (``engine.loggers``): ``csv``, ``tensorboard`` and ``wandb``.

Each gets the resolved config as hyperparameters when the run starts, the loss and learning
rate of every step of every loop (the main training as ``train/*``, a method's phases under
their names) and, after each task, its metrics (``task/*``: accuracy on all seen classes,
on the old classes and on the new task's, and on each task so far).

Per-step values never cost a host sync per step: the loop hands over the loss tensors as
they are, they stay on the device and are copied to the host together at the epoch's end
(one sync), when they are written. Steps count over the whole run (all loops, all tasks).

TensorBoard and W&B are optional extras (``pip install 'clbench[tensorboard]'`` /
``'clbench[wandb]'``). W&B runs offline (files under the run directory, ``wandb sync`` to
upload later) unless the user configured it: ``WANDB_MODE`` or ``WANDB_API_KEY`` set.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

LOGGER_NAMES = ("csv", "tensorboard", "wandb")


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → ``{"train.lr": 0.01, ...}`` with scalar values (others as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def _missing_extra(name: str) -> ConfigError:
    return ConfigError(f"engine.loggers includes '{name}', but the {name} package is not installed. Install the "
                       f"extra: pip install 'clbench[{name}]' (or drop '{name}' from engine.loggers).")


class CsvLogger:
    """``logs/steps.csv`` (step, task, loop, loss, lr), ``logs/tasks.csv`` (one row per task)
    and ``logs/hparams.json`` in the run directory; appended to when a run resumes."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        self.dir = run_dir / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "hparams.json").write_text(json.dumps(flat_config(config), indent=1))

    def steps(self, loop: str, task: int, first_step: int, losses: list[float], lr: float) -> None:
        path = self.dir / "steps.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "task", "loop", "loss", "lr"])
            writer.writerows([first_step + i, task + 1, loop, v, lr] for i, v in enumerate(losses))

    def task(self, task: int, step: int, values: dict[str, float | None]) -> None:
        """A row per task; rewritten whole, since each task adds a column (its accuracy)."""
        path = self.dir / "tasks.csv"
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows.append({"task": task + 1, "step": step, **{k: "" if v is None else v for k, v in values.items()}})
        fields = list(dict.fromkeys(k for row in rows for k in row))
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def close(self, final: dict[str, float]) -> None:
        (self.dir / "final.json").write_text(json.dumps(final, indent=1))


class TensorBoardLogger:
    """An event file under ``<run dir>/tensorboard``: scalars and the hparams plugin's data."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise _missing_extra("tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        for summary in hparams(flat_config(config), {"task/acc_all": 0.0, "final/acc": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def steps(self, loop: str, task: int, first_step: int, losses: list[float], lr: float) -> None:
        for i, value in enumerate(losses):
            self.writer.add_scalar(f"{loop}/loss", value, first_step + i)
            self.writer.add_scalar(f"{loop}/lr", lr, first_step + i)
        self.writer.flush()

    def task(self, task: int, step: int, values: dict[str, float | None]) -> None:
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"task/{key}", value, task + 1)  # x axis: tasks learned
        self.writer.flush()

    def close(self, final: dict[str, float]) -> None:
        for key, value in final.items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        self.writer.close()


def wandb_mode() -> str | None:
    """None (W&B's own settings) when the user configured W&B, else ``"offline"``."""
    return None if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY") else "offline"


class WandbLogger:
    """A W&B run (offline unless configured, see :func:`wandb_mode`) under ``<run dir>/wandb``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], name: str):
        try:
            import wandb
        except ImportError:
            raise _missing_extra("wandb") from None
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "clbench"), name=name, dir=str(run_dir),
                              config=flat_config(config), mode=wandb_mode(), reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))

    def steps(self, loop: str, task: int, first_step: int, losses: list[float], lr: float) -> None:
        for i, value in enumerate(losses):
            self.run.log({f"{loop}/loss": value, f"{loop}/lr": lr}, step=first_step + i)

    def task(self, task: int, step: int, values: dict[str, float | None]) -> None:
        self.run.log({"task/index": task + 1, **{f"task/{k}": v for k, v in values.items() if v is not None}},
                     step=step)

    def close(self, final: dict[str, float]) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in final.items()})
        self.run.finish()


class RunLoggers:
    """The run's loggers behind one interface; buffers each loop's per-step losses on the device."""

    def __init__(self, backends: list[Any], step: int = 0):
        self.backends = backends
        self.global_step = step  # steps logged before (a resumed run continues the count)
        self._buffer: dict[str, list[torch.Tensor]] = {}

    def step(self, loop: str, loss: torch.Tensor) -> None:
        """A step's loss, kept on the device (no sync)."""
        self._buffer.setdefault(loop, []).append(loss.detach().float())

    def epoch_done(self, loop: str, task: int, lr: float) -> None:
        """Write the epoch's buffered steps (one host sync for all of them)."""
        buffered = self._buffer.pop(loop, [])
        if not buffered:
            return
        losses = torch.stack(buffered).tolist()
        for backend in self.backends:
            backend.steps(loop, task, self.global_step, losses, lr)
        self.global_step += len(losses)

    def task_done(self, task: int, values: dict[str, float | None]) -> None:
        for backend in self.backends:
            backend.task(task, self.global_step, values)

    def close(self, final: dict[str, float] | None = None) -> None:
        for backend in self.backends:
            backend.close({k: v for k, v in (final or {}).items() if isinstance(v, (int, float))})
        self.backends = []


def check_loggers(names: tuple[str, ...] | list[str]) -> None:
    """Known names whose packages are installed (checked before a run starts), else ConfigError."""
    unknown = [n for n in names if n not in LOGGER_NAMES]
    if unknown:
        raise ConfigError(f"Unknown logger(s) {unknown} in engine.loggers; choose from {', '.join(LOGGER_NAMES)}, "
                          f"e.g. --set engine.loggers=csv,tensorboard.")
    for name in names:
        if name != "csv" and importlib.util.find_spec(name) is None:
            raise _missing_extra(name)


def build_loggers(names: tuple[str, ...] | list[str], run_dir: Path, config: dict[str, Any], name: str,
                  step: int = 0) -> RunLoggers | None:
    """The loggers ``engine.loggers`` names, writing into ``run_dir`` (None for none)."""
    check_loggers(names)
    if not names:
        return None
    made = {"csv": lambda: CsvLogger(run_dir, config), "tensorboard": lambda: TensorBoardLogger(run_dir, config),
            "wandb": lambda: WandbLogger(run_dir, config, name)}
    return RunLoggers([made[n]() for n in dict.fromkeys(names)], step)
