"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022; github.com/google-research/l2p).

A pool of M prompts (L tokens each) with one key each. The frozen backbone's [CLS] feature is
the query; the N keys with the highest cosine similarity select N prompts per sample, which
are prepended to the token sequence at the input of block 0, after [CLS]. The head reads the
mean of the prompt tokens' outputs. Loss: the engine's masked cross-entropy
(``train.logit_mask=current``) minus λ·Σ_b Σ_selected cos(q_b, k_j)/B; the query is detached,
so the surrogate term moves only the selected keys.

The prompts' position embedding (``prompt_pos_embed``), which the paper does not describe:
``none`` as in the JAX original (google-research/l2p ``models/vit.py`` adds the position
embeddings before the prompts are prepended), or ``cls`` as in the PyTorch port
(JH-LEE-KR/l2p-pytorch ``vision_transformer.py``: [CLS, prompts, patches], with the position
table widened by repeating [CLS]'s entry for the prompt slots in ``resize_pos_embed``) and the
LAMDA-PILOT L2P the SD-LoRA paper ran; on identical weights the two differ visibly in logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from clbench.adapters import PromptTokens
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.prompting import SelectionLog, cosine_matrix, select_top_k, uniform_
from clbench.registry import register_method

from .base import StepOutput
from .prompt_base import PromptMethod


@dataclass
class L2PConfig(MethodConfig):
    pool_size: int = option(10, "M prompts (and keys) in the pool", ge=1)
    prompt_length: int = option(5, "L tokens per prompt", ge=0)
    top_k: int = option(5, "N prompts selected per sample (at most pool_size)", ge=1)
    pull_coeff: float = option(0.1, "lambda of the key-matching term (PyTorch port 0.1; JAX code 1.0)", ge=0)
    head: Literal["prompt", "token"] = option("prompt", "head input: mean of the prompt-token outputs, or [CLS]")
    prompt_mask: bool = option(False, "train task t on pool slots [tN, (t+1)N) (official use_prompt_mask)")
    shared_pool: bool = option(False, "at task t's start copy slots [(t-1)N, tN) into [tN, (t+1)N)")
    batchwise_prompt: bool = option(False, "compatibility: one prompt set per batch by majority vote (non-comparable)")
    prompt_pos_embed: Literal["none", "cls"] = option(
        "none", "position embedding of the prompt tokens: none (JAX original) or a copy of [CLS]'s (PyTorch ports)")


@register_method("l2p")
class L2P(PromptMethod):
    """Prompt pool with key matching, prompts prepended at the input, prompt-token head."""

    Config = L2PConfig
    display_name = "L2P"
    defaults = {**PromptMethod.defaults, "train.lr": 0.001875, "train.grad_clip": 1.0}

    def __init__(self, cfg: L2PConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        if not 1 <= cfg.top_k <= cfg.pool_size:
            raise ConfigError(f"l2p.top_k must be between 1 and l2p.pool_size ({cfg.pool_size}), got {cfg.top_k}.")
        if cfg.head == "prompt" and cfg.prompt_length < 1:
            raise ConfigError("l2p.head=prompt needs l2p.prompt_length >= 1 (or set l2p.head=token).")
        d = backbone.embed_dim
        self.prompts = uniform_((cfg.pool_size, cfg.prompt_length, d))
        self.keys = uniform_((cfg.pool_size, d))
        self.selection = SelectionLog(cfg.pool_size)
        self.token_hooks = PromptTokens(backbone, position=cfg.prompt_pos_embed)
        self.flag_noncomparable(cfg.batchwise_prompt)
        self._forced: Tensor | None = None  # training slots under prompt_mask

    def _task_slots(self, t: int) -> tuple[int, int] | None:
        n = self.cfg.top_k
        return (t * n, (t + 1) * n) if (t + 1) * n <= self.cfg.pool_size else None

    def before_task(self, ctx) -> None:
        super().before_task(ctx)
        slots = self._task_slots(ctx.index)
        forced = self.cfg.prompt_mask and slots is not None
        self._forced = torch.arange(*slots, device=self.keys.device) if forced else None
        previous = self._task_slots(ctx.index - 1) if ctx.index > 0 else None
        if self.cfg.shared_pool and slots is not None and previous is not None:
            with torch.no_grad():
                self.prompts[slots[0]:slots[1]] = self.prompts[previous[0]:previous[1]]

    def _select(self, q: Tensor, train: bool) -> tuple[Tensor, Tensor]:
        sim = cosine_matrix(q, self.keys)  # q is detached (no-grad query pass)
        if train and self._forced is not None:  # official: beyond the pool, fall back to matching
            idx = self._forced.to(q.device).expand(q.shape[0], -1)
        else:
            idx = select_top_k(sim.detach(), self.cfg.top_k, self.cfg.batchwise_prompt)
        return sim, idx

    def features(self, x: Tensor, idx: Tensor) -> Tensor:
        """Head input for prompts ``idx`` (B, N): mean of the prompt outputs, or [CLS]."""
        tokens = self.prompts[idx].flatten(1, 2)  # (B, N·L, D)
        with self.token_hooks.using(tokens):
            out = self.backbone.forward_tokens(x)
        if self.cfg.head == "token":
            return self.backbone.pool(out)
        n = self.backbone.num_prefix_tokens
        return out[:, n:n + tokens.shape[1]].mean(dim=1)

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        q = self.query(x)
        sim, idx = self._select(q, train=True)
        logits = self.head(self.features(x, idx))
        reduce_sim = sim.gather(1, idx).sum() / x.shape[0]
        return StepOutput(logits, loss=-self.cfg.pull_coeff * reduce_sim, logs={"match": reduce_sim.detach()})

    def predict(self, x: Tensor) -> Tensor:
        _, idx = self._select(self.query(x), train=False)
        self.selection.add(idx)
        return self.head(self.features(x, idx))
