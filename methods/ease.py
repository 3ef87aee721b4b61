"""``ease``: Expandable Subspace Ensemble (Zhou et al., CVPR 2024; official code sun-hailong/CVPR24-Ease).

Every task trains a fresh set of AdaptFormer adapters (rank 64, scale 0.1, dropout 0.1, one per
block) on a frozen ViT, with a fresh cosine "proxy" head over the task's classes (σ learnable),
by cross-entropy over the task's classes only. Old sets are frozen and never used in training.

Each set spans a *subspace*: the [CLS] feature of a full backbone pass with that set. A class
has a prototype (mean feature of its training images, test transforms) in every subspace that
existed when its task arrived; the blocks of old classes in later subspaces are completed by
semantic similarity (the official ``solve_sim_reset``, recomputed every task): for an old task
i and a later subspace j, with ``A`` (``B``) the prototypes in subspace i (j) of the classes of
tasks ≥ j and ``Â`` the task-i prototypes in subspace i,

    W[task-i classes, subspace j] = softmax_rows(cos(Â, A)) · B      (no temperature)

Prediction (the official ``forward_reweight``): for a class c of task i at task t,
``z_c = Σ_j w_ij cos(φ_j(x), W_cj)``, each subspace block normalised on its own, with
``w_ii = 1`` and ``w_ij = α / t`` otherwise. Options the paper leaves out follow the official
code: ``use_init_ptm`` prepends the pretrained feature as subspace 0 (weight ``beta``);
``adapter_limit`` trains only the first n sets (the code's ``moni_adam``/``adapter_num``,
together with use_init_ptm, α = β = 1 and use_reweight false); ``use_reweight`` false scores
one cosine of the jointly normalised concatenation.

Evaluation needs the features of every subspace: the sets run as one fused computation on the
batch repeated S times (:class:`~clbench.adapters.AdapterSet`), in ``ceil(S·B / max_pass_images)``
backbone passes; the FLOPs are those of S ViT forwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from clbench.adapters import AdapterSet
from clbench.adapters.adapter_sets import CURRENT, PLAIN
from clbench.config import MethodConfig, option
from clbench.heads import CosineLinear
from clbench.prompting import SelectionLog
from clbench.registry import register_method

from .base import CLMethod, StepOutput


@dataclass
class EASEConfig(MethodConfig):
    rank: int = option(64, "bottleneck width of every adapter ('ffn_num')", ge=1)
    scale: float = option(0.1, "fixed scale of the adapter output")
    dropout: float = option(0.1, "dropout on the bottleneck activation (training only)", ge=0, lt=1)
    alpha: float = option(0.1, "weight of the other subspaces' cosines, divided by the task index", ge=0)
    beta: float = option(0.0, "weight of the pretrained subspace's cosine (use_init_ptm)", ge=0)
    use_init_ptm: bool = option(False, "prepend the pretrained feature as an extra subspace (official option)")
    use_reweight: bool = option(True, "per-subspace cosines weighted by alpha; false: one joint cosine")
    recalc_sim: bool = option(True, "recompute every complement each task; false: only the newest subspace")
    adapter_limit: int = option(0, "train adapter sets for the first n tasks only (official moni_adam); 0: all",
                                ge=0)
    max_pass_images: int = option(2048, "images per fused backbone pass (subspaces x batch); 0: one pass", ge=0)


@register_method("ease")
class EASE(CLMethod):
    """EASE: one adapter set per task, concatenated subspace features, prototype complement."""

    display_name = "EASE"

    Config = EASEConfig
    defaults = {"train.logit_mask": "current", "train.optimizer": "sgd", "train.momentum": 0.9,
                "train.schedule": "cosine", "train.weight_decay": 5e-4}

    def __init__(self, cfg: EASEConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.adapters = AdapterSet(backbone, rank=cfg.rank, scale=cfg.scale, dropout=cfg.dropout)
        d = backbone.embed_dim
        self.proxy = CosineLinear(d, 1)
        # Prototype table (classes seen, subspaces, d); subspace order: [PTM], set 0, set 1, ...
        self.register_buffer("prototypes", torch.zeros(0, 0, d))
        task_of_class = torch.empty(info.n_classes, dtype=torch.long)
        for t, (lo, hi) in enumerate(info.task_ranges):
            task_of_class[lo:hi] = t
        self.register_buffer("task_of_class", task_of_class, persistent=False)
        self.task = -1
        self._log: dict[str, Any] = {}
        self.task_choice = SelectionLog(info.n_tasks, info.n_tasks)  # task of the predicted class (evaluation)

    # ---------------------------------------------------------------- structure
    @property
    def offset(self) -> int:
        """Index of set 0's subspace (1 when the pretrained feature comes first)."""
        return int(self.cfg.use_init_ptm)

    def trains_task(self, task: int) -> bool:
        return self.cfg.adapter_limit == 0 or task < self.cfg.adapter_limit

    def subspace_ids(self) -> list[int | None]:
        """Adapter-set ids of the subspaces (PLAIN for the pretrained one)."""
        return ([PLAIN] if self.cfg.use_init_ptm else []) + list(range(self.adapters.n_frozen))

    def get_extra_state(self) -> dict:
        return {"task": self.task}

    def set_extra_state(self, state: dict) -> None:
        self.task = state["task"]

    # ---------------------------------------------------------------- training
    def before_task(self, ctx) -> None:
        self.task = ctx.index
        if self.trains_task(ctx.index):
            if not self.adapters.has_current:
                self.adapters.add_current()
            self.proxy = CosineLinear(self.backbone.embed_dim, ctx.hi - ctx.lo).to(ctx.device)

    def parameter_groups(self) -> list[dict[str, Any]]:
        if not self.adapters.has_current:
            return []
        return [{"params": [*self.adapters.current(), *self.proxy.parameters()]}]

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        feats = self.adapters.features(x, [CURRENT])[0]
        return StepOutput(F.pad(self.proxy(feats), (ctx.lo, 0)))  # the task's classes at [lo, hi)

    # ---------------------------------------------------------------- after a task
    def after_task(self, ctx) -> None:
        if self.adapters.has_current:
            self.adapters.freeze_current()
        ids = self.subspace_ids()
        S, d, n = len(ids), self.backbone.embed_dim, ctx.hi - ctx.lo
        sums = torch.zeros(n, S, d, device=ctx.device, dtype=torch.float64)
        counts = torch.zeros(n, device=ctx.device, dtype=torch.float64)
        with self.frozen_features(), ctx.autocast():
            for x, y in ctx.batches(augment=False, description="prototypes in every subspace"):
                feats = self.adapters.features(x, ids, max_images=self.cfg.max_pass_images)  # (S, B, d)
                sums.index_add_(0, y - ctx.lo, feats.transpose(0, 1).double())
                counts.index_add_(0, y - ctx.lo, torch.ones_like(y, dtype=torch.float64))
        sums, counts = ctx.all_reduce(sums), ctx.all_reduce(counts)
        table = self.prototypes.new_zeros(ctx.hi, S, d)
        old = self.prototypes
        table[: old.shape[0], : old.shape[1]] = old
        table[ctx.lo:] = (sums / counts[:, None, None]).to(table)
        self.prototypes = table
        self._log = {"subspace_dims": [d] * S, "feature_dim": S * d, "subspaces": S,
                     "complement": self.complement()}

    @torch.no_grad()
    def complement(self) -> list[dict[str, Any]]:
        """Fill old classes' blocks in later subspaces by semantic similarity; return, per filled
        (task, subspace), the mean largest and the mean entropy of the similarity weights."""
        t, off = self.task, self.offset
        W = self.prototypes
        n_sets = W.shape[1] - off
        if self.cfg.recalc_sim:  # every (old task i, later subspace j), classes of tasks >= j as reference
            pairs = [(i, j, self.info.task_ranges[j][0]) for i in range(t) for j in range(i + 1, min(t + 1, n_sets))]
        else:  # only the newest subspace, the current task's classes as reference
            pairs = [(i, t, self.info.task_ranges[t][0]) for i in range(t)] if t < n_sets else []
        log = []
        for i, j, lo_ref in pairs:
            lo_i, hi_i = self.info.task_ranges[i]
            A, B = W[lo_ref:, off + i], W[lo_ref:, off + j]
            weights = complement_weights(W[lo_i:hi_i, off + i], A)
            W[lo_i:hi_i, off + j] = weights @ B
            entropy = -(weights * weights.clamp_min(1e-12).log()).sum(1)
            log.append({"task": i, "subspace": off + j, "reference_classes": A.shape[0],
                        "max_weight": float(weights.max(1).values.mean()), "entropy": float(entropy.mean())})
        return log

    # ---------------------------------------------------------------- prediction
    def subspace_weights(self) -> Tensor:
        """Weight (S, K_seen) of each subspace's cosine in each class's logit."""
        K, S = self.prototypes.shape[:2]
        t, off, cfg = self.task, self.offset, self.cfg
        task = self.task_of_class[:K]
        s = torch.arange(S, device=task.device)[:, None]
        other = cfg.alpha / t if t > 0 else 0.0
        w = torch.where(s == task[None] + off, 1.0, other)
        if cfg.use_init_ptm:
            w[0] = cfg.beta
        return w.to(self.prototypes.dtype)

    def predict(self, x: Tensor) -> Tensor:
        feats = self.adapters.features(x, self.subspace_ids(), max_images=self.cfg.max_pass_images)
        W = self.prototypes
        if not self.cfg.use_reweight:  # one cosine of the jointly normalised concatenations
            phi = feats.float().transpose(0, 1).flatten(1)
            logits = F.normalize(phi, dim=-1) @ F.normalize(W.flatten(1), dim=-1).t()
        else:
            cos = torch.einsum("sbd,ksd->sbk", F.normalize(feats.float(), dim=-1), F.normalize(W, dim=-1))
            logits = torch.einsum("sbk,sk->bk", cos, self.subspace_weights())
        self.task_choice.add(self.task_of_class[logits.argmax(1)])
        return logits

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        self.task_choice.reset()
        self.task_choice.active = True
        try:
            yield
        finally:
            self.task_choice.active = False

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self._recording()

    def eval_labels(self, y: Tensor) -> None:
        self.task_choice.labels(y, self.task_of_class)

    def task_log(self) -> dict[str, Any]:
        """Subspace sizes, complement weights, and how often the predicted class is of the true task."""
        return {**self._log, **self.task_choice.summary("predicted")}


def complement_weights(A_hat: Tensor, A: Tensor) -> Tensor:
    """Row-softmax of the cosine similarities between ``A_hat`` (n, d) and ``A`` (m, d): (n, m)."""
    return torch.softmax(F.normalize(A_hat, dim=-1) @ F.normalize(A, dim=-1).t(), dim=1)
