"""Process-group helper. Single process by default; see the DDP support for torchrun."""

from __future__ import annotations

import torch


class SingleProcess:
    """The world of one process: reductions are identities, this rank writes."""

    rank = 0
    world_size = 1
    is_main = True

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks (in place) and return it."""
        return tensor

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module that training steps call (DDP wraps it per task)."""
        return module

    def barrier(self) -> None:
        pass
