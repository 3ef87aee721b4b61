"""First-session adaptation: adapt the backbone on task 0 only, then keep it frozen.

The base of the pretrained-model baselines that tune a parameter-efficient module on the
first task and build a training-free classifier on its features afterwards (APER, RanPAC,
FeCAM, ...). On task 0 the chosen module (``petl``) and a temporary cosine head over the
task-0 classes (``σ · cos``, σ learnable, :class:`~clbench.heads.CosineLinear`) are trained
with the engine's cross-entropy; after it the head is discarded and everything is frozen.
Later tasks train nothing (:meth:`parameter_groups` is empty, so the engine runs no steps).

``petl`` choices:

* ``adapter``: AdaptFormer bottleneck adapters parallel to every MLP
  (:class:`~clbench.adapters.BottleneckAdapter`, rank ``adapter_rank``, zero-initialised up
  projection, so the adapted model starts as the pretrained one);
* ``ssf``: per-channel scale and shift after every linear map and norm (:class:`~clbench.adapters.SSF`);
* ``vpt-deep`` / ``vpt-shallow``: ``vpt_length`` zero-initialised prompt tokens per block or
  before the first block (:class:`~clbench.adapters.VisualPrompts`);
* ``finetune``: a full copy of the backbone, all of it trained;
* ``none``: no adaptation (the adapted features are the pretrained ones).

:meth:`FirstSessionMethod.pretrained_features` is the untouched backbone (the module switched
off, which gives the plain pretrained forward exactly), :meth:`adapted_features` the adapted
one. :meth:`feature_batches` and :meth:`class_means` are the statistics passes subclasses
build their classifiers from (test transforms, no grad, float64 sums reduced over ranks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from clbench.adapters import SSF, BottleneckAdapter, VisualPrompts
from clbench.config import MethodConfig, option
from clbench.heads import CosineLinear

from .base import CLMethod, StepOutput, TaskContext

PETLKind = Literal["adapter", "ssf", "vpt-deep", "vpt-shallow", "finetune", "none"]
Features = Callable[[Tensor], Tensor]


@dataclass
class AdapterOptions(MethodConfig):
    adapter_rank: int = option(64, "adapter: bottleneck width (AdaptFormer 'ffn_num')", ge=1)
    adapter_scale: float = option(0.1, "adapter: fixed scale of the adapter output", gt=0)
    adapter_dropout: float = option(0.1, "adapter: dropout on the bottleneck activation", ge=0, lt=1)


@dataclass
class SSFOptions(MethodConfig):
    ssf_init_std: float = option(0.02, "ssf: std of the initial scales (around 1) and shifts (around 0)", ge=0)


@dataclass
class VPTOptions(MethodConfig):
    vpt_length: int = option(5, "vpt: prompt tokens per block (deep) or in total (shallow)", ge=1)


@dataclass
class PETLOptions(AdapterOptions, SSFOptions, VPTOptions):
    """Hyperparameters of every first-session module (each used only by its ``petl`` kind;
    a method bound to one module may use just that module's options class)."""


@dataclass
class FirstSessionConfig(PETLOptions):
    """:class:`PETLOptions` plus the choice of module."""

    petl: PETLKind = option("adapter", "module adapted on task 0: adapter, ssf, vpt-deep, vpt-shallow, finetune, none")


class FirstSessionMethod(CLMethod):
    """Adapts the backbone with a PETL module on task 0 (with a temporary cosine head), then
    freezes it; tasks ≥ 1 train nothing. Subclasses add the classifier: they override
    :meth:`after_task` (calling ``super().after_task(ctx)`` first) and :meth:`predict`.

    The module is :meth:`petl_kind` (default: ``cfg.petl``; a subclass bound to one module
    overrides it). Attributes: ``petl`` (the injection, or None), ``tuned`` (the trained
    copy of the backbone for ``finetune``, else None), ``first_head`` (the temporary head,
    present only while task 0 trains).
    """

    Config = FirstSessionConfig

    def __init__(self, cfg: MethodConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.kind: str = self.petl_kind(cfg)
        self.petl = self.build_petl(self.kind)
        self.tuned = copy.deepcopy(backbone) if self.kind == "finetune" else None
        self.first_head: CosineLinear | None = None
        self.adapting = False
        self.first_session_log: dict[str, Any] = {}

    @classmethod
    def petl_kind(cls, cfg: FirstSessionConfig) -> str:
        """The module adapted on task 0 under options ``cfg``."""
        return cfg.petl

    @classmethod
    def trains_on_task(cls, cfg: FirstSessionConfig, index: int) -> bool:
        """Only task 0 trains, and only with a module to adapt (``petl=none`` trains nothing)."""
        return index == 0 and cls.petl_kind(cfg) != "none"

    def build_petl(self, kind: str) -> nn.Module | None:
        """The injection for ``kind`` on the backbone (None for ``finetune`` and ``none``)."""
        cfg, bb = self.cfg, self.backbone
        if kind == "adapter":
            return BottleneckAdapter(bb, rank=cfg.adapter_rank, scale=cfg.adapter_scale, dropout=cfg.adapter_dropout)
        if kind == "ssf":
            return SSF(bb, init_std=cfg.ssf_init_std)
        if kind in ("vpt-deep", "vpt-shallow"):
            return VisualPrompts(bb, cfg.vpt_length, mode=kind.removeprefix("vpt-"))
        if kind in ("finetune", "none"):
            return None
        raise ValueError(f"unknown first-session module {kind!r}")

    # ------------------------------------------------------------------ features
    def pretrained_features(self, x: Tensor) -> Tensor:
        """Features of the pretrained backbone (the module switched off)."""
        if self.petl is None:
            return self.backbone(x)
        with self.petl.disabled():
            return self.backbone(x)

    def adapted_features(self, x: Tensor) -> Tensor:
        """Features of the adapted backbone (``none``: the pretrained ones). Without grad, SSF
        is folded into the weights for the call (a plain ViT forward; restored after)."""
        if self.tuned is not None:
            return self.tuned(x)
        if isinstance(self.petl, SSF) and not torch.is_grad_enabled():
            with self.petl.merged():
                return self.backbone(x)
        return self.backbone(x)

    def adapted_parameters(self) -> list[nn.Parameter]:
        """The parameters task 0 adapts (empty for ``none``)."""
        module = self.tuned if self.tuned is not None else self.petl
        return [] if module is None else list(module.parameters())

    # ------------------------------------------------------------------ first session
    def before_task(self, ctx: TaskContext) -> None:
        self.adapting = ctx.index == 0 and bool(self.adapted_parameters())
        if self.adapting:
            for p in self.adapted_parameters():
                p.requires_grad_(True)
            ref = next(self.backbone.parameters())
            self.first_head = CosineLinear(self.backbone.embed_dim, ctx.hi).to(ref.device)
        else:
            self.end_first_session()

    def parameter_groups(self) -> list[dict[str, Any]]:
        if not self.adapting:
            return []
        return [{"params": self.adapted_parameters() + list(self.first_head.parameters())}]

    def training_step(self, x: Tensor, y: Tensor, ctx: TaskContext) -> StepOutput:
        return StepOutput(self.first_head(self.adapted_features(x)))

    def after_task(self, ctx: TaskContext) -> None:
        """Ends the first session after task 0 (head dropped, everything frozen)."""
        if ctx.index == 0 and self.first_head is not None:
            n_adapted = sum(p.numel() for p in self.adapted_parameters())
            self.first_session_log = {"petl": self.kind, "adapted_params": n_adapted,
                                      "first_head_sigma": float(self.first_head.sigma.detach())}
        self.end_first_session()

    def end_first_session(self) -> None:
        self.adapting = False
        self.first_head = None
        for p in self.adapted_parameters():
            p.requires_grad_(False)

    def task_log(self) -> dict[str, Any]:
        return dict(self.first_session_log)

    # ------------------------------------------------------------------ statistics passes
    def feature_batches(self, ctx: TaskContext, features: Features,
                        description: str = "features") -> Iterator[tuple[Tensor, Tensor]]:
        """``(features(x), y)`` over the task's training data with test transforms, in
        evaluation mode without grad (under DDP: this rank's shard)."""
        with self.frozen_features(), ctx.autocast():
            for x, y in ctx.batches(augment=False, description=description):
                yield features(x), y

    def class_means(self, ctx: TaskContext, features: Features, dim: int, description: str = "prototypes") -> Tensor:
        """Mean ``features`` (``dim`` wide) of each new class: (hi - lo, dim) float64, rows in
        label order ``lo..hi-1``, sums and counts reduced over ranks."""
        n = ctx.hi - ctx.lo
        sums = torch.zeros(n, dim, device=ctx.device, dtype=torch.float64)
        counts = torch.zeros(n, device=ctx.device, dtype=torch.float64)
        for feats, y in self.feature_batches(ctx, features, description):
            sums.index_add_(0, y - ctx.lo, feats.double())
            counts.index_add_(0, y - ctx.lo, torch.ones_like(y, dtype=torch.float64))
        sums, counts = ctx.all_reduce(sums), ctx.all_reduce(counts)
        if bool((counts == 0).any()):
            raise RuntimeError(f"task {ctx.index + 1}: a class has no training data for its mean")
        return sums / counts[:, None]
