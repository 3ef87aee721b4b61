"""Prompt injections: extra input tokens and per-sample key/value prefixes, fed per forward.

Prompt methods select their prompts per sample from the frozen backbone's query, so these
injections own no parameters: the method feeds them for one forward with
``with injection.using(value): backbone(x)``, and their hooks are idle outside.

* :class:`PromptTokens`: tokens (B or 1, L, D) inserted after the prefix tokens ([CLS],
  registers) at the output of ``vit.norm_pre``, before the patches. ``position='none'``: they
  get no position embedding (L2P's JAX code, google-research/l2p ``models/vit.py``);
  ``position='cls'``: each gets a copy of the [CLS] position embedding (the PyTorch ports,
  JH-LEE-KR/l2p-pytorch ``vision_transformer.py``, which widens the position table by
  repeating the [CLS] entry for the prompt slots; LAMDA-PILOT's L2P follows it).
* :class:`KVPrefixes`: ``{block: (keys, values)}``, each (B or 1, Lp, attn_dim) in timm's
  head-major layout (head h owns columns ``h*head_dim:(h+1)*head_dim``); the block's queries
  attend to the prefix tokens in addition to the sequence, whose length is unchanged. timm's
  fused scaled-dot-product attention stays in place: the attention input is padded with Lp
  placeholder rows, ``qkv`` runs on the real rows only and its output gets the rows
  ``[0 | keys | values]``, and the placeholder rows are dropped again before ``proj``.

:func:`prompts_suspended` idles every prompt injection of a backbone (the query pass). A new
prompt-like injection (tokens after the patches, per-block
deep prompts) subclasses :class:`PromptInjection` the same way.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import ConfigError
from .base import Injection, injections

Prefixes = dict[int, tuple[Tensor, Tensor]]


class PromptInjection(Injection):
    """An injection fed per forward: ``with inj.using(value)``; its hooks read ``self._fed``
    (None: idle). Contexts nest; the inner value applies until it exits."""

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        self._fed: Any = None

    @property
    def active(self) -> bool:
        """Whether the injection is being fed (inside :meth:`using`, not suspended)."""
        return self._fed is not None

    @contextlib.contextmanager
    def _feeding(self, value: Any) -> Iterator[None]:
        previous, self._fed = self._fed, value
        try:
            yield
        finally:
            self._fed = previous

    def suspended(self) -> contextlib.AbstractContextManager:
        """Hooks idle inside, whatever is being fed around it."""
        return self._feeding(None)


@contextlib.contextmanager
def prompts_suspended(backbone: Backbone) -> Iterator[None]:
    """Every prompt injection of ``backbone`` idle inside (the un-prompted query pass)."""
    with contextlib.ExitStack() as stack:
        for injection in injections(backbone):
            if isinstance(injection, PromptInjection):
                stack.enter_context(injection.suspended())
        yield


def check_no_rope(backbone: Backbone, why: str) -> None:
    """Prompts change the sequence that timm's rotary position embeddings are sized for."""
    if getattr(backbone.vit, "rope", None) is not None:
        raise ConfigError(
            f"Backbone '{backbone.tag}' uses rotary position embeddings (as EVA-02 does), which timm sizes for the "
            f"image's tokens, so {why}. Use a ViT with absolute position embeddings (ViT, DeiT, CLIP, DINOv2) for "
            f"prompt methods, or a method that adapts weights (e.g. lora, sdlora, inflora) on this backbone.")


PROMPT_POSITIONS = ("none", "cls")


class PromptTokens(PromptInjection):
    """Prompt tokens after the prefix tokens, before the patches (hook on ``vit.norm_pre``);
    ``position='cls'`` adds the [CLS] position embedding to every prompt token."""

    def __init__(self, backbone: Backbone, position: str = "none"):
        super().__init__(backbone)
        check_no_rope(backbone, "prompt tokens cannot be inserted before the patches")
        if position not in PROMPT_POSITIONS:
            raise ValueError(f"PromptTokens position must be one of {PROMPT_POSITIONS}, got {position!r}")
        self.num_prefix_tokens = backbone.num_prefix_tokens
        self.position = position
        norm_pre = self.module_at(backbone, "vit.norm_pre")
        self._vit = weakref.ref(backbone.vit)
        if position == "cls":
            self._cls_position()  # a backbone without one fails here, at build time
        self.hook("vit.norm_pre", norm_pre, self._insert)

    def _cls_position(self) -> Tensor:
        """The [CLS] token's position embedding (1, 1, D), as the backbone adds it now."""
        vit = self._vit()
        pos = getattr(vit, "pos_embed", None)
        if (not isinstance(pos, Tensor) or getattr(vit, "no_embed_class", False) or self.num_prefix_tokens < 1
                or getattr(vit, "cls_token", None) is None):
            raise ConfigError(
                f"Prompt position 'cls' needs a [CLS] token with its own position embedding, but backbone "
                f"'{self.backbone_tag}' has none (no cls_token, no pos_embed, or no_embed_class=True). Use "
                f"method.prompt_pos_embed=none, or a ViT with a class-token position embedding "
                f"(e.g. vit_base_patch16_224.augreg2_in21k_ft_in1k).")
        return pos[:, :1]

    def using(self, tokens: Tensor) -> contextlib.AbstractContextManager:
        """Forwards inside get ``tokens`` (B or 1, L, D)."""
        return self._feeding(tokens)

    def _insert(self, module: nn.Module, args: Any, out: Tensor) -> Tensor | None:
        tokens = self._fed
        if tokens is None:
            return None
        n = self.num_prefix_tokens
        if self.position == "cls":
            tokens = tokens + self._cls_position().to(tokens.dtype)
        tokens = tokens.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([out[:, :n], tokens, out[:, n:]], dim=1)

    def extra_repr(self) -> str:
        return f"position={self.position}, {super().extra_repr()}"


@dataclass
class _Feed:
    prefixes: Prefixes
    n_real: dict[int, int] = field(default_factory=dict)  # sequence length per block, this forward


class KVPrefixes(PromptInjection):
    """Key/value prefixes in ``blocks`` (hooks on their ``attn``, ``attn.qkv`` and ``attn.proj``)."""

    def __init__(self, backbone: Backbone, blocks: Sequence[int]):
        super().__init__(backbone)
        self.block_ids = sorted(set(blocks))
        modules = []
        for b in self.block_ids:  # the modules first: a ViT without them is the more basic error
            base = f"vit.blocks.{b}.attn"
            modules.append((base, self.module_at(backbone, base), backbone.qkv(b),
                            self.module_at(backbone, base + ".proj")))
        check_no_rope(backbone, "key/value prefixes cannot join the attention")
        for b, (base, attn, qkv, proj) in zip(self.block_ids, modules):
            self.hook(base, attn, self._pad(b), kind="forward_pre", with_kwargs=True)
            self.hook(base + ".qkv", qkv, self._trim(b), kind="forward_pre")
            self.hook(base + ".qkv", qkv, self._append(b))
            self.hook(base + ".proj", proj, self._trim(b), kind="forward_pre")

    def using(self, prefixes: Prefixes) -> contextlib.AbstractContextManager:
        """Forwards inside attend to ``prefixes`` (``{block: (keys, values)}``, blocks of this injection)."""
        unknown = sorted(set(prefixes) - set(self.block_ids))
        if unknown:
            raise ValueError(f"prefixes for blocks {unknown}, but this KVPrefixes hooks blocks {self.block_ids}")
        return self._feeding(_Feed(prefixes))

    def _prefix(self, block: int) -> tuple[_Feed, tuple[Tensor, Tensor]] | None:
        feed = self._fed
        if feed is None or block not in feed.prefixes:
            return None
        return feed, feed.prefixes[block]

    def _pad(self, block: int) -> Callable:
        def pad(module, args, kwargs):
            found = self._prefix(block)
            if found is None:
                return None
            feed, (keys, _) = found
            x = args[0]
            feed.n_real[block] = x.shape[1]
            return (torch.cat([x, x.new_zeros(x.shape[0], keys.shape[1], x.shape[2])], dim=1), *args[1:]), kwargs

        return pad

    def _trim(self, block: int) -> Callable:
        def trim(module, args):
            found = self._prefix(block)
            if found is None:
                return None
            return (args[0][:, : found[0].n_real[block]], *args[1:])

        return trim

    def _append(self, block: int) -> Callable:
        def append(module, args, out):
            found = self._prefix(block)
            if found is None:
                return None
            keys, values = found[1]
            b = out.shape[0]
            keys = keys.to(out.dtype).expand(b, -1, -1)
            values = values.to(out.dtype).expand(b, -1, -1)
            rows = torch.cat([torch.zeros_like(keys), keys, values], dim=-1)
            return torch.cat([out, rows], dim=1)

        return append

    def extra_repr(self) -> str:
        return f"blocks={self.block_ids}, {super().extra_repr()}"
