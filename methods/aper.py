"""APER (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024; ADAM in the preprint).

Task 0 adapts the backbone with one PETL module (see :mod:`clbench.methods.first_session`);
then the model is the pretrained and the adapted backbone side by side. Every task (task 0
included, after its training) writes the mean feature of each new class, computed on its
training images with test transforms, as that class's prototype; old prototypes are never
changed and tasks after the first train nothing. The feature is the concatenation
``[f_pretrained(x), f_adapted(x)]`` (pretrained first), and a class's score is the cosine
between it and the prototype, the 2d-wide vectors normalised as a whole (not per half), as
``MultiBranchCosineIncrementalNet`` with its fresh ``CosineLinear`` (σ = 1) does in
github.com/zhoudw-zdw/RevisitingCIL (``models/aper_*.py``, ``utils/inc_net.py``).

Variants (the module of the first session): ``aper-adapter`` (AdaptFormer bottleneck, rank
64), ``aper-ssf`` (scale and shift), ``aper-vpt-shallow`` / ``aper-vpt-deep`` (5 zero
prompt tokens) and ``aper-finetune`` (the whole backbone, a trained copy next to the
pretrained one). Defaults are the official configs' (``exps/aper_*/``, SGD momentum 0.9 with
weight decay 5e-4, cosine schedule to 0): PILOT (sun-hailong/LAMDA-PILOT) runs the same
method code, only other settings, which its presets reproduce.

With a zero-initialised adapter and no training both halves are equal and APER is SimpleCIL
(``cos([a, a], [b, b]) = cos(a, b)``); zero VPT prompts and the random SSF initialisation
already change the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from clbench.config import MethodConfig
from clbench.heads import Prototypes
from clbench.registry import register_method

from .first_session import AdapterOptions, FirstSessionMethod, SSFOptions, VPTOptions

# the official configs' optimiser for every variant (exps/aper_*/*.json)
SGD_COSINE = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 5e-4,
              "train.schedule": "cosine"}


class APER(FirstSessionMethod):
    """Prototype classifier on the concatenated pretrained and first-session-adapted features."""

    petl_name: ClassVar[str] = ""

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.prototypes = Prototypes(2 * backbone.embed_dim)

    @classmethod
    def petl_kind(cls, cfg) -> str:
        return cls.petl_name

    def features(self, x: Tensor) -> Tensor:
        """``[f_pretrained(x), f_adapted(x)]`` (B, 2d)."""
        return torch.cat([self.pretrained_features(x), self.adapted_features(x)], dim=1)

    def after_task(self, ctx) -> None:
        super().after_task(ctx)
        means = self.class_means(ctx, self.features, 2 * self.backbone.embed_dim)
        self.prototypes.set(torch.arange(ctx.lo, ctx.hi, device=ctx.device), means.float())

    def predict(self, x: Tensor) -> Tensor:
        return self.prototypes(self.features(x))

    def task_log(self) -> dict[str, Any]:
        return {**super().task_log(), "prototypes": int(self.prototypes.means.shape[0])}


@dataclass
class AperAdapterConfig(AdapterOptions):
    pass


@dataclass
class AperSSFConfig(SSFOptions):
    pass


@dataclass
class AperVPTConfig(VPTOptions):
    pass


@register_method("aper-adapter")
class AperAdapter(APER):
    """APER with AdaptFormer adapters (rank 64, scale 0.1) trained on the first task."""

    display_name = "APER (Adapter)"

    Config = AperAdapterConfig
    petl_name = "adapter"
    defaults = {**SGD_COSINE, "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48}


@register_method("aper-ssf")
class AperSSF(APER):
    """APER with SSF (scale and shift after every linear map and norm) trained on the first task."""

    display_name = "APER (SSF)"

    Config = AperSSFConfig
    petl_name = "ssf"
    defaults = {**SGD_COSINE, "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48}


@register_method("aper-vpt-shallow")
class AperVPTShallow(APER):
    """APER with 5 prompt tokens before the first block (VPT-shallow) trained on the first task."""

    display_name = "APER (VPT-Shallow)"

    Config = AperVPTConfig
    petl_name = "vpt-shallow"
    defaults = {**SGD_COSINE, "train.epochs": 20, "train.lr": 0.01, "train.batch_size": 48}


@register_method("aper-vpt-deep")
class AperVPTDeep(APER):
    """APER with 5 prompt tokens per block (VPT-deep) trained on the first task."""

    display_name = "APER (VPT-Deep)"

    Config = AperVPTConfig
    petl_name = "vpt-deep"
    defaults = {**SGD_COSINE, "train.epochs": 5, "train.lr": 0.05, "train.batch_size": 16}


@register_method("aper-finetune")
class AperFinetune(APER):
    """APER with the whole backbone fine-tuned on the first task (a copy beside the pretrained one)."""

    display_name = "APER (Finetune)"

    Config = MethodConfig
    petl_name = "finetune"
    defaults = {**SGD_COSINE, "train.epochs": 5, "train.lr": 0.01, "train.batch_size": 128}
