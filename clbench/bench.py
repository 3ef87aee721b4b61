"""Speed harness: training-step time and evaluation throughput, side by side in one process.

For each method, the harness builds it on the chosen backbone, runs its task hooks (no
training) up to the measured task so its state has the structure it has there (e.g. 19
frozen SD-LoRA branches before task 20), then times the engine's own ``train_step`` on one
fixed batch and the method's ``predict`` with and without its ``eval_context`` (merged
adapters). The bare backbone's forward is the reference for evaluation throughput.

``clbench bench --help`` shows the options; the README lists the figures and commands.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .engine.context import TaskContext
from .engine.optim import build_optimizer, task_hparams
from .engine.trainer import Trainer
from .experiment import Override, build, plan


def _timed(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prepared(method: str, benchmark: str, task: int, overrides: Sequence[Override]) -> tuple[Trainer, TaskContext]:
    """A trainer whose method has run the hooks of tasks ``0..task-1`` and ``before_task(task)``."""
    (run,) = plan([method], benchmark, [0], None, list(overrides) + [("engine.progress", False)])
    _, stream, m = build(run.config)
    trainer = Trainer(m, stream, run.config)
    m.to(trainer.device)
    for t in stream.tasks[:task]:
        ctx = TaskContext(trainer, t)
        m.before_task(ctx)
        m.to(trainer.device)
        m.after_task(ctx)
    ctx = TaskContext(trainer, stream.tasks[task])
    m.train()
    m.before_task(ctx)
    m.to(trainer.device)
    return trainer, ctx


def measure(method: str, task: int, batch_size: int, benchmark: str = "random", overrides: Sequence[Override] = (),
            steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Step time (s) at ``task``, eval throughput (img/s) merged and unmerged, peak memory."""
    trainer, ctx = prepared(method, benchmark, task, overrides)
    m, device = trainer.method, trainer.device
    size = trainer.stream.train.__getitems__([0])[0].shape[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, size, size, generator=g).to(device)
    y = torch.randint(ctx.lo, ctx.hi, (batch_size,), generator=g).to(device)
    groups = m.parameter_groups()
    result: dict[str, Any] = {"method": method, "task": task + 1,
                              "trainable": sum(p.numel() for g_ in groups for p in g_["params"])}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if groups:
        optimizer = build_optimizer(groups, trainer.train_cfg, task_hparams(trainer.train_cfg, task)[1])
        params = [p for g_ in groups for p in g_["params"]]
        result["step_s"] = _timed(lambda: trainer.train_step(m, optimizer, params, x, y, ctx), steps, warmup, device)
    else:
        result["step_s"] = None
    m.eval()

    def predict() -> None:
        with torch.inference_mode(), trainer.autocast():
            m.predict(x)

    with m.eval_context():
        result["eval_img_s_merged"] = batch_size / _timed(predict, steps, warmup, device)
    result["eval_img_s_unmerged"] = batch_size / _timed(predict, steps, warmup, device)

    def bare() -> None:
        with torch.inference_mode(), trainer.autocast():
            m.backbone(x)

    result["eval_img_s_bare"] = batch_size / _timed(bare, steps, warmup, device)
    result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    result["device"] = str(device)
    return result
