"""Optimisers, learning-rate schedules and the masked cross-entropy, built from TrainConfig."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ..config import TrainConfig


def task_hparams(cfg: TrainConfig, task_index: int) -> tuple[int, float, tuple[int, ...]]:
    """(epochs, lr, milestones) for a task, honouring the first-task overrides."""
    if task_index == 0:
        return (
            cfg.first_task_epochs if cfg.first_task_epochs is not None else cfg.epochs,
            cfg.first_task_lr if cfg.first_task_lr is not None else cfg.lr,
            cfg.first_task_milestones if cfg.first_task_milestones is not None else cfg.milestones,
        )
    return cfg.epochs, cfg.lr, cfg.milestones


def group_lr(lr: float, group: dict[str, Any], factor: float = 1.0) -> float:
    """The one lr rule: base lr × the group's ``lr_scale`` × the schedule's factor."""
    return lr * group.get("lr_scale", 1.0) * factor


def set_group_lrs(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]], lr: float, factor: float) -> None:
    """Set every optimiser group's lr for an epoch whose schedule factor is ``factor``."""
    for param_group, group in zip(optimizer.param_groups, groups):
        param_group["lr"] = group_lr(lr, group, factor)


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """One optimiser over the method's groups; ``lr_scale`` multiplies the base lr per group."""
    param_groups = []
    for group in groups:
        g = {k: v for k, v in group.items() if k not in ("lr_scale", "name")}
        g["lr"] = group_lr(lr, group)
        g.setdefault("weight_decay", cfg.weight_decay)
        param_groups.append(g)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=lr, betas=cfg.betas)
    return torch.optim.AdamW(param_groups, lr=lr, betas=cfg.betas)


def lr_factor(schedule: str, epoch: int, epochs: int, milestones: tuple[int, ...], gamma: float) -> float:
    """Multiplier of the base lr during ``epoch`` (0-indexed) of ``epochs``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    if schedule == "coda-cosine":  # CODA-Prompt's variant (GT-RIPL/CODA-Prompt; docs/methods.md)
        return math.cos(99 * math.pi * epoch / (200 * (epochs - 1))) if epochs > 1 else 1.0
    if schedule == "multistep":
        return gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown schedule {schedule}")


def masked_cross_entropy(logits: Tensor, y: Tensor, lo: int, hi: int, policy: str) -> Tensor:
    """Cross-entropy under a logit-masking policy (see ``TrainConfig.logit_mask``)."""
    if policy == "current":
        return F.cross_entropy(logits[:, lo:hi], y - lo)
    if policy == "seen":
        return F.cross_entropy(logits[:, :hi], y)
    return F.cross_entropy(logits, y)
