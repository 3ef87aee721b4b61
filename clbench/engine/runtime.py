"""Device, precision, seeding and data-loader settings, resolved once per run."""

from __future__ import annotations

import contextlib
import os
import random

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA if available, else CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"engine.device '{name}' is not a device. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"engine.device is '{name}' but CUDA is not available here. Use --set engine.device=cpu.")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (bf16) or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ConfigError("engine.precision=bf16 but this GPU does not support bfloat16. Use fp32.")
        return None
    if device.type != "cuda":
        raise ConfigError("engine.precision=bf16 is supported on CUDA only. Use auto or fp32 on CPU.")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def data_workers(setting: int | str, in_memory: bool, world_size: int = 1) -> int:
    """Loader workers: 0 for in-memory data; else the machine's cores per rank, at most 8."""
    if setting != "auto":
        return int(setting)
    if in_memory:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, world_size) - 1))


def engine_summary(device: torch.device, dtype: torch.dtype | None) -> dict:
    """Where and how a run computes, for its record."""
    return {"device": str(device), "autocast": str(dtype).replace("torch.", "") if dtype else "fp32",
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads()}


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, NumPy, Python), as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def compile_backbone(backbone: torch.nn.Module) -> None:
    """``engine.compile``: compile the backbone's token forward with ``torch.compile``
    (timm module and parameter names unchanged; adapters' hooks are traced with it)."""
    vit = backbone.vit
    if not getattr(vit, "_clbench_compiled", False):
        vit.forward_features = torch.compile(vit.forward_features)
        vit._clbench_compiled = True
