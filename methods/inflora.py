"""InfLoRA (Liang & Li, CVPR 2024) and InfLoRA-b5 (branches in blocks 0-4 only).

Per task, every adapted block gets a branch ``Up_t Down_t`` on its key and value projections
(github.com/liangyanshuo/InfLoRA; notes in docs/methods.md):

* ``Down_t`` is *designed* before training and frozen: the top-r left singular vectors of the
  block's uncentred qkv-input covariance on the task's training data, projected away from the
  subspace memory of earlier tasks, divided by √3. The model is unchanged at the task start
  (``Up_t = 0``);
* only ``Up_t`` and the task's own linear head are trained (cross-entropy over the task's
  classes); at test the heads of all tasks are concatenated;
* after the task the branch is merged into the qkv weights (so training and inference cost a
  plain ViT forward whatever the task count), and the memory is updated from the trained
  model's input covariance with threshold ε_t = lamb + (lame − lamb)·t/T: DualGPM (``inflora``,
  a 'remove' basis above d/2 columns becomes a 'retain' basis of its complement) or GPM
  (``inflora-b5``, always 'remove').

Covariances are accumulated on the compute device (float64), summed over DDP ranks, with the
network deterministic (eval mode, no grad). The official code's unused k-means pass is not
run, nor the memory update after the last task (nothing would use it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import QKVLowRank
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.registry import register_method

from .base import CLMethod, StepOutput


@dataclass
class InfLoRAConfig(MethodConfig):
    rank: int = option(10, "rank of each task's branch", ge=1)
    blocks: tuple[int, ...] = option((), "adapted blocks; empty: all", ge=0)
    memory: Literal["dualgpm", "gpm"] = option("dualgpm", "how the input-subspace memory is kept")
    lamb: float = option(0.95, "ε_0 of the memory threshold schedule", ge=0, le=1)
    lame: float = option(1.0, "ε approaches this at the last task", ge=0, le=1)
    down_divisor: float = option(math.sqrt(3.0), "Down_t = top singular vectors / this (official code)", gt=0)
    cov_augment: bool = option(True, "covariance passes see the training augmentations (official code)")
    head_lr_scale: float = option(1.0, "lr of the task head relative to train.lr (DomainNet config: 2)", gt=0, le=1_000)


@dataclass
class InfLoRAB5Config(InfLoRAConfig):
    blocks: tuple[int, ...] = (0, 1, 2, 3, 4)
    memory: Literal["dualgpm", "gpm"] = option("gpm", "how the earlier tasks' input subspace is kept: dualgpm or gpm")


def memory_threshold(lamb: float, lame: float, task_index: int, n_tasks: int) -> float:
    """ε after 0-indexed task ``task_index`` of ``n_tasks``: lamb + (lame − lamb)·t/T."""
    return lamb + (lame - lamb) * task_index / n_tasks


class SubspaceMemory(nn.Module):
    """Per-layer orthonormal bases (GPM / DualGPM) of the input space earlier tasks use.

    Layer ``i`` keeps ``basis_i`` (d × k, stored float32) of kind 'remove' (the basis spans
    the protected space) or 'retain' (it spans the complement), or nothing yet.
    """

    def __init__(self, n_layers: int, dim: int):
        super().__init__()
        self.dim = dim
        self.kinds = ["none"] * n_layers
        for i in range(n_layers):
            self.register_buffer(f"basis_{i}", None)

    def basis(self, i: int) -> Tensor | None:
        return getattr(self, f"basis_{i}")

    def free_part(self, i: int, C: Tensor) -> Tensor:
        """The projection of ``C`` (d × d) onto the unprotected space of layer ``i``."""
        M = self.basis(i)
        if M is None:
            return C
        M = M.to(C)
        if self.kinds[i] == "remove":
            return C - M @ (M.t() @ C)
        return M @ (M.t() @ C)

    @torch.no_grad()
    def update(self, covs: Tensor, eps: float, dual: bool) -> None:
        """Grow the memory from the covariances (L, d, d) of the task just learnt."""
        half = self.dim / 2
        for i, C in enumerate(covs.double()):
            M = self.basis(i)
            kind = self.kinds[i]
            if M is None:
                U, S, _ = torch.linalg.svd(C)
                k = max(int((torch.cumsum(S.square() / S.square().sum(), 0) < eps).sum()), 1)
                if dual and k >= half:  # (the official code stores U[:, :k] here: a latent bug)
                    M, kind = U[:, k:], "retain"
                else:
                    M, kind = U[:, :k], "remove"
            else:
                M = M.double()
                total = torch.linalg.svdvals(C).square().sum()
                U, S, _ = torch.linalg.svd(self.free_part(i, C), full_matrices=False)
                ratio = S.square() / total
                before = torch.cumsum(ratio, 0) - ratio  # captured before adding direction n
                if kind == "remove":
                    start = (total - S.square().sum()) / total
                    r = int((start + before < eps).sum())
                    if r:
                        M = torch.cat([M, U[:, :r]], dim=1)[:, : self.dim]
                else:
                    start = S.square().sum() / total
                    r = int((start - before >= 1 - eps).sum())
                    if r:
                        Ur = U[:, :r]
                        M = torch.linalg.svd(M - Ur @ (Ur.t() @ M), full_matrices=False)[0][:, : M.shape[1] - r]
            if dual and kind == "remove" and M.shape[1] > half:
                U = torch.linalg.svd(M, full_matrices=True)[0]
                M, kind = U[:, M.shape[1]:], "retain"
            setattr(self, f"basis_{i}", M.float().contiguous())
            self.kinds[i] = kind

    def dims(self) -> list[int]:
        return [0 if self.basis(i) is None else self.basis(i).shape[1] for i in range(len(self.kinds))]

    def get_extra_state(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.kinds = list(state["kinds"])


class TaskLinearHeads(nn.Module):
    """One linear head per task (``nn.Linear`` init), logits concatenated; only the newest trains.

    Earlier heads are one frozen block, the newest is a separate parameter pair, so a saved
    state restores into a fresh module (shapes are adopted) and trainable counts are exact.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.old_weight = nn.Parameter(torch.empty(0, in_features), requires_grad=False)
        self.old_bias = nn.Parameter(torch.empty(0), requires_grad=False)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    @torch.no_grad()
    def add(self, n_classes: int) -> None:
        """Freeze the current head and start one for ``n_classes`` new classes."""
        if self.weight is not None:
            self.old_weight = nn.Parameter(torch.cat([self.old_weight, self.weight]), requires_grad=False)
            self.old_bias = nn.Parameter(torch.cat([self.old_bias, self.bias]), requires_grad=False)
        head = nn.Linear(self.in_features, n_classes, device=self.old_weight.device)
        self.weight, self.bias = head.weight, head.bias

    def forward(self, x: Tensor) -> Tensor:
        logits = F.linear(x, self.weight, self.bias)
        return torch.cat([F.linear(x, self.old_weight, self.old_bias), logits], dim=-1) if len(self.old_bias) else logits


@register_method("inflora")
class InfLoRA(CLMethod):
    """InfLoRA: designed (interference-free) down-projections on k/v of all blocks, DualGPM."""

    Config = InfLoRAConfig
    display_name = "InfLoRA"
    defaults = {"train.logit_mask": "current", "train.optimizer": "adam", "train.schedule": "cosine"}

    def __init__(self, cfg: InfLoRAConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        blocks = list(cfg.blocks) or None
        if blocks is not None and not all(0 <= b < backbone.depth for b in blocks):
            raise ConfigError(f"method.blocks {cfg.blocks} must lie in 0..{backbone.depth - 1} "
                              f"(the backbone has {backbone.depth} blocks).")
        if cfg.rank < 1:
            raise ConfigError(f"method.rank must be at least 1, got {cfg.rank}.")
        self.freeze_backbone()
        self.adapter = QKVLowRank(backbone, blocks=blocks, targets="kv")
        self.memory = SubspaceMemory(len(self.adapter.block_ids), self.adapter.d_in)
        self.heads = TaskLinearHeads(backbone.embed_dim)
        self._log: dict[str, Any] = {}

    # ---------------------------------------------------------------- statistics
    def covariances(self, ctx, augment: bool, description: str) -> Tensor:
        """Uncentred covariance (L, d, d) float64 of every adapted block's qkv input on the task."""
        with self.frozen_features(), self.adapter.input_covariance() as cov:
            for x, _ in ctx.batches(augment=augment, description=description):
                with ctx.autocast():
                    self.backbone(x)
        if cov.sums is None:
            raise RuntimeError(f"InfLoRA: task {ctx.index + 1} has no training data for its covariance pass")
        return ctx.all_reduce(cov.sums) / ctx.all_reduce(cov.count)

    @torch.no_grad()
    def design_down(self, covs: Tensor) -> Tensor:
        """Down-projections (L, r, d): top-r left singular vectors of the memory-projected covariances."""
        rows = []
        for i, C in enumerate(covs):
            U = torch.linalg.svd(self.memory.free_part(i, C), full_matrices=False)[0]
            rows.append(U[:, : self.cfg.rank].t() / self.cfg.down_divisor)
        return torch.stack(rows).float()

    # ---------------------------------------------------------------- hooks
    def before_task(self, ctx) -> None:
        covs = self.covariances(ctx, self.cfg.cov_augment, "InfLoRA input covariance")
        down = self.design_down(covs)
        A = down[:, None].expand(-1, 2, -1, -1)  # the same design for k and v
        self.adapter.add_branch(self.cfg.rank, A=A, train_A=False)
        self.heads.add(ctx.hi - ctx.lo)
        self._log = {"rank": self.cfg.rank, "blocks": self.adapter.block_ids}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.adapter.B]},
                {"params": [self.heads.weight, self.heads.bias], "lr_scale": self.cfg.head_lr_scale}]

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        return StepOutput(self.heads(self.backbone(x)))

    def after_task(self, ctx) -> None:
        self.adapter.freeze_current(merge=True)
        if ctx.index + 1 >= ctx.n_tasks:
            self._log["memory"] = "not updated after the last task"
            return
        eps = memory_threshold(self.cfg.lamb, self.cfg.lame, ctx.index, ctx.n_tasks)
        covs = self.covariances(ctx, self.cfg.cov_augment, "InfLoRA memory update")
        self.memory.update(covs, eps, dual=self.cfg.memory == "dualgpm")
        self._log.update(threshold=eps, memory_dims=self.memory.dims(), memory_kinds=list(self.memory.kinds))

    def predict(self, x: Tensor) -> Tensor:
        return self.heads(self.backbone(x))

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self.adapter.merged()  # nothing left unmerged after a task: a no-op kept for safety

    def task_log(self) -> dict[str, Any]:
        return dict(self._log)


@register_method("inflora-b5")
class InfLoRAB5(InfLoRA):
    """InfLoRA-b5: branches in blocks 0-4 only, GPM memory (the version SD-LoRA's tables quote)."""

    Config = InfLoRAB5Config
    display_name = "InfLoRA-b5"
