"""Backbones: an untouched timm Vision Transformer with input scaling and pooling.

:func:`create_backbone` builds any timm model by its full ``arch.tag`` name (or a name
registered with :func:`~clbench.registry.register_backbone`, or one of timm's deprecated names,
which resolve to the current ``arch.tag``, e.g. ``vit_base_patch16_224_dino`` to
``vit_base_patch16_224.dino``) and resolves its weights (:mod:`clbench.weights`). :class:`Backbone` wraps it without modifying timm's code:

* :meth:`Backbone.forward_tokens` / :meth:`Backbone.forward`: all tokens after the final
  norm, and the pooled feature (timm's own pooling, e.g. the [CLS] token);
* :meth:`Backbone.qkv`: the fused ``qkv`` projection of a block, whose q/k/v row ranges
  :class:`clbench.adapters.QKVLowRank` adapts.

Adapters (low-rank branches, prompt tokens, key/value prefixes) attach to it by hooks; they
live in :mod:`clbench.adapters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .config import BackboneConfig
from .errors import ConfigError, RegistryError, WeightsError, closest
from .registry import BACKBONES, register_backbone
from .weights import (WeightsInfo, check_sha256, find_in_hf_cache, hf_offline, hf_repo_id, load_weights_file,
                      missing_weights_message, pretrained_identity, state_sha256)

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class BackboneSpec:
    """A clbench-registered backbone: a timm architecture with overrides and bundled weights."""

    timm_name: str
    kwargs: dict[str, Any]
    bundled_weights: str | None = None  # file name under clbench/assets


# The embedded default benchmark's backbone: a ViT with 6 blocks of width 96 on 32x32 inputs.
EMBEDDED_BACKBONE = "vit_micro_patch4_32.shapes_pre"
register_backbone(EMBEDDED_BACKBONE, "ViT 6x96, patch 4, 32 px; pretrained on disjoint 'shapes' classes (bundled)")(
    BackboneSpec(
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3),
        bundled_weights=f"{EMBEDDED_BACKBONE}.safetensors",
    )
)


class Backbone(nn.Module):
    """A timm ViT (``self.vit``, unmodified) with input scaling and pooling."""

    def __init__(self, vit: nn.Module, tag: str, weights: WeightsInfo, input_norm: str = "none"):
        super().__init__()
        self.vit = vit
        self.tag = tag
        self.weights = weights
        self.embed_dim: int = vit.num_features
        self.num_prefix_tokens: int = getattr(vit, "num_prefix_tokens", 1)
        self.input_norm = input_norm
        if input_norm == "timm":
            cfg = vit.pretrained_cfg
            self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(cfg["std"]).view(1, -1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ forward
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs in [0,1] → the model's input scaling (identity unless input_norm='timm')."""
        if self.input_norm == "timm":
            return (x - self.mean) / self.std
        return x

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens (B, N, D) after the final norm."""
        return self.vit.forward_features(self.preprocess(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """timm's pooled pre-logits feature (B, D) from :meth:`forward_tokens` output."""
        return self.vit.forward_head(tokens, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature (B, D), e.g. the final [CLS] token."""
        return self.pool(self.forward_tokens(x))

    # ------------------------------------------------------------------ structure
    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def qkv(self, block: int) -> nn.Linear:
        """The fused q/k/v projection of ``block`` (rows: q, then k, then v); a ConfigError if
        the block's attention has none (timm attention built with ``qkv_fused=False``)."""
        qkv = getattr(getattr(self.vit.blocks[block], "attn", None), "qkv", None)
        if not isinstance(qkv, nn.Linear):
            found = "missing" if qkv is None else f"a {type(qkv).__name__}"
            raise ConfigError(
                f"Backbone '{self.tag}' has no fused q/k/v projection in block {block} (vit.blocks.{block}.attn.qkv "
                f"is {found}; timm builds separate q/k/v projections with qkv_fused=False, e.g. in "
                f"EVA-style attention). The LoRA and prefix adapters act on timm's fused qkv: use a ViT with fused "
                f"attention (e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k), or a method that does not adapt "
                f"attention (e.g. simplecil, finetune).")
        return qkv


# ---------------------------------------------------------------------------- factory


def _resolve_spec(name: str) -> tuple[str, dict[str, Any], Path | None]:
    """(timm name, kwargs, bundled weights path) for a registered or plain timm name."""
    if name in BACKBONES:
        spec: BackboneSpec = BACKBONES.get(name)
        bundled = ASSETS / spec.bundled_weights if spec.bundled_weights else None
        return spec.timm_name, dict(spec.kwargs), bundled
    current = timm.models.get_deprecated_models().get(name)
    if current:  # timm's old names, e.g. vit_base_patch16_224_dino (the SD-LoRA code's DINO) -> ...224.dino
        name = current
    arch = name.split(".")[0]
    if arch not in timm.list_models():
        known = BACKBONES.names() + timm.list_models("vit_*")
        raise RegistryError(
            f"Unknown backbone '{name}'.{closest(name, known)} Use a full timm 'arch.tag' name "
            f"(e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k; see timm.list_pretrained()) or "
            f"a clbench backbone: {', '.join(BACKBONES.names())}."
        )
    if "." in name and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise RegistryError(
            f"timm has no pretrained tag '{name.split('.', 1)[1]}' for '{arch}'.{closest(name, tags)} "
            f"Its tags: {', '.join(t.split('.', 1)[1] for t in tags) or '(none)'}."
        )
    return name, {}, None


def check_bundled(name: str, bundled: Path | None) -> None:
    """A registered backbone's bundled weights must be installed with the package."""
    if bundled is not None and not bundled.exists():
        raise WeightsError(
            f"The bundled weights of backbone '{name}' are missing from this installation ({bundled}). "
            f"Reinstall clbench from a complete checkout, or re-create them with 'clbench pretrain-embedded'."
        )


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the backbone named in ``cfg`` and load its weights (see :mod:`clbench.weights`)."""
    timm_name, kwargs, bundled = _resolve_spec(cfg.name)
    kwargs.update(num_classes=0, drop_path_rate=cfg.drop_path)
    if cfg.img_size is not None:
        kwargs["img_size"] = cfg.img_size
    weights = cfg.weights
    if weights == "auto":
        check_bundled(cfg.name, bundled)
        weights = str(bundled) if bundled is not None else "cache-or-hub"
    tag = pretrained_identity(timm_name)[0] if bundled is None else cfg.name
    if weights == "none":
        model = _create(timm_name, kwargs, cfg)
        info = WeightsInfo("random", None, None, tag)
    elif weights in ("hub", "cache-or-hub"):
        model = _create(timm_name, kwargs, cfg)
        repo_id = hf_repo_id(model)
        cached = find_in_hf_cache(repo_id) if repo_id else None
        if cached is not None:
            load_weights_file(model, cached, cfg.name)
            info = WeightsInfo("hf-cache", str(cached), check_sha256(cached, cfg.weights_sha256), tag)
        else:
            if repo_id and hf_offline():
                raise WeightsError(missing_weights_message(cfg.name, repo_id, "HF_HUB_OFFLINE is set, so they cannot be downloaded"))
            model = _from_hub(timm_name, kwargs, cfg.name)
            cached = find_in_hf_cache(hf_repo_id(model)) if hf_repo_id(model) else None
            digest = check_sha256(cached, cfg.weights_sha256) if cached else state_sha256(model)
            info = WeightsInfo("hub", str(cached) if cached else None, digest, tag)
    else:
        path = Path(weights).expanduser()
        model = _create(timm_name, kwargs, cfg)
        load_weights_file(model, path, cfg.name)
        source = "bundled" if bundled is not None and path == bundled else "file"
        info = WeightsInfo(source, str(path), check_sha256(path, cfg.weights_sha256), tag)
    return Backbone(model, cfg.name, info, cfg.input_norm)


def _create(timm_name: str, kwargs: dict[str, Any], cfg: BackboneConfig) -> nn.Module:
    """``timm.create_model`` (random weights); a size the model cannot take is a ConfigError."""
    size = kwargs.get("img_size")
    fix = ("Use a size the model can take: set benchmark.image_size (or backbone.img_size) to a multiple of "
           "the patch size, or pick another backbone.")
    try:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        if size is None:
            raise
        raise ConfigError(f"Backbone '{cfg.name}' cannot be built for {size} px inputs ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). {fix}") from None
    for block in getattr(model, "blocks", ()):
        attn = getattr(block, "attn", None)
        if getattr(attn, "q_bias", None) is not None and getattr(attn, "qkv_bias_separate", True) is False:
            # EVA adds its q/v biases in F.linear on qkv.weight, bypassing hooks on qkv; timm's own
            # switch calls qkv and adds the biases after (the same sum), so qkv adapters apply.
            attn.qkv_bias_separate = True
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if size is not None and patch is not None:
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        if size % patch[0] or size % patch[1]:
            native = (model.pretrained_cfg or {}).get("input_size", (3, "?"))[-1]
            raise ConfigError(
                f"Backbone '{cfg.name}' (patch {patch[0]} px, native {native} px) cannot take {size} px inputs: "
                f"{size} is not a multiple of its patch size. {fix.replace('a multiple of the patch size', f'a multiple of {patch[0]}, e.g. {max(patch[0], size - size % patch[0])}')}")
    return model


def _from_hub(timm_name: str, kwargs: dict[str, Any], name: str) -> nn.Module:
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        repo = pretrained_identity(timm_name)[1] or f"timm/{timm_name}"
        reason = f"could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        raise WeightsError(missing_weights_message(name, repo, reason)) from exc
