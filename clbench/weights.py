"""Resolving and loading pretrained weights for timm backbones, offline first.

Sources, in the order ``weights='auto'`` tries them:

1. a weights file bundled with a clbench-registered backbone;
2. the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``,
   read when the backbone is built), without touching the network;
3. the hub itself, unless offline (``HF_HUB_OFFLINE=1``): then a missing file is an error
   that names the repository to download and the folder to copy it into.

``weights`` may also be ``none`` (random initialisation), ``hub`` (2, then 3) or a file path
(``.safetensors``, ``.pth``/``.pt``/``.bin`` or the original Google ``.npz``). The run record
stores the source, the full timm ``arch.tag`` that was resolved, the file and its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.download import file_digest
from .errors import WeightsError


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from."""

    source: str  # 'random', 'file', 'hf-cache', 'hub', 'bundled'
    path: str | None
    sha256: str | None
    tag: str | None = None  # the full timm arch.tag resolved (e.g. for a bare architecture name)

    def to_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "sha256": self.sha256, "tag": self.tag}


def hf_repo_id(model) -> str | None:
    """The Hugging Face repo id of a timm model's pretrained config, if any."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    """True when the hub must not be contacted (``HF_HUB_OFFLINE``, read now)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def find_in_hf_cache(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """Path of the cached weights of ``repo_id`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir or hf_cache_dir()))
        if isinstance(found, str) and os.path.exists(found):
            return Path(found)
    return None


def pretrained_identity(timm_name: str) -> tuple[str | None, str | None]:
    """(full ``arch.tag``, Hugging Face repo id) timm resolves ``timm_name`` to, or Nones."""
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(timm_name)
    except Exception:
        return None, None
    if cfg is None:
        return None, None
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.architecture and cfg.tag else None
    return tag, cfg.hf_hub_id or None


def missing_weights_message(name: str, repo_id: str, reason: str) -> str:
    """What to do when pretrained weights are neither cached nor downloadable."""
    cache = hf_cache_dir()
    folder = "models--" + repo_id.replace("/", "--")
    return (
        f"Pretrained weights for backbone '{name}' are not in the Hugging Face cache ({cache / folder} is "
        f"missing) and {reason}. On a machine with internet run 'hf download {repo_id}' (older "
        f"huggingface_hub: 'huggingface-cli download {repo_id}') and copy its {folder} folder from "
        f"~/.cache/huggingface/hub into {cache} (or point HF_HUB_CACHE at a copied cache), and keep "
        f"HF_HUB_OFFLINE=1 here; or pass a local file with --set backbone.weights=/path/to/model.safetensors."
    )


def check_available(timm_name: str, name: str) -> None:
    """Fail early when the pretrained weights of ``timm_name`` cannot be had offline."""
    _, repo_id = pretrained_identity(timm_name)
    if repo_id and hf_offline() and find_in_hf_cache(repo_id) is None:
        raise WeightsError(missing_weights_message(name, repo_id, "HF_HUB_OFFLINE is set, so they cannot be downloaded"))


def state_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, bytes), for weights without a file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or torch checkpoint file as a flat state dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(
                f"Cannot read weights file {path} ({type(exc).__name__}: {exc}). It is truncated or corrupt: "
                f"download it again (or delete it from the Hugging Face cache and let clbench fetch it)."
            ) from None
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
        try:
            model.load_pretrained(str(path))  # timm's loader for the original Google checkpoints
        except Exception as exc:
            raise WeightsError(
                f"Cannot load {path} into backbone '{name}' ({type(exc).__name__}: {str(exc)[:200]}). "
                f"Use the original Google .npz of exactly this architecture (the full timm arch.tag must match)."
            ) from None
        return
    state = read_state_dict(path)
    try:  # the model family's own remapping, which also resizes position embeddings to the model's size
        import importlib

        from timm.models import vision_transformer

        family = importlib.import_module(type(model).__module__)
        state = getattr(family, "checkpoint_filter_fn", vision_transformer.checkpoint_filter_fn)(state, model)
    except Exception:  # not a checkpoint layout that needs remapping
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
    digest = file_digest(path)
    if expected and digest != expected.lower():
        raise WeightsError(
            f"Weights file {path} has SHA-256 {digest}, but backbone.weights_sha256 expects "
            f"{expected}. The file is corrupt or a different checkpoint; download it again "
            f"or correct backbone.weights_sha256."
        )
    return digest
