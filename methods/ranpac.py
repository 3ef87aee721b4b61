"""``ranpac``: random projections and a decorrelated ridge head on first-session-adapted
features (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual
Learning", NeurIPS 2023; official code ``RanPAC/RanPAC``).

* Task 0 adapts the backbone with a PETL module (see :mod:`clbench.methods.first_session`;
  official: AdaptFormer adapters for CIFAR/CUB, SSF for ImageNet-R/-A and VTAB), then it is
  frozen for good.
* After task 0 a random matrix W ∈ R^{d×M}, i.i.d. N(0, 1), unscaled, is drawn once (M =
  ``projection``, 10000). Every task's training data (test transforms) is projected, h =
  ReLU(f W), and only the M×M Gram matrix G = Σ hᵀh and the M×K class-feature matrix
  Q = Σ hᵀy (one-hot y) are accumulated, in float64 on the compute device, summed over
  ranks; no feature is stored.
* The head is the ridge solution W_o = (G + λI)⁻¹ Q on all data seen so far (a linear solve,
  not an inverse). λ is chosen per task as the reference does: candidates 10^k,
  k = −8…8; the current task's data is split at random 80/20; the ridge is fitted on the 80%
  and λ* minimises the mean squared error of its outputs on the 20% (all K outputs). Here the
  split is a random mask drawn with the run's generator (the reference's is positional on a
  shuffled loader), and the validation error is computed from the validation part's own Gram
  and class-feature matrices (``tr(Wᵀ G_v W) − 2 tr(Wᵀ Q_v) + N_v``), so the search too
  stores no features; one eigendecomposition of the fitting Gram serves all candidates.
* ``head``: ``linear`` (official) scores h·W_o,c; ``cosine`` (LAMDA-PILOT, which keeps its
  ``CosineLinear``) scores cos(h, W_o,c), which drops the per-class norms of W_o and changes
  the decision rule. ``projection=0`` is the reference's "no RP" ablation: ridge on the
  features themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from clbench.config import option
from clbench.errors import ConfigError
from clbench.registry import register_method

from .first_session import FirstSessionConfig, FirstSessionMethod

SGD_COSINE = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 5e-4,
              "train.schedule": "cosine"}


@dataclass
class RanPACConfig(FirstSessionConfig):
    projection: int = option(10000, "random projection size M (0: ridge on the features, no projection)", ge=0)
    head: Literal["linear", "cosine"] = option(
        "linear", "linear: h·W (official RanPAC); cosine: cos(h, W_c), LAMDA-PILOT's head")
    lambda_min_exp: int = option(-8, "smallest ridge candidate: 10^this", ge=-30, le=30)
    lambda_max_exp: int = option(8, "largest ridge candidate: 10^this", ge=-30, le=30)
    lambda_fit: float = option(0.8, "share of each task's training data that fits the ridge in the λ search "
                                    "(the rest scores it)", gt=0, lt=1)


def ridge_scores(e: Tensor, v: Tensor, q_fit: Tensor, g_val: Tensor, q_val: Tensor, n_val: float,
                 lambdas: list[float]) -> list[float]:
    """Validation sum of squared errors ‖H_v W_λ − Y_v‖² of W_λ = (G_fit + λI)⁻¹ Q_fit for
    each λ, from G_fit = V diag(e) Vᵀ and the validation part's G_v = H_vᵀH_v, Q_v = H_vᵀY_v
    and N_v = ‖Y_v‖² (one-hot rows)."""
    a, b, c = v.t() @ q_fit, v.t() @ g_val @ v, v.t() @ q_val
    e = e.clamp(min=0)  # G_fit is PSD; round-off may leave tiny negative eigenvalues
    out = []
    for lam in lambdas:
        da = a / (e + lam)[:, None]  # Vᵀ W_λ
        out.append(float((da * (b @ da)).sum() - 2 * (da * c).sum() + n_val))
    return out


@register_method("ranpac")
class RanPAC(FirstSessionMethod):
    """First-session adaptation, then a ridge head on ReLU random projections of the features,
    solved from accumulated Gram and class-feature matrices."""
    display_name = "RanPAC"

    Config = RanPACConfig
    # official args/*_publish.csv (row 7): 20 epochs, batch 48, lr 0.01, wd 5e-4, SGD, cosine to 0
    defaults = {**SGD_COSINE, "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48}

    def __init__(self, cfg: RanPACConfig, backbone, info):
        if cfg.lambda_min_exp > cfg.lambda_max_exp:
            raise ConfigError(f"ranpac.lambda_min_exp ({cfg.lambda_min_exp}) is above ranpac.lambda_max_exp "
                              f"({cfg.lambda_max_exp}); set it at most equal (one candidate λ).")
        super().__init__(cfg, backbone, info)
        d = backbone.embed_dim
        self.register_buffer("w_rand", torch.empty(d, 0))
        self.register_buffer("gram", torch.empty(0, 0, dtype=torch.float64))
        self.register_buffer("targets", torch.empty(0, info.n_classes, dtype=torch.float64))
        self.register_buffer("weight", torch.empty(0, 0))  # (seen classes, width): W_oᵀ
        self._log: dict[str, Any] = {}

    @property
    def width(self) -> int:
        return self.cfg.projection or self.backbone.embed_dim

    def lambdas(self) -> list[float]:
        return [10.0 ** k for k in range(self.cfg.lambda_min_exp, self.cfg.lambda_max_exp + 1)]

    def project(self, f: Tensor) -> Tensor:
        """h = ReLU(f W) in the dtype of ``f`` (f itself when there is no projection)."""
        return F.relu(f @ self.w_rand.to(f.dtype)) if self.cfg.projection else f

    def setup_projection(self, device: torch.device) -> None:
        """Draws W (from torch's global generator, on the CPU: the same on every rank and
        device) and zeroes G and Q, once, after the first session."""
        d, m = self.backbone.embed_dim, self.width
        self.w_rand = torch.randn(d, m).to(device) if self.cfg.projection else torch.empty(d, 0, device=device)
        self.gram = torch.zeros(m, m, dtype=torch.float64, device=device)
        self.targets = torch.zeros(m, self.info.n_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def after_task(self, ctx) -> None:
        super().after_task(ctx)
        if self.gram.shape[0] != self.width:
            self.setup_projection(ctx.device)
        m, n = self.width, ctx.hi - ctx.lo
        g = torch.zeros(2, m, m, dtype=torch.float64, device=ctx.device)  # fitting, validation part
        q = torch.zeros(2, m, n, dtype=torch.float64, device=ctx.device)
        counts = torch.zeros(2, dtype=torch.float64, device=ctx.device)
        split = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))  # the same on every rank
        for f, y in self.feature_batches(ctx, self.adapted_features, "random-projection statistics"):
            h = self.project(f.double())
            onehot = F.one_hot(y - ctx.lo, n).double()
            val = (torch.rand(len(y), generator=split) >= self.cfg.lambda_fit).to(ctx.device)
            for part, rows in enumerate((~val, val)):
                hp = h[rows]
                g[part] += hp.t() @ hp
                q[part] += hp.t() @ onehot[rows]
                counts[part] += rows.sum()
        g, q, counts = ctx.all_reduce(g), ctx.all_reduce(q), ctx.all_reduce(counts)
        self.gram += g[0] + g[1]
        self.targets[:, ctx.lo:ctx.hi] += q[0] + q[1]
        lambdas = self.lambdas()
        e, v = torch.linalg.eigh(g[0])
        errors = ridge_scores(e, v, q[0], g[1], q[1], float(counts[1]), lambdas)
        lam = lambdas[min(range(len(lambdas)), key=errors.__getitem__)] if counts[1] > 0 else lambdas[0]
        self.weight = self.solve(lam, ctx.hi).float()
        mse = [err / max(float(counts[1]) * self.info.n_classes, 1.0) for err in errors]
        self._log = {"lambda": lam, "projection": self.cfg.projection, "width": m, "head": self.cfg.head,
                     "lambda_fit_samples": int(counts[0]), "lambda_val_samples": int(counts[1]),
                     "lambda_val_mse": dict(zip((f"{x:g}" for x in lambdas), mse))}

    def solve(self, lam: float, seen: int) -> Tensor:
        """W_oᵀ = ((G + λI)⁻¹ Q)ᵀ over the first ``seen`` classes, float64."""
        eye = torch.eye(self.gram.shape[0], dtype=self.gram.dtype, device=self.gram.device)
        return torch.linalg.solve(self.gram + lam * eye, self.targets[:, :seen]).t()

    def predict(self, x: Tensor) -> Tensor:
        f = self.adapted_features(x)
        with torch.autocast(f.device.type, enabled=False):  # projections and head in float32
            h = self.project(f.float())
            if self.cfg.head == "cosine":
                return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()
            return h @ self.weight.t()

    def task_log(self) -> dict[str, Any]:
        return {**super().task_log(), **self._log}

    def task_state(self) -> dict[str, Any]:
        """Predictions need the adapted module, W and W_o; G and Q (M×M and M×K, float64)
        only continue the stream, so the per-task state leaves them empty (resume
        checkpoints keep them)."""
        state = super().task_state()
        state["gram"], state["targets"] = self.gram.new_empty(0, 0), self.targets.new_empty(0, self.info.n_classes)
        return state
