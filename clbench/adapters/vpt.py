"""Visual prompt tuning (VPT; APER-VPT): learnable tokens appended after the patch tokens.

The sequence becomes ``[prefix tokens, patches, P prompts]`` after the position embedding
(the prompts get none), prompts initialised to zero as the reference does. ``deep``: block
``i`` gets its own P prompts appended before it and dropped after it, parameter (L, P, D).
``shallow``: P prompts appended before the first block and dropped after the last, parameter
(1, P, D). Zero prompts still change the output (their keys and values come from the
LayerNorm biases), unlike a zero bottleneck adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import SwitchableInjection


class VisualPrompts(SwitchableInjection):
    """``length`` prompt tokens per block (``deep``) or for the whole network (``shallow``)."""

    def __init__(self, backbone: Backbone, length: int, mode: Literal["deep", "shallow"] = "deep"):
        super().__init__(backbone)
        if length < 1:
            raise ValueError(f"VPT needs at least one prompt token, got {length}")
        depth = backbone.depth
        blocks = {b: self.module_at(backbone, f"vit.blocks.{b}") for b in range(depth)}
        self.length, self.mode = length, mode
        ref = next(backbone.parameters())
        self.prompts = nn.Parameter(torch.zeros(depth if mode == "deep" else 1, length, backbone.embed_dim,
                                                device=ref.device))
        if mode == "deep":
            for b, block in blocks.items():
                self.hook(f"vit.blocks.{b}", block, self._append(b), kind="forward_pre")
                self.hook(f"vit.blocks.{b}", block, self._drop)
        else:
            self.hook("vit.blocks.0", blocks[0], self._append(0), kind="forward_pre")
            self.hook(f"vit.blocks.{depth - 1}", blocks[depth - 1], self._drop)

    def _append(self, index: int) -> Callable:
        def append(module: nn.Module, args: tuple) -> tuple | None:
            if not self.enabled:
                return None
            x = args[0]
            prompts = self.prompts[index].to(x.dtype).expand(x.shape[0], -1, -1)
            return (torch.cat([x, prompts], dim=1), *args[1:])

        return append

    def _drop(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if not self.enabled:
            return None
        return out[:, : out.shape[1] - self.length]


    def extra_repr(self) -> str:
        return f"mode={self.mode}, length={self.length}, {super().extra_repr()}"
