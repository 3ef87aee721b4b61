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
  ranks; no projected feature is kept.
* The head is the ridge solution W_o = (G + λI)⁻¹ Q on all data seen so far (a linear solve,
  not an inverse). λ is chosen per task as the reference does: candidates 10^k,
  k = −8…8; the current task's data is split at random 80/20; the ridge is fitted on the 80%
  and λ* minimises the mean squared error of its outputs on the 20% (all K outputs). Here the
  split is a random mask drawn with the run's generator (the reference's is positional on a
  shuffled loader). The search keeps the current task's backbone features (N×d, freed after
  the task; the reference keeps the projected N×M ones) and needs one eigendecomposition for
  all candidates: of the N_fit×N_fit kernel H_f H_fᵀ when the fitting part has fewer samples
  than M (the usual case: W_λ = H_fᵀ(H_f H_fᵀ + λI)⁻¹Y_f, the same solution), else of the M×M
  Gram matrix. Under DDP the features are gathered, so every rank scores the same λ.
* ``head``: ``linear`` (official) scores h·W_o,c; ``cosine`` (LAMDA-PILOT, which keeps its
  ``CosineLinear``) scores cos(h, W_o,c), which drops the per-class norms of W_o and changes
  the decision rule. ``projection=0`` is the reference's "no RP" ablation: ridge on the
  features themselves.
"""

from __future__ import annotations

from collections.abc import Callable
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


def ridge_errors(project: Callable[..., Tensor], f_fit: Tensor, y_fit: Tensor, f_val: Tensor,
                 y_val: Tensor, lambdas: list[float], chunk: int = 2048) -> list[float]:
    """Validation sums of squared errors ‖H_v W_λ − Y_v‖² of the ridge fits
    W_λ = (H_fᵀH_f + λI)⁻¹ H_fᵀY_f, one per λ, where H = ``project(f)`` (M wide) and Y are
    one-hot rows. One eigendecomposition serves every λ: of the kernel H_f H_fᵀ when the
    fitting part has fewer rows than M (W_λ = H_fᵀ U diag(1/(s+λ)) Uᵀ Y_f), else of the Gram
    matrix H_fᵀH_f. H is built ``chunk`` columns (kernel) or rows (Gram) at a time."""
    width = project(f_fit[:1]).shape[1]
    if len(f_fit) < width:
        kernel = f_fit.new_zeros(len(f_fit), len(f_fit))
        cross = f_fit.new_zeros(len(f_val), len(f_fit))
        for cols in torch.arange(width).split(chunk):
            h_fit, h_val = project(f_fit, cols), project(f_val, cols)
            kernel += h_fit @ h_fit.t()
            cross += h_val @ h_fit.t()
        s, u = torch.linalg.eigh(kernel)
        left, right = cross @ u, u.t() @ y_fit
    else:
        gram, q_fit = f_fit.new_zeros(width, width), f_fit.new_zeros(width, y_fit.shape[1])
        for rows in torch.arange(len(f_fit)).split(chunk):
            h = project(f_fit[rows])
            gram += h.t() @ h
            q_fit += h.t() @ y_fit[rows]
        s, u = torch.linalg.eigh(gram)
        left = torch.cat([project(f_val[rows]) @ u for rows in torch.arange(len(f_val)).split(chunk)])
        right = u.t() @ q_fit
    s = s.clamp(min=0)  # PSD; round-off may leave tiny negative eigenvalues
    return [float(((left @ (right / (s + lam)[:, None]) - y_val) ** 2).sum()) for lam in lambdas]


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

    def project(self, f: Tensor, columns: Tensor | None = None) -> Tensor:
        """h = ReLU(f W) in the dtype of ``f`` (f itself when there is no projection); only the
        given ``columns`` of h when named."""
        if not self.cfg.projection:
            return f if columns is None else f[:, columns.to(f.device)]
        w = self.w_rand if columns is None else self.w_rand[:, columns.to(self.w_rand.device)]
        return F.relu(f @ w.to(f.dtype))

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
        n = ctx.hi - ctx.lo
        split = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))  # the same on every rank
        gram, targets = torch.zeros_like(self.gram), self.targets.new_zeros(self.width, n)
        feats, labels, held_out = [], [], []
        for f, y in self.feature_batches(ctx, self.adapted_features, "random-projection statistics"):
            f = f.double()
            h, onehot = self.project(f), F.one_hot(y - ctx.lo, n).double()
            gram += h.t() @ h
            targets += h.t() @ onehot
            feats.append(f)
            labels.append(onehot)
            held_out.append((torch.rand(len(y), generator=split) >= self.cfg.lambda_fit).double().to(ctx.device))
        self.gram += ctx.all_reduce(gram)
        self.targets[:, ctx.lo:ctx.hi] += ctx.all_reduce(targets)
        f, y, val = (ctx.all_gather(torch.cat(parts)) for parts in (feats, labels, held_out))
        val = val.bool()
        lambdas = self.lambdas()
        n_fit, n_val = int((~val).sum()), int(val.sum())
        errors = ridge_errors(self.project, f[~val], y[~val], f[val], y[val], lambdas) if n_val and n_fit else []
        lam = lambdas[min(range(len(lambdas)), key=errors.__getitem__)] if errors else lambdas[0]
        self.weight = self.solve(lam, ctx.hi).float()
        mse = [err / max(n_val * self.info.n_classes, 1) for err in errors]
        self._log = {"lambda": lam, "projection": self.cfg.projection, "width": self.width, "head": self.cfg.head,
                     "lambda_fit_samples": n_fit, "lambda_val_samples": n_val,
                     "lambda_val_mse": dict(zip((f"{x:g}" for x in lambdas), mse))}

    def solve(self, lam: float, seen: int) -> Tensor:
        """W_oᵀ = ((G + λI)⁻¹ Q)ᵀ over the first ``seen`` classes, float64: by Cholesky
        (G + λI is symmetric positive definite; half the cost of LU), by LU where round-off
        leaves it numerically indefinite (a tiny λ on a rank-deficient G)."""
        a = self.gram + lam * torch.eye(self.gram.shape[0], dtype=self.gram.dtype, device=self.gram.device)
        b = self.targets[:, :seen]
        factor, info = torch.linalg.cholesky_ex(a)
        return (torch.cholesky_solve(b, factor) if int(info) == 0 else torch.linalg.solve(a, b)).t()

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
