"""Helpers for the prompt-method tests: tiny methods on tiny ViTs and a stand-in task context."""

from __future__ import annotations

import contextlib

import torch

from clbench.methods import StreamInfo
from clbench.registry import METHODS

from conftest import tiny_vit

# Small but complete settings per method (the tiny ViT has width 32 and 5 blocks).
SMALL = {
    "l2p": dict(pool_size=6, prompt_length=2, top_k=2),
    "dualprompt": dict(g_length=2, e_length=3, pool_size=4),
    "coda-prompt": dict(pool_size=12, prompt_length=4),
    "hide-prompt": dict(length=3, n_centroids=2, align_epochs=2),
}


class FakeTask:
    """What a method sees of the engine for one task, with in-memory data on the CPU."""

    def __init__(self, index: int, info: StreamInfo, x: torch.Tensor | None = None, y: torch.Tensor | None = None):
        self.index = index
        self.lo, self.hi = info.task_ranges[index]
        self.n_tasks = info.n_tasks
        self.device = torch.device("cpu")
        self.x, self.y = x, y


    def batches(self, augment: bool = False, cumulative: bool = False, description: str = ""):
        for i in range(0, len(self.x), 8):
            yield self.x[i:i + 8], self.y[i:i + 8]

    def all_reduce(self, tensor):
        return tensor

    def autocast(self):
        return contextlib.nullcontext()


def build(name: str, n_tasks: int = 3, per_task: int = 2, seed: int = 0, **options):
    """A freshly built method on a 5-block tiny ViT (width 32, 16 px images)."""
    cls = METHODS.get(name)
    info = StreamInfo(n_tasks * per_task, tuple((t * per_task, (t + 1) * per_task) for t in range(n_tasks)))
    method = cls(cls.Config(**{**SMALL[name], **options}), tiny_vit(depth=5, seed=seed), info)
    return method, info


def task_data(task: FakeTask, n_per_class: int = 6, seed: int = 0) -> FakeTask:
    """Attach random images of the task's classes (a class-dependent offset makes them separable)."""
    g = torch.Generator().manual_seed(seed + task.index)
    y = torch.arange(task.lo, task.hi).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 3, 16, 16, generator=g) * 0.5 + (y.float() / (task.hi + 1))[:, None, None, None]
    task.x, task.y = x, y
    return task


def run_tasks(method, info: StreamInfo, n: int, train_steps: int = 0, lr: float = 0.05, start: int = 0) -> FakeTask:
    """Run the task hooks of tasks start..n-1 (with a few Adam steps each); returns the last task."""
    for t in range(start, n):
        task = task_data(FakeTask(t, info))
        method.train()
        method.before_task(task)
        groups = method.parameter_groups()
        if train_steps and groups:
            opt = torch.optim.Adam([p for g in groups for p in g["params"]], lr=lr)
            for _ in range(train_steps):
                out = method.training_step(task.x, task.y, task)
                loss = torch.nn.functional.cross_entropy(out.logits[:, task.lo:task.hi], task.y - task.lo)
                if out.loss is not None:
                    loss = loss + out.loss
                opt.zero_grad()
                loss.backward()
                opt.step()
        method.after_task(task)
    method.eval()
    return task
