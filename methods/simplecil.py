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

    trains = False
    display_name = "SimpleCIL"

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.prototypes = Prototypes(backbone.embed_dim)

    def parameter_groups(self) -> list:
        return []

    def after_task(self, ctx) -> None:
        n = ctx.hi - ctx.lo
        sums = torch.zeros(n, self.backbone.embed_dim, device=ctx.device, dtype=torch.float64)
        counts = torch.zeros(n, device=ctx.device, dtype=torch.float64)
        with self.frozen_features(), ctx.autocast():
            for x, y in ctx.batches(augment=False, description="prototypes"):
                feats = self.backbone(x).double()
                sums.index_add_(0, y - ctx.lo, feats)
                counts.index_add_(0, y - ctx.lo, torch.ones_like(y, dtype=torch.float64))
        sums, counts = ctx.all_reduce(sums), ctx.all_reduce(counts)
        labels = torch.arange(ctx.lo, ctx.hi, device=ctx.device)
        self.prototypes.set(labels, (sums / counts[:, None]).float())

    def predict(self, x: Tensor) -> Tensor:
        return self.prototypes(self.backbone(x))
