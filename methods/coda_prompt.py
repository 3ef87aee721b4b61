"""``coda-prompt``: CODA-Prompt (Smith et al., CVPR 2023; github.com/GT-RIPL/CODA-Prompt).

In each prompted block (``layers``, 0–4) a set of components: prompts P_m (L×D), keys K_m and
attention vectors A_m (D). Every sample builds its own prompt as p = Σ_m α_m P_m with
α_m = cos(q ⊙ A_m, K_m) (no softmax, no top-k), q the frozen-backbone query; the first L/2
rows of p are the key prefix of the block and the last L/2 the value prefix. Each task adds a
block of ``pool_size // n_tasks`` components, initialised by Gram–Schmidt as random unit
vectors orthogonal to each other and to all earlier components (P flattened, K and A), and
trains only those (plus the head); earlier components are frozen parameters (no gradient).
Optional orthogonality penalty μ·Σ_layers mean((T Tᵀ − I)²) over T ∈ {K, A, P} in use; the
current official code uses μ = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import KVPrefixes
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.registry import register_method

from .base import StepOutput
from .prompt_base import PromptMethod


@dataclass
class CodaPromptConfig(MethodConfig):
    pool_size: int = option(100, "components per layer over all tasks; each task gets pool_size // n_tasks", ge=1)
    prompt_length: int = option(8, "L (even): L/2 key-prefix and L/2 value-prefix tokens", ge=2)
    layers: tuple[int, ...] = option((0, 1, 2, 3, 4), "blocks with prompts", ge=0)
    ortho_mu: float = option(0.0, "weight of the orthogonality penalty (current official code: 0)", ge=0)


def orthonormal_rows(old: Tensor, n: int) -> Tensor:
    """``n`` random unit rows orthogonal to each other and to every row of ``old`` (m, d).

    Gram–Schmidt of Gaussian vectors against the span of ``old`` (computed via QR in float64
    on the CPU, so it is exact even when old rows are not orthonormal and reproducible under
    the run's seed)."""
    m, d = old.shape
    v = torch.randn(n, d, dtype=torch.float64)
    if m:
        basis = torch.linalg.qr(old.detach().to("cpu", torch.float64).t()).Q  # (d, m)
        for _ in range(2):  # twice is enough for orthogonality to machine precision
            v = v - (v @ basis) @ basis.t()
    return torch.linalg.qr(v.t()).Q.t().to(old.dtype)


@register_method("coda-prompt")
class CodaPrompt(PromptMethod):
    """Attention-weighted composition of per-task component blocks, as per-sample prefixes."""

    Config = CodaPromptConfig
    display_name = "CODA-Prompt"
    defaults = {**PromptMethod.defaults, "train.lr": 0.001, "train.schedule": "coda-cosine"}

    def __init__(self, cfg: CodaPromptConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        d, n_layers = backbone.embed_dim, len(cfg.layers)
        self.per_task = cfg.pool_size // info.n_tasks
        if self.per_task < 1:
            raise ConfigError(f"coda-prompt.pool_size ({cfg.pool_size}) must be at least the number of tasks "
                              f"({info.n_tasks}): each task adds pool_size // n_tasks components.")
        if self.per_task * info.n_tasks > d:
            raise ConfigError(f"coda-prompt needs at most {d} components per layer (the embedding width) to keep "
                              f"keys orthogonal; {self.per_task} x {info.n_tasks} tasks is more. Lower "
                              f"coda-prompt.pool_size to {d} or less.")
        if cfg.prompt_length % 2 or cfg.prompt_length < 2:
            raise ConfigError(f"coda-prompt.prompt_length must be even (key and value halves), got {cfg.prompt_length}.")
        bad = [b for b in cfg.layers if not 0 <= b < backbone.depth]
        if bad:
            raise ConfigError(f"coda-prompt.layers has blocks {bad} outside 0..{backbone.depth - 1}.")
        frozen = lambda *shape: nn.Parameter(torch.empty(n_layers, 0, *shape), requires_grad=False)  # noqa: E731
        self.old_p, self.old_k, self.old_a = frozen(cfg.prompt_length, d), frozen(d), frozen(d)
        for name in ("p", "k", "a"):  # the current task's block (None between tasks)
            self.register_parameter(name, None)
        self.prefix_hooks = KVPrefixes(backbone, blocks=cfg.layers)

    # ---------------------------------------------------------------- task structure
    def before_task(self, ctx) -> None:
        super().before_task(ctx)
        n, (n_layers, _, length, d) = self.per_task, self.old_p.shape
        new = {"p": [], "k": [], "a": []}
        for i in range(n_layers):
            new["p"].append(orthonormal_rows(self.old_p[i].flatten(1), n).view(n, length, d))
            new["k"].append(orthonormal_rows(self.old_k[i], n))
            new["a"].append(orthonormal_rows(self.old_a[i], n))
        for name, rows in new.items():
            setattr(self, name, nn.Parameter(torch.stack(rows).to(self.old_p.device)))

    def after_task(self, ctx) -> None:
        for name in ("p", "k", "a"):
            old = getattr(self, f"old_{name}")
            merged = torch.cat([old.detach(), getattr(self, name).detach()], dim=1)
            setattr(self, f"old_{name}", nn.Parameter(merged, requires_grad=False))
            self.register_parameter(name, None)

    def blocks(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(K, A, P) of the components in use: the frozen ones, then the current block."""
        parts = [(self.old_k, self.old_a, self.old_p)]
        if self.k is not None:
            parts.append((self.k, self.a, self.p))
        return [part for part in parts if part[0].shape[1] > 0]

    # ---------------------------------------------------------------- forward
    @staticmethod
    def weights(q: Tensor, keys: Tensor, attention: Tensor) -> Tensor:
        """α (layers, B, m) = cos(q ⊙ A_m, K_m), without materialising q ⊙ A (B×m×D)."""
        num = torch.einsum("bd,lmd->lbm", q, attention * F.normalize(keys, dim=-1))
        den = torch.einsum("bd,lmd->lbm", q * q, attention * attention).clamp_min(1e-24).sqrt()
        return num / den

    def prefixes(self, q: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """Per-sample ``{block: (keys, values)}`` composed from all components in use."""
        parts = self.blocks()
        if not parts:
            return {}
        with torch.autocast(q.device.type, enabled=False):
            q = q.float()
            prompt = sum(torch.einsum("lbm,lmkd->lbkd", self.weights(q, k, a), p) for k, a, p in parts)
        half = self.cfg.prompt_length // 2
        return {b: (prompt[i, :, :half], prompt[i, :, half:]) for i, b in enumerate(self.cfg.layers)}

    def features(self, x: Tensor) -> Tensor:
        with self.prefix_hooks.using(self.prefixes(self.query(x))):
            return self.backbone(x)

    def ortho_penalty(self) -> Tensor:
        """Σ_layers mean((T Tᵀ − I)²) for T ∈ {K, A, P flattened} over the components in use."""
        total = self.p.new_zeros(())
        for name in ("k", "a", "p"):
            rows = torch.cat([getattr(self, f"old_{name}"), getattr(self, name)], dim=1).flatten(2)
            gram = rows @ rows.transpose(1, 2)
            eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
            total = total + ((gram - eye) ** 2).mean(dim=(1, 2)).sum()
        return total

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        logits = self.head(self.features(x))
        if self.cfg.ortho_mu > 0:
            penalty = self.ortho_penalty()
            return StepOutput(logits, loss=self.cfg.ortho_mu * penalty, logs={"ortho": penalty.detach()})
        return StepOutput(logits)

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def task_log(self) -> dict:
        return {"components_per_layer": self.old_k.shape[1] + (self.k.shape[1] if self.k is not None else 0)}
