"""Adapters injected into an untouched timm backbone by hooks (see :mod:`clbench.adapters.base`).

* :class:`QKVLowRank` (:mod:`~clbench.adapters.lora`): task-wise low-rank branches on q/k/v;
* :class:`PromptTokens`, :class:`KVPrefixes` (:mod:`~clbench.adapters.prompt`): prompt
  tokens at the input and key/value prefixes in chosen blocks, fed per forward.
"""

from .base import Injection, injections
from .lora import QKV_INDEX, QKVLowRank
from .prompt import KVPrefixes, PromptInjection, PromptTokens, prompts_suspended

__all__ = ["QKV_INDEX", "Injection", "KVPrefixes", "PromptInjection", "PromptTokens", "QKVLowRank", "injections",
           "prompts_suspended"]
