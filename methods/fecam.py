"""``fecam``: Mahalanobis distance to class prototypes with shrunk, normalised per-class
covariances (Goswami et al., "FeCAM: Exploiting the Heterogeneity of Class Distributions in
Exemplar-Free Continual Learning", NeurIPS 2023).

Training-free: after each task one feature pass gives each new class its mean μ_c and
covariance Σ_c; old classes are never revisited. A test feature goes to the class of least
``(x − μ_c)ᵀ S_c⁺ (x − μ_c)``. Two readings of the statistics (``fecam.mode``):

* ``official`` (the paper's ViT scripts, ``dipamgoswami/FeCAM`` ``FeCAM_vit_*.py``): features
  L2-normalised before the statistics; shrinkage ``Σ + α1·v̄_diag·I + α2·v̄_off·(11ᵀ − I)``
  with v̄_diag the mean variance and v̄_off the mean non-zero off-diagonal covariance; then
  the correlation normalisation ``S_ij = Σ'_ij / √(Σ'_ii Σ'_jj)``.
* ``pilot`` (LAMDA-PILOT ``models/fecam.py``): statistics of the raw features, ``Σ + α·I``
  (α = 100), then ``torch.corrcoef`` of that matrix (Pearson correlations between its rows,
  not a correlation normalisation of Σ: with α this large the result is close to a scaled
  identity and FeCAM behaves like nearest-mean on normalised features); test features and
  means are L2-normalised in the distance.

The pseudo-inverse of each S_c is computed once (float64) when the class arrives and kept.

The official method uses the frozen pretrained backbone (``fecam.petl=none``); PILOT first
adapts it on task 0 with AdaptFormer adapters (``fecam.petl=adapter``, its presets), see
:mod:`clbench.methods.first_session`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from clbench.config import option
from clbench.registry import register_method

from .class_stats import class_moments, mahalanobis
from .first_session import FirstSessionConfig, FirstSessionMethod, PETLKind

# PILOT's first-session optimiser (exps/fecam.json; unused without a first-session module)
SGD_COSINE = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 5e-4,
              "train.schedule": "cosine"}


@dataclass
class FeCAMConfig(FirstSessionConfig):
    petl: PETLKind = option("none", "module adapted on task 0 (none: the official frozen backbone; PILOT: adapter)")
    mode: Literal["official", "pilot"] = option(
        "official", "official: normalised features, FeCAM shrinkage, correlation normalisation; pilot: PILOT's "
                    "raw-feature statistics, Σ+α·I and corrcoef (close to nearest-mean)")
    alpha1: float = option(10.0, "official: multiple of the mean variance added to the diagonal", ge=0)
    alpha2: float = option(10.0, "official: multiple of the mean off-diagonal covariance added off the diagonal",
                           ge=0)
    pilot_alpha: float = option(100.0, "pilot: constant added to the diagonal before corrcoef", ge=0)


def shrink(cov: Tensor, alpha1: float, alpha2: float) -> tuple[Tensor, Tensor, Tensor]:
    """FeCAM's covariance shrinkage of a batch (C, d, d): returns the shrunk matrices and, per
    class, the mean variance v̄_diag and the mean non-zero off-diagonal entry v̄_off."""
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    diag_mean = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)
    off = cov * (1 - eye)
    nonzero = (off != 0).sum((-2, -1)).clamp(min=1)
    off_mean = off.sum((-2, -1)) / nonzero
    shrunk = cov + alpha1 * diag_mean[:, None, None] * eye + alpha2 * off_mean[:, None, None] * (1 - eye)
    return shrunk, diag_mean, off_mean


def correlation(cov: Tensor) -> Tensor:
    """``Σ_ij / √(Σ_ii Σ_jj)`` per matrix of a batch (C, d, d)."""
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    return cov / (sd[:, :, None] * sd[:, None, :])


@register_method("fecam")
class FeCAM(FirstSessionMethod):
    """Per-class means and shrunk, normalised covariances; Mahalanobis nearest class (training-free
    unless a first-session module is chosen)."""
    display_name = "FeCAM"

    Config = FeCAMConfig
    defaults = {**SGD_COSINE, "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48}

    def __init__(self, cfg: FeCAMConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        d = backbone.embed_dim
        self.register_buffer("means", torch.empty(0, d))
        self.register_buffer("precisions", torch.empty(0, d, d))
        self._log: dict[str, Any] = {}

    def features(self, x: Tensor) -> Tensor:
        return self.adapted_features(x)

    def statistics_features(self, x: Tensor) -> Tensor:
        """What the statistics are taken of: normalised features (official) or raw (pilot)."""
        f = self.features(x).float()
        return F.normalize(f, dim=-1) if self.cfg.mode == "official" else f

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        super().after_task(ctx)
        cfg = self.cfg
        with self.frozen_features():
            stats = class_moments(self.statistics_features, ctx, self.backbone.embed_dim)
        if cfg.mode == "official":
            shrunk, diag_mean, off_mean = shrink(stats.covs, cfg.alpha1, cfg.alpha2)
            matrices, means = correlation(shrunk), stats.means
            self._log = {"shrink_diag": (cfg.alpha1 * diag_mean).tolist(), "shrink_off": (cfg.alpha2 * off_mean).tolist()}
        else:
            eye = torch.eye(stats.covs.shape[-1], dtype=stats.covs.dtype, device=stats.covs.device)
            matrices = torch.stack([torch.corrcoef(c + cfg.pilot_alpha * eye) for c in stats.covs])
            means = F.normalize(stats.means, dim=-1)
            self._log = {"shrink_diag": [cfg.pilot_alpha] * len(stats.covs)}
        precisions = torch.linalg.pinv(matrices, hermitian=True)
        self._log.update(mode=cfg.mode, classes=[ctx.lo, ctx.hi], samples=stats.counts.long().tolist())
        self.means = torch.cat([self.means, means.to(self.means)])
        self.precisions = torch.cat([self.precisions, precisions.to(self.precisions)])

    def predict(self, x: Tensor) -> Tensor:
        f = self.features(x)
        with torch.autocast(f.device.type, enabled=False):  # quadratic forms in float32, not bf16
            return -mahalanobis(F.normalize(f.float(), dim=-1), self.means, self.precisions)

    def task_log(self) -> dict[str, Any]:
        return {**super().task_log(), **self._log}
