"""Adapters injected into an untouched timm backbone (see :mod:`clbench.adapters.lora`)."""

from .lora import QKV_INDEX, QKVLowRank

__all__ = ["QKV_INDEX", "QKVLowRank"]
