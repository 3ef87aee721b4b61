"""``slca``: Slow Learner with Classifier Alignment (Zhang et al., "SLCA: Slow Learner with
Classifier Alignment for Continual Learning on a Pre-trained Model", ICCV 2023; official code
``GengDavid/SLCA``).

* **Slow learner**: every task fine-tunes the whole backbone and a new linear head for the
  task's classes, with the backbone's learning rate a fixed fraction (1/100) of the head's
  (two optimiser groups, ``lr_scale``). Old heads are frozen; the cross-entropy covers the
  current task's logits only (``train.logit_mask=current``).
* **Class statistics**: after a task's training, one feature pass gives each new class a mean
  μ_c and covariance Σ_c (+ a small jitter so that the Cholesky factor exists). They are never
  refreshed although the backbone keeps moving (as in the reference).
* **Classifier alignment** (tasks ≥ 2, an engine phase ``ca``): a copy of all heads is trained
  on features sampled from N(s_c·μ_c, Σ_c), 256 per class and epoch, one pass of C batches of
  256, SGD with a cosine schedule; s_c = 0.9 + 0.1·(τ_c + 1)/(t + 1) shrinks the means of
  older tasks (τ_c: the task of class c, t: the current task). The loss is the cross-entropy
  of logits divided by τ times the mean over tasks of each task's logit norm. Evaluation uses
  the aligned copy; the next task trains on (and the next alignment starts from) the heads as
  trained in their own tasks, as the reference restores its pre-alignment backup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.config import MethodConfig, option
from clbench.registry import register_method

from .base import CLMethod, Phase, StepOutput
from .class_stats import class_moments


@dataclass
class SLCAConfig(MethodConfig):
    backbone_lr_scale: float = option(0.01, "backbone lr as a fraction of the head's (slow learner); 0 freezes it",
                                      ge=0)
    ca_epochs: int = option(5, "classifier-alignment epochs after each task from the second (0: none)", ge=0)
    ca_lr: float = option(0.01, "classifier-alignment learning rate (SGD, cosine schedule)", gt=0)
    ca_weight_decay: float = option(5e-4, "classifier-alignment weight decay", ge=0)
    ca_samples: int = option(256, "features sampled per class and epoch; also the alignment batch size", ge=1)
    logit_norm: float = option(0.1, "temperature of the alignment's logit normalisation; 0: plain cross-entropy",
                               ge=0)
    cov_jitter: float = option(1e-4, "added to the diagonal of each class covariance", ge=0)


@register_method("slca")
class SLCA(CLMethod):
    """Full fine-tuning with a slow backbone, one linear head per task, classifier alignment on
    sampled class-wise Gaussians after each task."""
    display_name = "SLCA"

    Config = SLCAConfig
    # the official code's module constants (GengDavid/SLCA models/slca.py, exps/slca_cifar.json)
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.lr": 0.01, "train.weight_decay": 5e-4,
                "train.schedule": "multistep", "train.milestones": (18,), "train.gamma": 0.1, "train.epochs": 20,
                "train.batch_size": 128, "train.logit_mask": "current"}

    def __init__(self, cfg: SLCAConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        d = backbone.embed_dim
        if cfg.backbone_lr_scale == 0:
            self.freeze_backbone()
        self.weight = nn.Parameter(torch.empty(0, d))  # the current task's head
        self.bias = nn.Parameter(torch.empty(0))
        self.register_buffer("past_weight", torch.empty(0, d))  # earlier tasks' heads, as trained then
        self.register_buffer("past_bias", torch.empty(0))
        self.aligned_weight = nn.Parameter(torch.empty(0, d), requires_grad=False)  # what predict uses
        self.aligned_bias = nn.Parameter(torch.empty(0), requires_grad=False)
        self.register_buffer("means", torch.empty(0, d))
        self.register_buffer("chol", torch.empty(0, d, d))  # Cholesky factors of the class covariances
        self._ca_losses: list[list[Tensor]] = []

    # ------------------------------------------------------------------ heads
    @property
    def n_heads(self) -> int:
        return self.past_weight.shape[0] + self.weight.shape[0]

    @torch.no_grad()
    def before_task(self, ctx) -> None:
        if self.n_heads < ctx.hi:  # freeze the last task's head, add this task's
            self.past_weight = torch.cat([self.past_weight, self.weight.detach()])
            self.past_bias = torch.cat([self.past_bias, self.bias.detach()])
            w = torch.empty(ctx.hi - ctx.lo, self.backbone.embed_dim, device=self.weight.device)
            self.weight = nn.Parameter(nn.init.trunc_normal_(w, std=0.02))
            self.bias = nn.Parameter(torch.zeros(ctx.hi - ctx.lo, device=self.bias.device))
        for p in (self.aligned_weight, self.aligned_bias):
            p.requires_grad_(False)

    def parameter_groups(self) -> list[dict[str, Any]]:
        head = {"name": "head", "params": [self.weight, self.bias]}
        if self.cfg.backbone_lr_scale == 0:
            return [head]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [{"name": "backbone", "params": backbone, "lr_scale": self.cfg.backbone_lr_scale}, head]

    def heads(self, f: Tensor) -> Tensor:
        return torch.cat([F.linear(f, self.past_weight, self.past_bias), F.linear(f, self.weight, self.bias)], dim=1)

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        return StepOutput(self.heads(self.backbone(x)))

    def predict(self, x: Tensor) -> Tensor:
        return F.linear(self.backbone(x), self.aligned_weight, self.aligned_bias)

    # ------------------------------------------------------------------ statistics, alignment
    @torch.no_grad()
    def after_task(self, ctx) -> None:
        with self.frozen_features():
            stats = class_moments(lambda x: self.backbone(x).float(), ctx, self.backbone.embed_dim)
        eye = torch.eye(stats.covs.shape[-1], dtype=stats.covs.dtype, device=stats.covs.device)
        chol = torch.linalg.cholesky(stats.covs + self.cfg.cov_jitter * eye)
        self.means = torch.cat([self.means, stats.means.to(self.means)])
        self.chol = torch.cat([self.chol, chol.to(self.chol)])
        self.aligned_weight = nn.Parameter(torch.cat([self.past_weight, self.weight.detach()]).clone(),
                                           requires_grad=False)
        self.aligned_bias = nn.Parameter(torch.cat([self.past_bias, self.bias.detach()]).clone(), requires_grad=False)
        self._ca_losses = []

    def mean_scales(self, task: int) -> Tensor:
        """s_c = 0.9 + 0.1·(τ_c + 1)/(t + 1) for every seen class (τ_c from the real class→task map)."""
        scales = [0.9 + 0.1 * (k + 1) / (task + 1)
                  for k, (lo, hi) in enumerate(self.info.task_ranges[:task + 1]) for _ in range(lo, hi)]
        return torch.tensor(scales, device=self.means.device)

    def sample_features(self, task: int) -> tuple[Tensor, Tensor]:
        """``ca_samples`` features per seen class from N(s_c·μ_c, Σ_c), shuffled (global RNG)."""
        n, (classes, d) = self.cfg.ca_samples, self.means.shape
        z = torch.randn(classes, n, d, device=self.means.device)
        x = (self.means * self.mean_scales(task)[:, None])[:, None, :] + z @ self.chol.transpose(1, 2)
        y = torch.arange(classes, device=x.device).repeat_interleave(n)
        order = torch.randperm(classes * n, device=x.device)
        return x.reshape(-1, d)[order], y[order]

    def alignment_loss(self, f: Tensor, y: Tensor, task: int) -> Tensor:
        """Cross-entropy of the aligned heads' logits, normalised by the mean per-task logit norm."""
        logits = F.linear(f, self.aligned_weight, self.aligned_bias)
        if self.cfg.logit_norm > 0:
            norms = torch.stack([logits[:, lo:hi].norm(dim=1) + 1e-7
                                 for lo, hi in self.info.task_ranges[:task + 1]], dim=1)
            logits = logits / (norms.mean(dim=1, keepdim=True) * self.cfg.logit_norm)
        return F.cross_entropy(logits, y)

    def post_task_phases(self, ctx) -> list[Phase]:
        if ctx.index == 0 or self.cfg.ca_epochs == 0:
            return []
        task, n = ctx.index, self.cfg.ca_samples
        for p in (self.aligned_weight, self.aligned_bias):
            p.requires_grad_(True)

        def batches(epoch: int):
            self._ca_losses.append([])
            x, y = self.sample_features(task)
            return [(x[i:i + n], y[i:i + n]) for i in range(0, len(y), n)]

        def loss(f: Tensor, y: Tensor) -> Tensor:
            value = self.alignment_loss(f, y, task)
            self._ca_losses[-1].append(value.detach())
            return value

        return [Phase("ca", [{"params": [self.aligned_weight, self.aligned_bias]}], self.cfg.ca_epochs, batches, loss,
                      train={"optimizer": "sgd", "lr": self.cfg.ca_lr, "momentum": 0.9,
                             "weight_decay": self.cfg.ca_weight_decay, "schedule": "cosine", "grad_clip": None})]

    def task_log(self) -> dict[str, Any]:
        log: dict[str, Any] = {"classes_with_statistics": int(self.means.shape[0])}
        epochs = [torch.stack(e).mean().item() for e in self._ca_losses if e]
        if epochs:  # after a resume within the alignment: the epochs run since
            log.update(ca_loss_first_epoch=epochs[0], ca_loss_last_epoch=epochs[-1], ca_epochs_logged=len(epochs))
        return log

    def task_state(self) -> dict[str, Any]:
        if self.cfg.backbone_lr_scale == 0:
            return super().task_state()
        return dict(self.state_dict())  # the backbone is fine-tuned: it is part of the solution
