"""``dualprompt``: DualPrompt (Wang et al., ECCV 2022; github.com/google-research/l2p).

Prefix tuning on the untouched ViT: a task-shared G-prompt in blocks ``g_layers`` (0–1) and an
E-prompt pool in blocks ``e_layers`` (2–4), one pool entry (and key) per task. Each prompt
holds L key tokens and L value tokens that the queries of its block attend to in addition to
the sequence. Training uses the task's entry (task id; past the pool, key matching as in the
official code) and pulls its key toward the queries (λ·Σ_b cos(q_b, k_t)/B); testing selects
the entry per sample by cosine matching of the frozen-backbone query against the keys. Head:
the prompted [CLS]. Sample b's prefixes are exactly its own entry's key and value parts; the
public ports' reshape bug is available as ``prefix_reshape_bug`` (non-comparable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clbench.adapters import KVPrefixes
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.prompting import SelectionLog, cosine_matrix, kv_prefixes, merge_prefixes, select_top_k, uniform_
from clbench.registry import register_method

from .base import StepOutput
from .prompt_base import PromptMethod


@dataclass
class DualPromptConfig(MethodConfig):
    g_length: int = option(5, "G-prompt key tokens (and as many value tokens) per layer", ge=1)
    g_layers: tuple[int, ...] = option((0, 1), "blocks with the G-prompt", ge=0)
    e_length: int = option(5, "E-prompt key tokens (and as many value tokens): 5 CIFAR, 20 ImageNet-R", ge=1)
    e_layers: tuple[int, ...] = option((2, 3, 4), "blocks with the E-prompt", ge=0)
    pool_size: int = option(10, "E-prompt entries (one per task while tasks fit)", ge=1)
    pull_coeff: float = option(1.0, "λ of the key-matching term", ge=0)
    shared_pool: bool = option(True, "a new task's E-prompt starts as a copy of the previous one's")
    batchwise_prompt: bool = option(False, "compatibility: batch majority vote (marks the run non-comparable)")
    prefix_reshape_bug: bool = option(False, "compatibility: the ports' prefix reshape bug (non-comparable)")


@register_method("dualprompt")
class DualPrompt(PromptMethod):
    """G-prompt (shared) and E-prompt pool (task-specific, key-selected) as prefixes."""

    Config = DualPromptConfig
    display_name = "DualPrompt"
    defaults = {**PromptMethod.defaults, "train.lr": 0.0028125, "train.grad_clip": 1.0}

    def __init__(self, cfg: DualPromptConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        for name in ("g_layers", "e_layers"):
            bad = [b for b in getattr(cfg, name) if not 0 <= b < backbone.depth]
            if bad:
                raise ConfigError(f"dualprompt.{name} has blocks {bad} outside 0..{backbone.depth - 1}.")
        d = backbone.embed_dim
        self.g_prompt = uniform_((len(cfg.g_layers), 2, cfg.g_length, d))
        self.e_prompt = uniform_((len(cfg.e_layers), cfg.pool_size, 2, cfg.e_length, d))
        self.keys = uniform_((cfg.pool_size, d))
        self.selection = SelectionLog(cfg.pool_size, info.n_tasks)
        self.prefix_hooks = KVPrefixes(backbone, blocks=(*cfg.g_layers, *cfg.e_layers))
        self.flag_noncomparable(cfg.batchwise_prompt, cfg.prefix_reshape_bug)
        self._slot: int | None = None  # the training task's E-prompt entry

    def before_task(self, ctx) -> None:
        super().before_task(ctx)
        t = ctx.index
        self._slot = t if t < self.cfg.pool_size else None
        if self.cfg.shared_pool and self._slot is not None and t > 0:
            with torch.no_grad():
                self.e_prompt[:, t] = self.e_prompt[:, t - 1]

    def prefixes(self, idx: Tensor | int) -> dict[int, tuple[Tensor, Tensor]]:
        """``{block: (keys, values)}``: the G-prompt and the E-prompt entries ``idx`` (per sample,
        or one int for the whole batch)."""
        g = {b: (self.g_prompt[i, 0].unsqueeze(0), self.g_prompt[i, 1].unsqueeze(0))
             for i, b in enumerate(self.cfg.g_layers)}
        keys, values = kv_prefixes(self.e_prompt, idx, self.cfg.prefix_reshape_bug)
        e = {b: (keys[i], values[i]) for i, b in enumerate(self.cfg.e_layers)}
        return merge_prefixes(g, e)

    def features(self, x: Tensor, idx: Tensor | int) -> Tensor:
        with self.prefix_hooks.using(self.prefixes(idx)):
            return self.backbone(x)

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        q = self.query(x)
        sim = cosine_matrix(q, self.keys)
        if self._slot is not None:
            idx = torch.full((x.shape[0], 1), self._slot, device=x.device, dtype=torch.long)
            batch_idx = idx if self.cfg.prefix_reshape_bug else self._slot
        else:  # more tasks than pool entries: the official code matches keys instead
            idx = select_top_k(sim.detach(), 1, self.cfg.batchwise_prompt)
            batch_idx = idx
        reduce_sim = sim.gather(1, idx).sum() / x.shape[0]
        logits = self.head(self.features(x, batch_idx))
        return StepOutput(logits, loss=-self.cfg.pull_coeff * reduce_sim, logs={"match": reduce_sim.detach()})

    def predict(self, x: Tensor) -> Tensor:
        idx = select_top_k(cosine_matrix(self.query(x), self.keys), 1, self.cfg.batchwise_prompt)
        self.selection.add(idx)
        return self.head(self.features(x, idx))
