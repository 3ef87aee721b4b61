"""``mos``: Model Surgery, adapter merging and self-refined retrieval (Sun et al., AAAI 2025;
official code sun-hailong/AAAI25-MOS, the same files as LAMDA-PILOT's ``mos``).

One live set of AdaptFormer adapters (rank 16) on a frozen ViT is trained through all tasks
(never re-initialised) with a linear head over all classes. After task t a copy of it is
stored as snapshot θ_t. While learning task t ≥ 1 the live set θ is pulled toward the mean
μ_t of the earlier snapshots by the merge ``M(θ) = (1 − m)·θ + m·μ_t`` (m = ``momentum``), so
n merges give ``μ_t + (1 − m)^n (θ − μ_t)``. Loss: cross-entropy over the task's classes plus
``reg`` × an orthogonality term (cross-entropy of ``[old class means; batch features]`` Gram
matrix / 0.8 against the identity). After each task: per-class Gaussian statistics of the
live set's features, prototypes (class means) of snapshot 0's features for a cosine classifier,
and, from task 1, classifier alignment of the head on features sampled from all seen classes'
Gaussians (an engine-run phase).

Prediction at task T: a first task guess from the prototype classifier on snapshot-0 features;
then the head on the features of the guessed task's snapshot names a task, whose snapshot is
used next, up to 4 times, until the named task stays the same; the result is
``softmax(head logits) + softmax((T+1)·prototype cosines)``. The features of all T+1 snapshots
come from one fused computation (:class:`~clbench.adapters.AdapterSet`); snapshot 0's serve the
prototype guess too, so evaluation costs T+1 ViT forwards per image, in
``ceil((T+1)·B / max_pass_images)`` backbone passes.

``merge_mode`` ``official`` reproduces the code: every forward with snapshot or live set k ≥ 1
merges it once before each block uses its adapter (block b sees b+1 merges; a forward applies
``depth`` in all) and training merges once more after each optimiser step. In training the
merges are applied to the live set in place, as in the code (gradients are those of the merged
weights each block used); the class-statistics pass merges it per batch too. In evaluation the
code also merges the *stored snapshots in place*, so its predictions depend on how many test
batches ran before; here evaluation applies the per-block merges to a copy and never changes
the model, unless ``eval_drift`` (a non-comparable variant) reproduces the accumulation.
``paper`` merges once after each optimiser step and uses the snapshots as stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import AdapterSet
from clbench.adapters.adapter_sets import Weights
from clbench.config import MethodConfig, option
from clbench.heads import Prototypes
from clbench.prompting import SelectionLog
from clbench.registry import register_method

from .base import CLMethod, Phase, StepOutput

EVAL_DRIFT_REASON = ("mos: eval_drift merges the stored adapters in place during evaluation, as the official code "
                     "does, so results depend on how many test batches ran before")


class ClassFactors(nn.Module):
    """Per-class Cholesky factors of Σ + 1e-4·I (C, d, d), or standard deviations (C, d).

    Only the alignment phases read them, so a task state leaves them out (they are the bulk of
    MOS's state: d² floats per class) and loading a state without them keeps an empty table."""

    def __init__(self, d: int, full: bool):
        super().__init__()
        self.register_buffer("factor", torch.zeros(0, d, d) if full else torch.zeros(0, d))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "factor" not in state_dict:
            self.factor = self.factor[:0]
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass
class MOSConfig(MethodConfig):
    rank: int = option(16, "bottleneck width of the adapters ('ffn_num')", ge=1)
    scale: float = option(0.1, "fixed scale of the adapter output")
    dropout: float = option(0.1, "dropout on the bottleneck activation (training only)", ge=0, lt=1)
    momentum: float = option(0.1, "merge weight of the mean of earlier snapshots ('adapter_momentum')", ge=0, le=1)
    merge_mode: Literal["official", "paper"] = option(
        "official", "official: merges before every block and after every step; paper: once per step")
    eval_drift: bool = option(False, "variant: merge stored adapters in place during evaluation (official code)")
    reg: float = option(0.1, "weight of the orthogonality loss", ge=0)
    orth_temperature: float = option(0.8, "temperature of the orthogonality loss", gt=0)
    head_lr_scale: float = option(0.1, "learning rate of the linear head relative to the adapters'", ge=0)
    statistics: Literal["covariance", "variance"] = option(
        "covariance", "class statistics for the alignment ('ca_storage_efficient_method')")
    ca_epochs: int = option(30, "epochs of classifier alignment from task 1 ('crct_epochs')", ge=0)
    ca_lr: float = option(0.005, "SGD learning rate of classifier alignment", gt=0)
    ca_samples: int = option(240, "samples per class and batch size of the alignment (5 x batch size)", ge=1)
    refine_steps: int = option(4, "most adapter choices of the self-refinement", ge=1)
    ensemble: bool = option(True, "add the prototype classifier's softmax to the head's")
    max_pass_images: int = option(2048, "images per fused backbone pass (adapters x batch); 0: one pass", ge=0)


@register_method("mos")
class MOS(CLMethod):
    """MOS: merged task adapters, adapter retrieval with self-refinement, classifier alignment."""

    display_name = "MOS"

    Config = MOSConfig
    defaults = {"train.logit_mask": "current", "train.optimizer": "sgd", "train.momentum": 0.9,
                "train.schedule": "cosine", "train.weight_decay": 5e-4}

    def __init__(self, cfg: MOSConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        d = backbone.embed_dim
        self.adapters = AdapterSet(backbone, rank=cfg.rank, scale=cfg.scale, dropout=cfg.dropout)
        self.adapters.add_current()
        self.head = nn.Linear(d, info.n_classes)
        self.prototypes = Prototypes(d)
        self.register_buffer("class_mean", torch.zeros(0, d))
        self.stats = ClassFactors(d, cfg.statistics == "covariance")
        self.register_buffer("drift", torch.zeros(0, dtype=torch.long))  # eval_drift: merge rounds per snapshot
        task_of_class = torch.empty(info.n_classes, dtype=torch.long)
        for t, (lo, hi) in enumerate(info.task_ranges):
            task_of_class[lo:hi] = t
        self.register_buffer("task_of_class", task_of_class, persistent=False)
        self.retrieval = SelectionLog(info.n_tasks, info.n_tasks)
        self.first_guess = SelectionLog(info.n_tasks, info.n_tasks)
        if cfg.eval_drift:
            self.noncomparable.append(EVAL_DRIFT_REASON)
        self.task, self._lo = -1, 0
        self._log: dict[str, Any] = {}

    def get_extra_state(self) -> dict:
        return {"task": self.task}

    def set_extra_state(self, state: dict) -> None:
        self.task = state["task"]

    # ---------------------------------------------------------------- merging
    def snapshot_mean(self, k: int) -> Weights:
        """μ_k: the mean of snapshots 0..k-1 (L, ...) per parameter."""
        return tuple(w[:k].mean(0) for w in self.adapters.frozen())  # type: ignore[return-value]

    def merged(self, theta: Weights, mean: Weights, applications: Tensor | float) -> Weights:
        """``μ + (1 − m)^n (θ − μ)``: n merges of θ toward μ; ``applications`` may vary per block (L,)."""
        keep = torch.as_tensor(1.0 - self.cfg.momentum, dtype=theta[0].dtype, device=theta[0].device) \
            ** torch.as_tensor(applications, dtype=theta[0].dtype, device=theta[0].device)
        out = []
        for th, mu in zip(theta, mean):
            c = keep.reshape(*keep.shape, *([1] * (th.dim() - keep.dim()))) if keep.dim() else keep
            out.append(mu + c * (th - mu))
        return tuple(out)  # type: ignore[return-value]

    def block_applications(self, start: Tensor | int = 0) -> Tensor:
        """Merges block b has seen when it runs in an official-mode forward: start + b + 1, (…, L)."""
        L = len(self.adapters.block_ids)
        b = torch.arange(1, L + 1, device=self.adapters.frozen_down_weight.device)
        return torch.as_tensor(start, device=b.device)[..., None] + b

    def live_weights(self, k: int, start: int = 0) -> Weights:
        """Weights of the live set for a forward while learning task ``k`` (official: merged per
        block, the gradient of each merged weight reaching the live parameter)."""
        theta = self.adapters.current()
        if self.cfg.merge_mode != "official" or k == 0 or self.cfg.momentum == 0:
            return tuple(p[None] for p in theta)  # type: ignore[return-value]
        with torch.no_grad():
            target = self.merged(theta, self.snapshot_mean(k), self.block_applications(start).to(theta[0].dtype))
        return tuple((p + (m - p).detach())[None] for p, m in zip(theta, target))  # type: ignore[return-value]

    @torch.no_grad()
    def merge_live(self, k: int, applications: int) -> None:
        """Apply ``applications`` merges to the live set in place (task ``k`` ≥ 1)."""
        if k == 0 or self.cfg.momentum == 0 or applications == 0:
            return
        theta = self.adapters.current()
        for p, m in zip(theta, self.merged(theta, self.snapshot_mean(k), float(applications))):
            p.copy_(m)

    def snapshot_weights(self) -> Weights:
        """Weights (T+1, L, ...) of every snapshot as the evaluation forward uses them."""
        frozen = self.adapters.frozen()
        if self.cfg.merge_mode != "official" or self.cfg.momentum == 0:
            return frozen
        K = frozen[0].shape[0]
        depth = len(self.adapters.block_ids)
        rounds = self.drift[:K] if self.cfg.eval_drift else torch.zeros(K, dtype=torch.long, device=self.drift.device)
        out = [[w[0]] for w in frozen]
        for k in range(1, K):
            n = self.block_applications(rounds[k] * depth).to(frozen[0].dtype)
            for parts, w in zip(out, self.merged(tuple(w[k] for w in frozen), self.snapshot_mean(k), n)):
                parts.append(w)
        return tuple(torch.stack(parts) for parts in out)  # type: ignore[return-value]

    # ---------------------------------------------------------------- training
    def before_task(self, ctx) -> None:
        self.task, self._lo = ctx.index, ctx.lo

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.adapters.current())},
                {"params": list(self.head.parameters()), "lr_scale": self.cfg.head_lr_scale}]

    def orthogonality(self, feats: Tensor) -> Tensor:
        with torch.autocast(feats.device.type, enabled=False):
            rows = torch.cat([self.class_mean[: self._lo].to(feats.device), feats.float()])
            sim = rows @ rows.t() / self.cfg.orth_temperature
            return F.cross_entropy(sim, torch.arange(len(rows), device=rows.device))

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        feats = self.adapters.features(x, weights=self.live_weights(ctx.index))[0]
        if self.cfg.merge_mode == "official":  # the code's forward leaves the live set merged `depth` times
            self.merge_live(ctx.index, len(self.adapters.block_ids))
        orth = self.orthogonality(feats)
        return StepOutput(self.head(feats), loss=self.cfg.reg * orth, logs={"orth": orth.detach()})

    def after_optimizer_step(self, ctx) -> None:
        if ctx.stage == "train":
            self.merge_live(ctx.index, 1)

    # ---------------------------------------------------------------- after a task
    def after_task(self, ctx) -> None:
        t, official = ctx.index, self.cfg.merge_mode == "official"
        self.adapters.freeze_current(keep=True)  # snapshot θ_t; the live set goes on
        self.drift = torch.cat([self.drift, self.drift.new_zeros(1)])
        feats, first, labels, batches = [], [], [], 0
        with self.frozen_features(), ctx.autocast():
            for x, y in ctx.batches(augment=False, description="class statistics"):
                start = batches * len(self.adapters.block_ids)
                live = self.live_weights(t, start) if official else tuple(p[None] for p in self.adapters.current())
                weights = tuple(torch.cat([a, b[:1]]) for a, b in zip(live, self.adapters.frozen()))
                both = self.adapters.features(x, weights=weights, max_images=self.cfg.max_pass_images)
                feats.append(both[0].float())
                first.append(both[1].float())
                labels.append(y)
                batches += 1
        if official:  # the code's statistics pass merges the live set once per block and batch
            n = int(ctx.all_reduce(torch.tensor(float(batches), device=ctx.device)))
            self.merge_live(t, n * len(self.adapters.block_ids))
        feats_t, first_t, labels_t = torch.cat(feats), torch.cat(first), torch.cat(labels) - ctx.lo
        self._statistics(ctx, feats_t, labels_t)
        self._prototypes(ctx, first_t, labels_t)
        self._log = self._merge_log(t)

    def _statistics(self, ctx, feats: Tensor, labels: Tensor) -> None:
        n, d = ctx.hi - ctx.lo, feats.shape[1]
        x = feats.double()
        onehot = F.one_hot(labels, n).double()
        count = ctx.all_reduce(onehot.sum(0))
        sums = ctx.all_reduce(onehot.t() @ x)
        outer = ctx.all_reduce(torch.einsum("bc,bi,bj->cij", onehot, x, x))
        mean = sums / count[:, None]
        cov = (outer - count[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (count[:, None, None] - 1).clamp_min(1)
        cov = cov + 1e-4 * torch.eye(d, dtype=cov.dtype, device=cov.device)
        if self.cfg.statistics == "covariance":
            factor = torch.linalg.cholesky(cov)
        else:
            factor = torch.diagonal(cov, dim1=1, dim2=2).sqrt()
        self.class_mean = torch.cat([self.class_mean[: ctx.lo], mean.to(self.class_mean)])
        self.stats.factor = torch.cat([self.stats.factor[: ctx.lo], factor.to(self.stats.factor)])

    def _prototypes(self, ctx, feats: Tensor, labels: Tensor) -> None:
        n = ctx.hi - ctx.lo
        onehot = F.one_hot(labels, n).double()
        sums, count = ctx.all_reduce(onehot.t() @ feats.double()), ctx.all_reduce(onehot.sum(0))
        self.prototypes.set(torch.arange(ctx.lo, ctx.hi, device=ctx.device), (sums / count[:, None]).float())

    def _merge_log(self, t: int) -> dict[str, Any]:
        cfg, depth = self.cfg, len(self.adapters.block_ids)
        keep = [(1 - cfg.momentum) ** (b + 1) for b in range(depth)] if cfg.merge_mode == "official" else [1.0] * depth
        log: dict[str, Any] = {"merge_mode": cfg.merge_mode, "momentum": cfg.momentum,
                               "merges_per_step": (depth + 1 if cfg.merge_mode == "official" else 1) if t else 0,
                               "eval_snapshot_weight_per_block": keep if t else [1.0] * depth}
        if t:
            theta = torch.cat([w[t].flatten() for w in self.adapters.frozen()])
            mean = torch.cat([w.flatten() for w in self.snapshot_mean(t)])
            log["snapshot_distance_to_mean"] = float((theta - mean).norm() / mean.norm().clamp_min(1e-12))
        return log

    def post_task_phases(self, ctx) -> list[Phase]:
        if ctx.index == 0 or self.cfg.ca_epochs == 0:
            return []
        hi, n = ctx.hi, self.cfg.ca_samples

        def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
            mean, factor = self.class_mean[:hi], self.stats.factor[:hi]
            z = torch.randn(hi, n, mean.shape[1], device=mean.device)
            noise = z @ factor.transpose(1, 2) if factor.dim() == 3 else z * factor[:, None, :]
            x = (mean[:, None, :] + noise).reshape(hi * n, -1)
            y = torch.arange(hi, device=mean.device).repeat_interleave(n)
            order = torch.randperm(len(y), device=mean.device)
            x, y = x[order], y[order]
            return [(x[i:i + n], y[i:i + n]) for i in range(0, len(y), n)]

        return [Phase("align", [{"params": list(self.head.parameters())}], self.cfg.ca_epochs, batches,
                      lambda f, y: F.cross_entropy(self.head(f)[:, :hi].float(), y),
                      {"optimizer": "sgd", "lr": self.cfg.ca_lr, "momentum": 0.9, "schedule": "cosine",
                       "grad_clip": None})]

    def task_state(self) -> dict[str, Any]:
        """Without the class statistics' factors (only the alignment phases read them)."""
        return {k: v for k, v in super().task_state().items() if k != "stats.factor"}

    # ---------------------------------------------------------------- prediction
    def refine(self, feats: Tensor, first: Tensor, hi: int) -> tuple[Tensor, Tensor]:
        """Self-refinement on features (K, B, d) from first task guesses (B,): head logits of the
        last visited snapshot (B, hi) and its index (B,)."""
        idx = torch.arange(feats.shape[1], device=feats.device)
        task, done = first, torch.zeros_like(first, dtype=torch.bool)
        logits = None
        for step in range(self.cfg.refine_steps):
            current = self.head(feats[task, idx])[:, :hi]
            logits = current if logits is None else torch.where(done[:, None], logits, current)
            named = self.task_of_class[current.argmax(1)]
            done = done | (named == task) | (step == self.cfg.refine_steps - 1)
            task = torch.where(done, task, named)
        return logits, task

    def predict(self, x: Tensor) -> Tensor:
        hi = self.prototypes.means.shape[0]
        feats = self.adapters.features(x, weights=self.snapshot_weights(), max_images=self.cfg.max_pass_images)
        feats = feats.float()
        proto = self.prototypes(feats[0])[:, :hi]
        first = self.task_of_class[proto.argmax(1)]
        logits, chosen = self.refine(feats, first, hi)
        self.first_guess.add(first)
        self.retrieval.add(chosen)
        if self.cfg.eval_drift:
            self.drift[1:] += 1
        if not self.cfg.ensemble:
            return logits
        return logits.softmax(1) + (proto * (self.task + 1)).softmax(1)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        for log in (self.retrieval, self.first_guess):
            log.reset()
            log.active = True
        try:
            yield
        finally:
            self.retrieval.active = self.first_guess.active = False

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self._recording()

    def eval_labels(self, y: Tensor) -> None:
        self.retrieval.labels(y, self.task_of_class)
        self.first_guess.labels(y, self.task_of_class)

    def task_log(self) -> dict[str, Any]:
        return {**self._log, **self.retrieval.summary("retrieval"), **self.first_guess.summary("first_guess")}

