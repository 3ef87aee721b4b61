"""Bottleneck adapters parallel to each block's MLP (AdaptFormer; APER, RanPAC, FeCAM, EASE, MOS).

In every adapted block of a timm ViT::

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x)) + s · up(dropout(relu(down(x))))

The adapter reads the residual stream after the attention residual (the input of ``norm2``,
un-normalised) and its output joins the MLP branch after LayerScale and drop-path (hooks on
``norm2`` and ``drop_path2``), so the block's own computation is untouched. ``down`` is
initialised like ``nn.Linear`` (Kaiming-uniform, a=√5) with a zero bias, ``up`` is zero, so
a new adapter leaves the ViT's function unchanged. The scale ``s`` is fixed (0.1), the dropout
acts on the bottleneck activation in training only. Parameters are stacked over the adapted
blocks: ``down_weight`` (L, r, d), ``down_bias`` (L, r), ``up_weight`` (L, d, r), ``up_bias`` (L, d).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import SwitchableInjection


class BottleneckAdapter(SwitchableInjection):
    """One bottleneck adapter (rank ``rank``) next to the MLP of each of ``blocks`` (default: all)."""

    def __init__(self, backbone: Backbone, rank: int = 64, scale: float = 0.1, dropout: float = 0.1,
                 blocks: Sequence[int] | None = None):
        super().__init__(backbone)
        self.block_ids = list(range(backbone.depth)) if blocks is None else sorted(set(blocks))
        self.rank, self.scale = rank, scale
        d = backbone.embed_dim
        sites = [(f"vit.blocks.{b}", self.module_at(backbone, f"vit.blocks.{b}.norm2"),
                  self.module_at(backbone, f"vit.blocks.{b}.drop_path2")) for b in self.block_ids]
        L = len(self.block_ids)
        ref = next(backbone.parameters())
        bound = 1.0 / math.sqrt(d)  # nn.Linear's default (kaiming_uniform, a=√5)
        self.down_weight = nn.Parameter(torch.empty(L, rank, d, device=ref.device).uniform_(-bound, bound))
        self.down_bias = nn.Parameter(torch.zeros(L, rank, device=ref.device))
        self.up_weight = nn.Parameter(torch.zeros(L, d, rank, device=ref.device))
        self.up_bias = nn.Parameter(torch.zeros(L, d, device=ref.device))
        self.dropout = nn.Dropout(dropout)
        self._inputs: dict[int, Tensor] = {}
        for i, (base, norm2, drop_path2) in enumerate(sites):
            self.hook(base + ".norm2", norm2, self._stash(i), kind="forward_pre")
            self.hook(base + ".drop_path2", drop_path2, self._add(i))

    def branch(self, i: int, x: Tensor) -> Tensor:
        """The adapter output ``s · up(dropout(relu(down(x))))`` of adapted block index ``i``."""
        h = torch.relu(torch.nn.functional.linear(x, self.down_weight[i].to(x.dtype), self.down_bias[i].to(x.dtype)))
        h = self.dropout(h)
        return self.scale * torch.nn.functional.linear(h, self.up_weight[i].to(x.dtype), self.up_bias[i].to(x.dtype))

    def _stash(self, i: int) -> Callable:
        def stash(module: nn.Module, args: tuple) -> None:
            if self.enabled:
                self._inputs[i] = args[0]

        return stash

    def _add(self, i: int) -> Callable:
        def add(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            x = self._inputs.pop(i, None)
            if not self.enabled or x is None:
                return None
            return out + self.branch(i, x).to(out.dtype)

        return add


    def parameters_per_block(self) -> int:
        return sum(p[0].numel() for p in (self.down_weight, self.down_bias, self.up_weight, self.up_bias))

    def extra_repr(self) -> str:
        return f"blocks={self.block_ids}, rank={self.rank}, scale={self.scale}, {super().extra_repr()}"
