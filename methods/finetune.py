"""``finetune`` and ``joint``: full fine-tuning, the lower and the upper bound."""

from __future__ import annotations

from torch import Tensor

from clbench.heads import IncrementalLinear
from clbench.registry import register_method

from .base import CLMethod, StepOutput


@register_method("finetune")
class Finetune(CLMethod):
    """Full fine-tuning of backbone and head on each task in turn (forgetting lower bound)."""

    display_name = "Full Fine-Tuning"
    defaults = {"train.logit_mask": "seen"}

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.head = IncrementalLinear(backbone.embed_dim)

    def before_task(self, ctx) -> None:
        self.head.grow(ctx.hi)

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        return StepOutput(self.head(self.backbone(x)))

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def task_state(self) -> dict:
        return dict(self.state_dict())  # the whole network changes, so all of it is the solution


@register_method("joint")
class Joint(Finetune):
    """Full fine-tuning on the data of all tasks seen so far (the non-continual upper bound)."""

    display_name = "Joint"
    cumulative_data = True
