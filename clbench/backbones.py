"""Backbones: an untouched timm Vision Transformer plus the hooks CL methods need.

:func:`create_backbone` builds any timm model by its full ``arch.tag`` name (or a name
registered with :func:`~clbench.registry.register_backbone`) and resolves its weights
(:mod:`clbench.weights`). :class:`Backbone` wraps it without modifying timm's code:

* :meth:`Backbone.forward_tokens` / :meth:`Backbone.forward`: all tokens after the final
  norm, and the pooled feature (timm's own pooling, e.g. the [CLS] token);
* :meth:`Backbone.qkv`: the fused ``qkv`` projection of a block, whose q/k/v row ranges
  :class:`clbench.adapters.QKVLowRank` adapts;
* :meth:`Backbone.prompted`: extra tokens at the input (prompt tuning) and per-sample
  key/value prefixes inside chosen blocks (prefix tuning), with timm's fused
  scaled-dot-product attention left in place. Both work through forward hooks: a prefixed
  block's attention input is padded with placeholder rows, the ``qkv`` output of those rows is
  replaced by the prefix keys/values, and the rows are dropped again before ``proj``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


class _PromptState:
    """Per-call prompt tokens and prefixes, read by the backbone's hooks."""

    def __init__(self, tokens: torch.Tensor | None, prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.tokens = tokens
        self.prefixes = prefixes
        self.n_real: dict[int, int] = {}


class Backbone(nn.Module):
    """A timm ViT (``self.vit``, unmodified) with input scaling, pooling and prompt hooks."""

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
        self._state: _PromptState | None = None
        self._token_hook: Any = None
        self._prefix_blocks: set[int] = set()

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

    # ------------------------------------------------------------------ prompting
    @contextlib.contextmanager
    def prompted(
        self,
        tokens: torch.Tensor | None = None,
        prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> Iterator[None]:
        """Run forwards with extra input tokens and/or key/value prefixes.

        ``tokens``: (B or 1, L, D), inserted after the [CLS]/prefix tokens, before the patches
        (they get no position embedding). ``prefixes``: ``{block: (keys, values)}``, each of
        shape (B or 1, Lp, attn_dim) in timm's head-major layout (head h owns columns
        ``h*head_dim:(h+1)*head_dim``); queries attend to the prefix tokens in addition to the
        sequence, whose length is unchanged.
        """
        prefixes = prefixes or {}
        if tokens is not None and self._token_hook is None:
            self._token_hook = self.vit.norm_pre.register_forward_hook(self._insert_tokens)
        for block in prefixes:
            self._install_prefix_hooks(block)
        previous, self._state = self._state, _PromptState(tokens, prefixes)
        try:
            yield
        finally:
            self._state = previous

    def _insert_tokens(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        state = self._state
        if state is None or state.tokens is None:
            return None
        n = self.num_prefix_tokens
        tokens = state.tokens.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :n], tokens, out[:, n:]], dim=1)

    def _install_prefix_hooks(self, block: int) -> None:
        if block in self._prefix_blocks:
            return
        self._prefix_blocks.add(block)
        attn = self.vit.blocks[block].attn
        attn.register_forward_pre_hook(self._hook(block, "pad"), with_kwargs=True)
        attn.qkv.register_forward_pre_hook(self._hook(block, "trim"))
        attn.qkv.register_forward_hook(self._hook(block, "append"))
        attn.proj.register_forward_pre_hook(self._hook(block, "trim"))

    def _hook(self, block: int, step: str) -> Callable:
        def pad(module, args, kwargs):
            state = self._state
            if state is None or block not in state.prefixes:
                return None
            x = args[0]
            state.n_real[block] = x.shape[1]
            n_prefix = state.prefixes[block][0].shape[1]
            return (torch.cat([x, x.new_zeros(x.shape[0], n_prefix, x.shape[2])], dim=1), *args[1:]), kwargs

        def trim(module, args):
            state = self._state
            if state is None or block not in state.prefixes:
                return None
            return (args[0][:, : state.n_real[block]], *args[1:])

        def append(module, args, out):
            state = self._state
            if state is None or block not in state.prefixes:
                return None
            keys, values = state.prefixes[block]
            b = out.shape[0]
            keys = keys.to(out.dtype).expand(b, -1, -1)
            values = values.to(out.dtype).expand(b, -1, -1)
            rows = torch.cat([torch.zeros_like(keys), keys, values], dim=-1)
            return torch.cat([out, rows], dim=1)

        return {"pad": pad, "trim": trim, "append": append}[step]


# ---------------------------------------------------------------------------- factory


def _resolve_spec(name: str) -> tuple[str, dict[str, Any], Path | None]:
    """(timm name, kwargs, bundled weights path) for a registered or plain timm name."""
    if name in BACKBONES:
        spec: BackboneSpec = BACKBONES.get(name)
        bundled = ASSETS / spec.bundled_weights if spec.bundled_weights else None
        return spec.timm_name, dict(spec.kwargs), bundled
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
    weights = cfg.weights
    if weights == "auto":
        check_bundled(cfg.name, bundled)
        weights = str(bundled) if bundled is not None else "cache-or-hub"
    tag = pretrained_identity(timm_name)[0] if bundled is None else cfg.name
    if weights == "none":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        info = WeightsInfo("random", None, None, tag)
    elif weights in ("hub", "cache-or-hub"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
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
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        load_weights_file(model, path, cfg.name)
        source = "bundled" if bundled is not None and path == bundled else "file"
        info = WeightsInfo(source, str(path), check_sha256(path, cfg.weights_sha256), tag)
    return Backbone(model, cfg.name, info, cfg.input_norm)


def _from_hub(timm_name: str, kwargs: dict[str, Any], name: str) -> nn.Module:
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        repo = pretrained_identity(timm_name)[1] or f"timm/{timm_name}"
        reason = f"could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        raise WeightsError(missing_weights_message(name, repo, reason)) from exc
