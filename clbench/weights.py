"""Resolving and loading pretrained weights for timm backbones, offline first.

Sources, in the order ``weights='auto'`` tries them:

1. a weights file bundled with a clbench-registered backbone;
2. the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), without touching the network;
3. the hub itself, unless ``HF_HUB_OFFLINE=1``.

``weights`` may also be ``none`` (random initialisation), ``hub`` (only 3) or a file path
(``.safetensors``, ``.pth``/``.pt``/``.bin`` or the original Google ``.npz``). The run record
stores the source and the SHA-256 of the file that was loaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WeightsError


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from."""

    source: str  # 'random', 'file', 'hf-cache', 'hub', 'bundled'
    path: str | None
    sha256: str | None

    def to_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "sha256": self.sha256}


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hf_repo_id(model) -> str | None:
    """The Hugging Face repo id of a timm model's pretrained config, if any."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id")


def find_in_hf_cache(repo_id: str) -> Path | None:
    """Path of the cached weights of ``repo_id`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.exists(found):
            return Path(found)
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or torch checkpoint file as a flat state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Cannot read weights file {path}: {exc}. Pass a .safetensors, .pth or .npz "
            f"file saved from a timm model of this architecture."
        ) from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def load_weights_file(model: torch.nn.Module, path: Path, name: str) -> None:
    """Load a weights file into a timm VisionTransformer (head entries are ignored)."""
    if not path.exists():
        raise WeightsError(
            f"Weights file {path} for backbone '{name}' does not exist. Check the path in "
            f"backbone.weights, or use --set backbone.weights=auto to use the Hugging Face cache."
        )
    if path.suffix == ".npz":
        model.load_pretrained(str(path))  # timm's loader for the original Google checkpoints
        return
    state = read_state_dict(path)
    try:
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)
    except Exception:  # not a ViT checkpoint layout that needs remapping
        pass
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    fix = "Use a checkpoint of exactly this architecture (the full timm arch.tag must match)."
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise WeightsError(f"Weights file {path} does not match backbone '{name}': {first.strip()} {fix}") from None
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise WeightsError(
            f"Weights file {path} does not match backbone '{name}': "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}). {fix}"
        )


def check_sha256(path: Path, expected: str | None) -> str:
    digest = sha256_file(path)
    if expected and digest != expected.lower():
        raise WeightsError(
            f"Weights file {path} has SHA-256 {digest}, but backbone.weights_sha256 expects "
            f"{expected}. The file is corrupt or a different checkpoint; download it again "
            f"or correct backbone.weights_sha256."
        )
    return digest
