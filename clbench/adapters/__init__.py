"""Adapters injected into an untouched timm backbone by hooks (see :mod:`clbench.adapters.base`).

* :class:`QKVLowRank` (:mod:`~clbench.adapters.lora`): task-wise low-rank branches on q/k/v;
* :class:`PromptTokens`, :class:`KVPrefixes` (:mod:`~clbench.adapters.prompt`): prompt
  tokens at the input and key/value prefixes in chosen blocks, fed per forward;
* :class:`BottleneckAdapter` (:mod:`~clbench.adapters.bottleneck`): AdaptFormer adapters
  parallel to each block's MLP;
* :class:`AdapterSet` (:mod:`~clbench.adapters.adapter_sets`): per-task bottleneck adapter sets
  applied group-wise to a repeated batch in one fused pass (EASE, MOS);
* :class:`SSF` (:mod:`~clbench.adapters.ssf`): per-channel scale and shift after the ViT's
  linear maps and norms;
* :class:`VisualPrompts` (:mod:`~clbench.adapters.vpt`): VPT-shallow/deep tokens after the patches.
"""

from .adapter_sets import AdapterSet
from .base import Injection, SwitchableInjection, injections
from .bottleneck import BottleneckAdapter
from .lora import QKV_INDEX, QKVLowRank
from .prompt import KVPrefixes, PromptInjection, PromptTokens, prompts_suspended
from .ssf import SSF
from .vpt import VisualPrompts

__all__ = ["QKV_INDEX", "SSF", "AdapterSet", "BottleneckAdapter", "Injection", "KVPrefixes", "PromptInjection", "PromptTokens",
           "QKVLowRank", "SwitchableInjection", "VisualPrompts", "injections", "prompts_suspended"]
