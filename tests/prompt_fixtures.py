"""Helpers for the prompt-method tests: tiny methods on tiny ViTs, in-memory task contexts."""

from __future__ import annotations

from clbench.methods import StreamInfo
from clbench.registry import METHODS
from clbench.testing import InMemoryTask, run_method, separable_images

from conftest import tiny_vit

# Small but complete settings per method (the tiny ViT has width 32 and 5 blocks).
SMALL = {
    "l2p": dict(pool_size=6, prompt_length=2, top_k=2),
    "dualprompt": dict(g_length=2, e_length=3, pool_size=4),
    "coda-prompt": dict(pool_size=12, prompt_length=4),
    "hide-prompt": dict(length=3, n_centroids=2, align_epochs=2, tii_epochs=2),
}


def build(name: str, n_tasks: int = 3, per_task: int = 2, seed: int = 0, **options):
    """A freshly built method on a 5-block tiny ViT (width 32, 16 px images)."""
    cls = METHODS.get(name)
    info = StreamInfo(n_tasks * per_task, tuple((t * per_task, (t + 1) * per_task) for t in range(n_tasks)))
    method = cls(cls.Config(**{**SMALL[name], **options}), tiny_vit(depth=5, seed=seed), info)
    return method, info


def task_ctx(info: StreamInfo, index: int, n_per_class: int = 6, seed: int = 0) -> InMemoryTask:
    """Task ``index`` with separable random images of its classes."""
    lo, hi = info.task_ranges[index]
    return InMemoryTask.of(info, index, *separable_images(lo, hi, n_per_class, 16, seed + index))


def run_tasks(method, n: int, steps: int = 0, start: int = 0):
    """Tasks start..n-1 through the real trainer (``steps`` Adam steps each at lr 0.05)."""
    return run_method(method, tasks=range(start, n), steps=steps, train={"lr": 0.05})
