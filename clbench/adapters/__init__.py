"""Adapters injected into an untouched timm backbone by hooks (see :mod:`clbench.adapters.base`).

* :class:`QKVLowRank` (:mod:`~clbench.adapters.lora`): task-wise low-rank branches on q/k/v.
"""

from .base import Injection, injections
from .lora import QKV_INDEX, QKVLowRank

__all__ = ["QKV_INDEX", "Injection", "QKVLowRank", "injections"]
