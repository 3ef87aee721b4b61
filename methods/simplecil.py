"""``simplecil``: class prototypes on frozen pretrained features (Zhou et al., APER/SimpleCIL)."""

from __future__ import annotations

import torch
from torch import Tensor

from clbench.heads import Prototypes
from clbench.registry import register_method

from .base import CLMethod


@register_method("simplecil")
class SimpleCIL(CLMethod):
    """Prototype classifier (cosine to class means) on the frozen backbone; no training."""

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.prototypes = Prototypes(backbone.embed_dim)

    def parameter_groups(self) -> list:
        return []

    def after_task(self, task) -> None:
        n = task.hi - task.lo
        sums = torch.zeros(n, self.backbone.embed_dim, device=task.device, dtype=torch.float64)
        counts = torch.zeros(n, device=task.device, dtype=torch.float64)
        with self.frozen_features(), task.autocast():
            for x, y in task.batches(augment=False, description="prototypes"):
                feats = self.backbone(x).double()
                sums.index_add_(0, y - task.lo, feats)
                counts.index_add_(0, y - task.lo, torch.ones_like(y, dtype=torch.float64))
        sums, counts = task.all_reduce(sums), task.all_reduce(counts)
        labels = torch.arange(task.lo, task.hi, device=task.device)
        self.prototypes.set(labels, (sums / counts[:, None]).float())

    def predict(self, x: Tensor) -> Tensor:
        return self.prototypes(self.backbone(x))
