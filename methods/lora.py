"""``lora``: one vanilla LoRA on q and v, trained on every task (the LoRA baseline)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import Tensor

from clbench.adapters import QKVLowRank
from clbench.config import MethodConfig, option
from clbench.heads import IncrementalLinear
from clbench.registry import register_method

from .base import CLMethod, StepOutput


@dataclass
class LoRAConfig(MethodConfig):
    rank: int = option(10, "rank of the LoRA branch", ge=1)
    targets: str = option("qv", "which slices of the fused qkv get the adapter (letters of q, k, v)")


@register_method("lora")
class LoRA(CLMethod):
    """One LoRA (rank r) on q and v of every block, trained on every task, plus a linear head."""

    Config = LoRAConfig
    display_name = "LoRA"
    defaults = {"train.logit_mask": "current"}

    def __init__(self, cfg: LoRAConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.adapter = QKVLowRank(backbone, targets=cfg.targets)
        self.head = IncrementalLinear(backbone.embed_dim)

    def before_task(self, ctx) -> None:
        if self.adapter.A is None:
            self.adapter.add_branch(self.cfg.rank)
        self.head.grow(ctx.hi)

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        return StepOutput(self.head(self.backbone(x)))

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self.adapter.merged()
