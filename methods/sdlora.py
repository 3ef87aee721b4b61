"""SD-LoRA, SD-LoRA-RR and SD-LoRA-KD (Wu et al., ICLR 2025, arXiv 2501.13198).

Every task adds a low-rank component ``B_t A_t`` on the q and v projections of every block.
A component's *direction* is frozen after its task; its *magnitude* ``α_k`` (one scalar per
task, shared by all adapted projections) stays trainable. Layer output while learning task t::

    h' = (W0 + Σ_{k<t} α_k · B_k A_k / n_k + α_t · B_t A_t / c_t) x

Two modes (``method.mode``; docs/methods.md compares them):

``official`` (default; reproduces the released code and its logs): ``n_k = ‖A_k‖_F ‖B_k‖_F``,
    the current term is unnormalised (``c_t = 1``), magnitudes start at 0.8 and *all* are
    reset to 0.8 when a task starts, so the function jumps at each task boundary.
``paper`` (Eq. 4): ``n_k = c_k = ‖B_k A_k‖_F`` (from r×r Gram matrices, per step for the
    current term), magnitudes start at 1 and carry over; the function is continuous across
    task boundaries. ``B_t = 0`` at a task's start, where ``0/0`` is taken as 0 (the
    normaliser is clamped at 1e-6); the first update of ``B_t`` then has a large gradient,
    harmless under Adam (the paper's optimiser), not under plain SGD.

``sdlora-rr`` reduces the rank of new components (10/8/6 from 0-indexed tasks μ=4 and ν=8).
``sdlora-kd`` fits each new component onto the old directions after its task (least squares
over all adapted projections jointly, float64, from low-rank Grams) and, when the relative
residual is at most τ = 9e-4, absorbs it into the old magnitudes and drops it.

The paper's Table 4 ablations (``method.ablation``, sdlora only; the released code has none,
so each keeps the mode's normalisers and magnitude rule, a reading of ours):

``first-direction`` (W0 + α·D(A_1B_1)): task 1 trains one component as usual; afterwards its
    direction is frozen, no component is added and only its magnitude (and the head) trains.
``one-component`` (W0 + α·D(AB)): one component whose A, B and magnitude train on every
    task. (In official mode the trained component is unnormalised, as the released code
    treats the current component; mode=paper gives the decoupled α·BA/‖BA‖.)
``fixed-old`` (W0 + D_1 + … + α_t·D_t): each task adds a component; at the next task start it
    is merged into the weights with a fixed scale, so only the current direction and
    magnitude train, no old one is rescaled. The scale (``fixed_old_scale``): the magnitude
    it ended its task with (``learned``, default: "fix learned components without magnitude
    rescaling", the paper's text) or 1 (``one``, the table's literal formula).

The frozen components are one concatenated low-rank product per block (see
:class:`~clbench.adapters.QKVLowRank`); for evaluation everything is merged into the qkv
weights, so inference is a plain ViT forward. Components are frozen lazily, when the next
task starts, so evaluation after task t uses exactly the forward trained on task t.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import QKVLowRank
from clbench.adapters.lora import lowrank_inner, product_norm
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.heads import IncrementalLinear
from clbench.registry import register_method

from .base import CLMethod, StepOutput

PAPER_NORM_EPS = 1e-6  # paper mode: ‖B A‖_F is clamped here, so B = 0 gives a zero direction


ABLATIONS = ("none", "first-direction", "one-component", "fixed-old")


@dataclass
class SDLoRAConfig(MethodConfig):
    rank: int = option(10, "rank of every task's component (SD-LoRA-RR: of the tasks before mu)", ge=1)
    targets: str = option("qv", "adapted slices of the fused qkv (letters of 'qkv')")
    mode: Literal["official", "paper"] = option(
        "official", "official: the released code's normalisers and magnitude reset; paper: Eq. 4, magnitudes carried")
    init_magnitude: float | None = option(None, "initial magnitude of a component; None: 0.8 (official) or 1.0 (paper)",
                                          gt=0)
    reset_magnitudes: bool | None = option(
        None, "reset every magnitude when a task starts; None: yes in official mode, no in paper mode")
    ablation: Literal["none", "first-direction", "one-component", "fixed-old"] = option(
        "none", "the paper's Table 4 ablations (sdlora only): first-direction (task-1 direction frozen, only its "
                "magnitude trains later), one-component (one component trained on every task), fixed-old (old "
                "components fixed, no magnitude rescaling)")
    fixed_old_scale: Literal["learned", "one"] = option(
        "learned", "fixed-old: an old component keeps the magnitude it ended its task with, or 1 (Table 4's literal "
                   "formula)")


@dataclass
class SDLoRARRConfig(SDLoRAConfig):
    rank_mu: int = option(8, "rank of the components of tasks mu..nu-1", ge=1)
    rank_nu: int = option(6, "rank of the components of tasks nu, nu+1, ...", ge=1)
    mu: int = option(4, "0-indexed task where the rank first drops (the official code's convention)", ge=0)
    nu: int = option(8, "0-indexed task where the rank drops again (at least mu)", ge=0)


@dataclass
class SDLoRAKDConfig(SDLoRAConfig):
    tau: float = option(9e-4, "absorb when the relative (unsquared) fitting residual is at most this", ge=0)
    kd_scale_by_alpha_t: bool = option(True, "absorb alpha_t x delta (function-preserving); false: delta alone "
                                             "(the paper's text)")
    kd_per_projection: bool = option(False, "fit, test and absorb per block and projection (LibContinual reading)")


@register_method("sdlora")
class SDLoRA(CLMethod):
    """SD-LoRA: per-task LoRA directions frozen after their task, shared trainable magnitudes."""

    Config = SDLoRAConfig
    defaults = {"train.logit_mask": "current"}
    display_name = "SD-LoRA"
    weight_buffers = ("offsets",)  # magnitude offsets (SD-LoRA-KD per projection): weights, not statistics
    distill = False

    def __init__(self, cfg: SDLoRAConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        if cfg.rank < 1:
            raise ConfigError(f"method.rank must be at least 1, got {cfg.rank}.")
        if cfg.ablation != "none" and type(self) is not SDLoRA:
            raise ConfigError(f"method.ablation={cfg.ablation} is an ablation of sdlora (the paper's Table 4); "
                              f"run it with --methods sdlora, or set method.ablation=none.")
        self.official = cfg.mode == "official"
        self.init_magnitude = cfg.init_magnitude if cfg.init_magnitude is not None else (0.8 if self.official else 1.0)
        self.reset_magnitudes = cfg.reset_magnitudes if cfg.reset_magnitudes is not None else self.official
        self.freeze_backbone()
        self.adapter = QKVLowRank(backbone, targets=cfg.targets)
        self.adapter.scale_fn = self._scales
        self.head = IncrementalLinear(backbone.embed_dim)
        # One magnitude per component: the frozen ones in order, then the current one.
        self.magnitudes = nn.Parameter(torch.empty(0))
        # Component index of every frozen rank column (gathers magnitudes into column scales).
        self.register_buffer("column_component", torch.empty(0, dtype=torch.long))
        # Per-projection magnitude offsets (L, P, K_frozen): only SD-LoRA-KD per projection.
        self.register_buffer("offsets", None)
        self._log: dict[str, Any] = {}

    # ---------------------------------------------------------------- schedule
    def rank_for(self, task_index: int) -> int:
        """Rank of the component learnt on 0-indexed task ``task_index``."""
        return self.cfg.rank

    # ---------------------------------------------------------------- scales
    def _current_norm(self, A: Tensor, B: Tensor) -> Tensor:
        """Paper mode's ‖B A‖_F per (block, projection), float32, clamped away from 0."""
        with torch.autocast(A.device.type, enabled=False):
            return product_norm(A.float(), B.float()).clamp_min(PAPER_NORM_EPS)

    def _direction_norm(self, A: Tensor, B: Tensor) -> Tensor:
        """The normaliser folded into a component when it is frozen, (L, P)."""
        if not self.official:
            return self._current_norm(A, B)
        norm = A.flatten(2).norm(dim=-1) * B.flatten(2).norm(dim=-1)
        return torch.where(norm > 0, norm, torch.ones_like(norm))  # an all-zero component stays zero

    def _scales(self) -> tuple[Tensor | None, Tensor | None]:
        """Column scales for the adapter: magnitudes of frozen components, current term scale."""
        frozen = current = None
        if self.adapter.frozen_rank:
            frozen = self.magnitudes[self.column_component]
            if self.offsets is not None:
                frozen = frozen + self.offsets[..., self.column_component]
        if self.adapter.A is not None:
            current = self.magnitudes[-1]
            if not self.official:
                current = current / self._current_norm(self.adapter.A, self.adapter.B)
        return frozen, current

    # ---------------------------------------------------------------- hooks
    def before_task(self, ctx) -> None:
        ablation, ad = self.cfg.ablation, self.adapter
        keep = ablation == "one-component" and ad.A is not None  # the one component trains on
        if ad.A is not None and not keep:
            self._freeze_current()
        add = not keep and (ablation != "first-direction" or ctx.index == 0)
        device = ad.frozen_A.device
        rank = self.rank_for(ctx.index) if add else ad.rank
        kept = self.magnitudes.detach()[:len(ad.frozen_ranks) + keep]  # merged (fixed-old) ones are gone
        new = torch.full((int(add),), self.init_magnitude, device=device)
        if self.reset_magnitudes:
            values = torch.full((len(kept) + int(add),), self.init_magnitude, device=device)
            if self.offsets is not None:
                self.offsets.zero_()
        else:
            values = torch.cat([kept.to(device), new])
        self.magnitudes = nn.Parameter(values)
        if add:
            ad.add_branch(rank)
        self.head.grow(ctx.hi)
        self._log = {"mode": self.cfg.mode, "rank": rank}
        if ablation != "none":
            self._log["ablation"] = ablation

    @torch.no_grad()
    def _freeze_current(self) -> None:
        ad = self.adapter
        if self.cfg.ablation == "fixed-old":  # fixed for good: merged into the weights with a fixed scale
            scale = float(self.magnitudes[-1]) if self.cfg.fixed_old_scale == "learned" else 1.0
            ad.freeze_current(norm=self._direction_norm(ad.A, ad.B), merge=True, scale=scale)
            return
        ad.freeze_current(norm=self._direction_norm(ad.A, ad.B))
        component = torch.full((ad.frozen_ranks[-1],), len(ad.frozen_ranks) - 1, dtype=torch.long,
                               device=self.column_component.device)
        self.column_component = torch.cat([self.column_component, component])
        if self.offsets is not None:
            self.offsets = F.pad(self.offsets, (0, 1))

    def parameter_groups(self) -> list[dict[str, Any]]:
        params = [self.adapter.A, self.adapter.B, self.magnitudes, self.head.weight, self.head.bias]
        # (first-direction after task 1: no current factors, the one magnitude and the head)
        return [{"params": [p for p in params if p is not None and p.requires_grad]}]

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        return StepOutput(self.head(self.backbone(x)))

    def after_task(self, ctx) -> None:
        fit = self._fit()
        self._log["fit_residual"] = None if fit is None else float(self._solve(*(t.sum((0, 1)) for t in fit))[1])
        if self.distill:
            self._log["kd"] = self._distill(fit)

    def predict(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self.adapter.merged()

    def task_log(self) -> dict[str, Any]:
        """Rank of this task, every component's rank and learned magnitude (as evaluated)."""
        return {**self._log, "ranks": list(self.ranks), "n_components": len(self.ranks),
                "magnitudes": self.magnitudes.detach().cpu().tolist()}

    @property
    def ranks(self) -> list[int]:
        """Rank of every component (merged into the weights by fixed-old, frozen, then current)."""
        ad = self.adapter
        return ad.merged_ranks + ad.frozen_ranks + ([ad.rank] if ad.A is not None else [])

    # ---------------------------------------------------------------- least-squares fit
    @torch.no_grad()
    def _fit(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """Gram terms of fitting the current term onto the frozen directions, per (block, proj).

        Returns ``G`` (L, P, K, K): ⟨D_k, D_j⟩; ``b`` (L, P, K): ⟨D_k, C⟩; ``c2`` (L, P): ‖C‖²,
        where ``D_k`` are the stored (normalised) frozen directions and ``C`` the current
        term as the forward applies it (its magnitude and normaliser included). float64,
        from r×r Grams; no d×d matrix is formed.
        """
        ad = self.adapter
        if not ad.frozen_rank or ad.A is None:
            return None
        _, current_scale = ad._branch_scales()
        Af, Bf = ad.frozen_A.double(), ad.frozen_B.double()
        Ac = ad.A.double()
        Bc = ad.B.double() * current_scale.double()[..., None, :]
        E = F.one_hot(self.column_component, len(ad.frozen_ranks)).double()  # (R_frozen, K)
        G = E.t() @ lowrank_inner(Af, Bf, Af, Bf) @ E
        b = lowrank_inner(Af, Bf, Ac, Bc).sum(-1) @ E
        c2 = lowrank_inner(Ac, Bc, Ac, Bc).sum((-1, -2))
        return G, b, c2

    @staticmethod
    def _solve(G: Tensor, b: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
        """Least-squares coefficients β (…, K) and relative residual ‖C − Σ β_k D_k‖ / ‖C‖ (…)."""
        beta = (torch.linalg.pinv(G, hermitian=True) @ b[..., None])[..., 0]
        res2 = c2 - 2 * (b * beta).sum(-1) + (beta[..., None, :] @ G @ beta[..., :, None])[..., 0, 0]
        rel = res2.clamp_min(0).sqrt() / c2.sqrt()
        return beta, torch.where(c2 > 0, rel, torch.zeros_like(rel))

    @torch.no_grad()
    def _distill(self, fit: tuple[Tensor, Tensor, Tensor] | None) -> dict[str, Any]:
        """SD-LoRA-KD (Alg. 1 l. 9-12): absorb the new component into old magnitudes if it fits."""
        cfg = self.cfg
        if fit is None:
            return {"absorbed": False, "residual": None, "tau": cfg.tau}
        G, b, c2 = fit
        unit = 1.0 if cfg.kd_scale_by_alpha_t else 1.0 / float(self.magnitudes[-1])
        ad = self.adapter
        if not cfg.kd_per_projection:
            beta, rel = self._solve(G.sum((0, 1)), b.sum((0, 1)), c2.sum((0, 1)))
            absorbed = bool(rel <= cfg.tau)
            if absorbed:
                delta = (beta * unit).to(self.magnitudes)
                self.magnitudes = nn.Parameter(self.magnitudes.detach()[:-1] + delta)
                ad.drop_current()
            return {"absorbed": absorbed, "residual": float(rel), "tau": cfg.tau,
                    "delta": (beta * unit).tolist()}
        beta, rel = self._solve(G, b, c2)
        passed = rel <= cfg.tau  # (L, P)
        n_passed = int(passed.sum())
        if n_passed:
            if self.offsets is None:
                self.offsets = torch.zeros_like(beta, dtype=self.magnitudes.dtype)
            self.offsets += torch.where(passed[..., None], beta * unit, torch.zeros_like(beta)).to(self.offsets)
        absorbed = n_passed == passed.numel()
        if absorbed:
            self.magnitudes = nn.Parameter(self.magnitudes.detach()[:-1])
            ad.drop_current()
        elif n_passed:
            ad.A.data[passed] = 0
            ad.B.data[passed] = 0
        return {"absorbed": absorbed, "absorbed_projections": n_passed, "projections": passed.numel(),
                "residual": float(rel.max()), "residuals": rel.tolist(), "tau": cfg.tau}


@register_method("sdlora-rr")
class SDLoRARR(SDLoRA):
    """SD-LoRA-RR: SD-LoRA with smaller ranks for later tasks (10/8/6 from tasks 4 and 8)."""

    Config = SDLoRARRConfig
    display_name = "SD-LoRA-RR"

    def __init__(self, cfg: SDLoRARRConfig, backbone, info):
        if not 0 <= cfg.mu <= cfg.nu or min(cfg.rank_mu, cfg.rank_nu) < 1:
            raise ConfigError(f"sdlora-rr needs 0 <= mu <= nu and positive ranks, got mu={cfg.mu}, nu={cfg.nu}, "
                              f"ranks {cfg.rank}/{cfg.rank_mu}/{cfg.rank_nu}.")
        super().__init__(cfg, backbone, info)

    def rank_for(self, task_index: int) -> int:
        cfg = self.cfg
        return cfg.rank if task_index < cfg.mu else cfg.rank_mu if task_index < cfg.nu else cfg.rank_nu


@register_method("sdlora-kd")
class SDLoRAKD(SDLoRA):
    """SD-LoRA-KD: a new component that old directions fit within τ is absorbed and dropped."""

    Config = SDLoRAKDConfig
    display_name = "SD-LoRA-KD"
    distill = True
