"""Speed harness: training steps, evaluation, memory and data loading, side by side in one process.

For each method the harness builds it twice on the chosen backbone and runs its task hooks
(no training) up to task 1 and up to a late task, so each has the structure it has there
(e.g. 19 frozen SD-LoRA branches before task 20). It then times, in interleaved rounds (one
call of each measurement per round, so drifts in machine load hit them all alike):

* a step of the engine's own loop at task 1 and at the late task (same fixed batch);
* the late method's ``predict`` inside its ``eval_context`` (e.g. adapters merged) and
  outside it, and the bare backbone's forward, as throughput (images/s);

and reports medians, their ratios, the memory the method holds (parameters, trainable
parameters, optimiser state) and, on CUDA, the peak memory of each call (bf16 autocast when
the engine would use it). :func:`measure_loader` times the engine's training loader (in-memory
data, with and without augmentation, including the copy to the device).

``clbench bench --help`` shows the options; the README lists figures and the command.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .engine.context import EngineTaskContext
from .engine.loaders import Loaders
from .engine.optim import build_optimizer, task_hparams
from .engine.trainer import Trainer
from .engine.dist import SingleProcess
from .engine.runtime import compile_backbone, resolve_device
from .experiment import DataCache, Override, build, plan

_CACHE = DataCache()  # the benchmark data, shared by every prepared method of a process
# nothing is written; planning only checks that the output directory is writable
_NO_OUTPUT = [("engine.progress", False), ("engine.output_dir", tempfile.gettempdir())]

Timed = tuple[Callable[[], Any], Callable[[], contextlib.AbstractContextManager]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(measurements: dict[str, Timed], repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each measurement, timed in ``repeats`` interleaved rounds
    after ``warmup`` untimed rounds. A measurement is ``(fn, context)``: the context (e.g.
    merged adapters) is entered around each timed call but not timed itself."""
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for round_ in range(warmup + repeats):
        for name, (fn, context) in measurements.items():
            with context():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory_mb(fn: Callable[[], Any], context: Callable[[], contextlib.AbstractContextManager],
                   device: torch.device) -> float | None:
    """Peak CUDA memory (MB) allocated during one call of ``fn`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    with context():
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20


def _mb(tensors: Any) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def prepared(method: str, benchmark: str, task: int, overrides: Sequence[Override]) -> tuple[Trainer, EngineTaskContext]:
    """A trainer whose method has run the hooks of tasks ``0..task-1`` and ``before_task(task)``."""
    (run,) = plan([method], benchmark, [0], None, [*_NO_OUTPUT, *overrides])
    _, stream, m = build(run.config, _CACHE)
    trainer = Trainer(m, stream, run.config)
    m.to(trainer.device)
    if run.config.engine.compile:
        compile_backbone(m.backbone)
    for t in stream.tasks[:task]:
        ctx = trainer.context(t)
        m.before_task(ctx)
        m.to(trainer.device)
        m.after_task(ctx)
    ctx = trainer.context(stream.tasks[task])
    m.train()
    m.before_task(ctx)
    m.to(trainer.device)
    return trainer, ctx


class _Probe:
    """One prepared method at one task, with a fixed batch and its optimiser."""

    def __init__(self, method: str, benchmark: str, task: int, batch_size: int, overrides: Sequence[Override]):
        self.trainer, self.ctx = prepared(method, benchmark, task, overrides)
        self.method, self.device = self.trainer.method, self.trainer.device
        size = self.trainer.stream.train.__getitems__([0])[0].shape[-1]
        g = torch.Generator().manual_seed(task)
        self.x = torch.rand(batch_size, 3, size, size, generator=g).to(self.device)
        self.y = torch.randint(self.ctx.lo, self.ctx.hi, (batch_size,), generator=g).to(self.device)
        self.groups = self.method.parameter_groups()
        self.params = [p for g_ in self.groups for p in g_["params"]]
        self.optimizer = None
        if self.groups:
            epochs, lr, milestones = task_hparams(self.trainer.train_cfg, task)
            self.optimizer = build_optimizer(self.groups, self.trainer.train_cfg, lr)
            self.spec = self.trainer.main_spec(self.ctx, self.method, self.groups, epochs, lr, milestones,
                                               lambda e, skip: iter(()))
            self.hooks = self.trainer.hooks(self.ctx)

    def step(self) -> None:
        """One step of the engine's own loop (forward, masked CE, backward, hooks, clipping, update)."""
        self.method.train()
        self.trainer.loop.step(self.spec, self.hooks, self.optimizer, self.params, (self.x, self.y))

    def predict(self) -> None:
        self.method.eval()
        with torch.inference_mode(), self.trainer.autocast():
            self.method.predict(self.x)

    def bare(self) -> None:
        with torch.inference_mode(), self.trainer.autocast():
            self.method.backbone(self.x)

    def memory(self) -> dict[str, float]:
        """MB held by the method's parameters and buffers, its trainable part, the optimiser state."""
        state = [t for s in (self.optimizer.state.values() if self.optimizer else []) for t in s.values()
                 if torch.is_tensor(t)]
        return {"model_mb": _mb(list(self.method.parameters()) + list(self.method.buffers())),
                "trainable_mb": _mb(self.params), "optimizer_mb": _mb(state)}


def measure(method: str, late_task: int, batch_size: int, benchmark: str = "random",
            overrides: Sequence[Override] = (), repeats: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Step times at task 1 and ``late_task`` (0-indexed), eval throughput merged/unmerged/bare,
    memory; all timings interleaved in one process."""
    first = _Probe(method, benchmark, 0, batch_size, overrides)
    late = _Probe(method, benchmark, late_task, batch_size, overrides)
    device = late.device
    none = contextlib.nullcontext
    timed: dict[str, Timed] = {}
    if first.groups:
        timed["step_first"] = (first.step, none)
    if late.groups:
        timed["step_late"] = (late.step, none)
    timed["eval_merged"] = (late.predict, late.method.eval_context)
    timed["eval_unmerged"] = (late.predict, none)
    timed["eval_bare"] = (late.bare, none)
    medians = interleaved(timed, repeats, warmup, device)
    step_first, step_late = medians.get("step_first"), medians.get("step_late")
    result: dict[str, Any] = {
        "method": method, "late_task": late_task + 1, "batch_size": batch_size, "device": str(device),
        "threads": torch.get_num_threads(),
        "autocast": str(late.trainer.amp_dtype).replace("torch.", "") if late.trainer.amp_dtype else "fp32",
        "trainable_first": sum(p.numel() for p in first.params), "trainable_late": sum(p.numel() for p in late.params),
        "seen_classes_late": late.ctx.hi,
        "step_s_first": step_first, "step_s_late": step_late,
        "step_late_vs_first": step_late / step_first if step_first and step_late else None,
        "train_img_s_late": batch_size / step_late if step_late else None,
        **{f"eval_img_s_{k}": batch_size / medians[f"eval_{k}"] for k in ("merged", "unmerged", "bare")},
        **{f"late_{k}": v for k, v in late.memory().items()},
    }
    result["eval_merged_vs_bare"] = result["eval_img_s_merged"] / result["eval_img_s_bare"]
    result["eval_unmerged_vs_bare"] = result["eval_img_s_unmerged"] / result["eval_img_s_bare"]
    for name, (fn, context) in timed.items():
        result[f"peak_mb_{name}"] = peak_memory_mb(fn, context, device)
    return result


def measure_loader(benchmark: str, batch_size: int, overrides: Sequence[Override] = (), batches: int = 20,
                   repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Images/s of the engine's training loader over the benchmark's training images
    (shuffled batches, copy to the device and conversion to float included): in-memory data
    without augmentation and with a random crop + flip, interleaved."""
    from .data.datasets import TensorImageDataset, random_crop_flip

    (run,) = plan(["simplecil"], benchmark, [0], None, [*_NO_OUTPUT, *overrides])
    bench, data = _CACHE.get(run.config)
    stream = bench.stream(data, run.config.benchmark_cfg, 0)
    loaders = Loaders(SingleProcess(), resolve_device(run.config.engine.device), run.config.engine.num_workers, 0)
    images, _ = stream.train.__getitems__(list(range(len(stream.train))))
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).to(torch.uint8)
    targets = np.asarray(stream.train.targets)
    variants = {"memory": TensorImageDataset(images, targets).with_augment(True),
                "memory_augment": TensorImageDataset(images, targets, random_crop_flip(4)).with_augment(True)}

    def epoch(data: Any) -> Callable[[], None]:
        loader = loaders.training(data, batch_size, seed=0, drop_last=False)

        def run_batches() -> None:
            done = 0
            while done < batches:
                for x, y in loaders.epoch(loader, 0):
                    done += 1
                    if done == batches:
                        return

        return run_batches

    timed = {name: (epoch(data), contextlib.nullcontext) for name, data in variants.items()}
    medians = interleaved(timed, repeats, warmup, loaders.device)
    result: dict[str, Any] = {"benchmark": benchmark, "batch_size": batch_size, "device": str(loaders.device),
                              "image_size": int(images.shape[-1])}
    for name, seconds in medians.items():
        result[f"loader_img_s_{name}"] = batches * batch_size / seconds
    result["augment_cost"] = result["loader_img_s_memory"] / result["loader_img_s_memory_augment"]
    return result


def measure_efficiency(method: str, late_task: int, benchmark: str = "random",
                       overrides: Sequence[Override] = ()) -> dict[str, Any]:
    """The efficiency record's structural figures (:mod:`clbench.efficiency`) of ``method``
    at task ``late_task`` (0-indexed) without training: its hooks run for the earlier tasks
    and the late one (statistics passes included), then the late task's learnable parameters
    (main groups and declared phases), the stored statistics and the FLOPs of one evaluation
    forward are counted as a run's record counts them."""
    from .efficiency import added_parameters, inference_flops, stored_statistics, trained_parameters

    trainer, ctx = prepared(method, benchmark, late_task, overrides)
    m = trainer.method
    groups = m.parameter_groups() + [g for p in m.pre_training_phases(ctx) if p.epochs > 0 for g in p.groups]
    m.after_task(ctx)
    groups += [g for p in m.post_task_phases(ctx) if p.epochs > 0 for g in p.groups]
    stored = stored_statistics(m)
    image = trainer.test_image(ctx.task)
    return {"method": method, "display_name": getattr(type(m), "__dict__", {}).get("display_name") or method,
            "late_task": late_task + 1, "input_size": list(image.shape[-3:]),
            "gflops": inference_flops(m, image) / 1e9,
            "learnable_params": sum(p.numel() for p in trained_parameters(groups)),
            "added_params": added_parameters(m), "stored_values": stored["values"], "stored_bytes": stored["bytes"],
            "stored_entries": stored["entries"]}
