"""Shared fixtures: tiny runs on the embedded benchmark, tiny random ViTs."""

from __future__ import annotations

import pytest
import timm
import torch

from clbench.backbones import Backbone
from clbench.weights import WeightsInfo

# A run small enough for a smoke test: 3 tasks of 2 classes, 1 epoch.
TINY = [
    ("benchmark.n_classes", 6), ("benchmark.n_tasks", 3), ("benchmark.train_per_class", 16),
    ("benchmark.test_per_class", 8), ("train.epochs", 1), ("train.batch_size", 16),
    ("engine.progress", False),
]


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a tiny run writing into a temporary results directory."""
    return TINY + [("engine.output_dir", str(tmp_path / "results"))]


def tiny_vit(depth: int = 2, dim: int = 32, heads: int = 2, seed: int = 0) -> Backbone:
    """A randomly initialised timm ViT on 16x16 inputs (patch 4), wrapped as a Backbone."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                            embed_dim=dim, depth=depth, num_heads=heads, num_classes=0)
    return Backbone(vit.eval(), "tiny", WeightsInfo("random", None, None))


def spy_on_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, float]]:
    """Patch the engine's optimiser step to record (task index, loss, lr) of every step."""
    from clbench.engine import loop as loop_module

    seen: list[tuple[int, float, float]] = []
    real = loop_module.Loop.step

    def step(self, spec, hooks, optimizer, params, batch):
        terms = real(self, spec, hooks, optimizer, params, batch)
        seen.append((spec.task_index, float(terms["loss"].detach()), optimizer.param_groups[0]["lr"]))
        return terms

    monkeypatch.setattr(loop_module.Loop, "step", step)
    return seen
