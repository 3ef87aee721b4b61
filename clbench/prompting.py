"""Shared prompt infrastructure for ``l2p``, ``dualprompt``, ``coda-prompt`` and ``hide-prompt``.

Everything runs on the one untouched timm ViT of :class:`~clbench.backbones.Backbone`:

* :func:`frozen_query`: the query pass. The same frozen backbone, run without prompts under
  ``torch.no_grad()`` (in eval mode if it has stochastic layers); there is no second copy of
  the ViT. Prompted passes feed a :class:`~clbench.adapters.PromptTokens` or
  :class:`~clbench.adapters.KVPrefixes` injection (hooks; timm's fused scaled-dot-product
  attention stays in place).
* :func:`cosine_matrix`, :func:`select_top_k`, :func:`batch_vote`: key matching. Selection is
  per sample; the batch majority vote of the public code is a flagged compatibility option.
* :func:`kv_prefixes`: per-sample key/value prefixes from a pool of (key, value) prompt pairs,
  with the reshape bug of the public DualPrompt/HiDe ports reproducible behind a flag.
* :class:`SelectionLog`: which prompt/task each test sample selected, and how often that was
  its true task (``task_log`` diagnostics). The methods' common base class is
  :class:`clbench.methods.prompt_base.PromptMethod`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import prompts_suspended
from clbench.backbones import Backbone


# ---------------------------------------------------------------------------- query pass


def _has_stochastic_layers(backbone: Backbone) -> bool:
    cached = getattr(backbone, "_clbench_stochastic", None)
    if cached is None:
        cached = any(
            (isinstance(m, nn.Dropout) and m.p > 0) or getattr(m, "drop_prob", 0.0) > 0
            for m in backbone.modules()
        )
        backbone._clbench_stochastic = cached
    return cached


def frozen_query(backbone: Backbone, x: Tensor) -> Tensor:
    """The query q(x): pooled [CLS] of the frozen, un-prompted backbone, (B, D) float32, no grad.

    Every prompt injection fed around the call is suspended. The backbone is switched to eval
    mode only when it has dropout/drop-path (otherwise both modes compute the same thing).
    """
    toggle = backbone.training and _has_stochastic_layers(backbone)
    if toggle:
        backbone.eval()
    try:
        with torch.no_grad(), prompts_suspended(backbone):
            return backbone(x).float()
    finally:
        if toggle:
            backbone.train()


# ---------------------------------------------------------------------------- matching


def cosine_matrix(q: Tensor, keys: Tensor) -> Tensor:
    """Cosine similarities (B, M) between queries (B, D) and keys (M, D), in float32."""
    with torch.autocast(q.device.type, enabled=False):
        return F.normalize(q.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).t()


def batch_vote(idx: Tensor, k: int, pool_size: int) -> Tensor:
    """The ``k`` ids selected most often over the batch, for every sample (B, k).

    Compatibility only (the public L2P/DualPrompt/HiDe ``batchwise_prompt``); ties go to the
    lower id.
    """
    counts = torch.bincount(idx.flatten(), minlength=pool_size).float()
    tie_break = torch.arange(pool_size, device=idx.device) / (pool_size + 1.0)
    top = (counts - tie_break).topk(k).indices
    return top.unsqueeze(0).expand(idx.shape[0], -1)


def select_top_k(sim: Tensor, k: int, batchwise: bool = False) -> Tensor:
    """Per-sample top-``k`` key ids (B, k) from similarities (B, M); batch vote if ``batchwise``."""
    idx = sim.topk(k, dim=1).indices
    return batch_vote(idx, k, sim.shape[1]) if batchwise else idx


# ---------------------------------------------------------------------------- prefixes


def kv_prefixes(prompts: Tensor, idx: Tensor | int, reshape_bug: bool = False) -> tuple[Tensor, Tensor]:
    """Key and value prefixes of the selected prompts, each (layers, B or 1, k·L, D).

    ``prompts``: (layers, M, 2, L, D), entry ``[:, m, 0]`` the keys and ``[:, m, 1]`` the
    values of pool entry ``m``. ``idx``: one id for the whole batch (an int: prefixes have
    batch size 1), or per-sample ids (B,) or (B, k) (k prompts concatenated along the length).
    Sample b gets exactly the key part and the value part of its own prompt(s).

    ``reshape_bug``: the public ports gather ``prompt[:, :, idx]`` into (layers, 2, B, k, L, D)
    and *reshape* it to (layers, B, 2, k·L, D) without a permute, so samples receive parts of
    other samples' prompts, and a batch sharing one id uses the key part as both key and value
    in its first half and the value part as both in its second half.
    """
    if isinstance(idx, int):
        if reshape_bug:
            raise ValueError("reshape_bug needs per-sample ids (the bug depends on the batch size)")
        chosen = prompts[:, idx].unsqueeze(1)  # (layers, 1, 2, L, D)
        return chosen[:, :, 0], chosen[:, :, 1]
    if idx.dim() == 1:
        idx = idx.unsqueeze(1)
    n_layers, b, k = prompts.shape[0], idx.shape[0], idx.shape[1]
    length, dim = prompts.shape[-2], prompts.shape[-1]
    chosen = prompts[:, idx]  # (layers, B, k, 2, L, D)
    if reshape_bug:
        official = chosen.permute(0, 3, 1, 2, 4, 5)  # (layers, 2, B, k, L, D): the ports' layout
        mixed = official.reshape(n_layers, b, 2, k * length, dim)
        return mixed[:, :, 0], mixed[:, :, 1]
    keys = chosen[:, :, :, 0].reshape(n_layers, b, k * length, dim)
    values = chosen[:, :, :, 1].reshape(n_layers, b, k * length, dim)
    return keys, values


def merge_prefixes(*parts: dict[int, tuple[Tensor, Tensor]]) -> dict[int, tuple[Tensor, Tensor]]:
    """Union of ``{block: (keys, values)}`` maps; prefixes for the same block are concatenated."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for part in parts:
        for block, (k, v) in part.items():
            if block in out:
                k0, v0 = out[block]
                b = max(k0.shape[0], k.shape[0])
                k = torch.cat([k0.expand(b, -1, -1), k.expand(b, -1, -1)], dim=1)
                v = torch.cat([v0.expand(b, -1, -1), v.expand(b, -1, -1)], dim=1)
            out[block] = (k, v)
    return out


def uniform_(shape: tuple[int, ...]) -> nn.Parameter:
    """A prompt/key parameter initialised Uniform(−1, 1), as in the public ports."""
    return nn.Parameter(torch.empty(shape).uniform_(-1.0, 1.0))


# ---------------------------------------------------------------------------- diagnostics


class SelectionLog:
    """Which prompt (or task) each test sample selected during one evaluation.

    ``add(ids)`` in ``predict`` (ids (B,) or (B, k)); then, for methods whose ids are task ids
    (``n_tasks`` > 0), ``labels(y, task_of_class)`` compares each sample's first id with its true
    task. Counts stay on the device (no sync per batch); :meth:`summary` reads them once.
    """

    def __init__(self, n_ids: int, n_tasks: int = 0):
        self.n_ids = n_ids
        self.n_tasks = n_tasks
        self.active = False
        self._hist: Tensor | None = None
        self._last: Tensor | None = None
        self._correct: Tensor | None = None
        self._total: Tensor | None = None

    def reset(self) -> None:
        self._hist = self._last = self._correct = self._total = None

    def add(self, ids: Tensor) -> None:
        if not self.active:
            return
        flat = ids.flatten()  # index_add_ rather than bincount: no host sync per batch on CUDA
        hist = torch.zeros(self.n_ids, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))
        self._hist = hist if self._hist is None else self._hist + hist
        self._last = ids[:, 0] if ids.dim() == 2 else ids

    def labels(self, y: Tensor, task_of_class: Tensor) -> None:
        if not self.active or self._last is None or not self.n_tasks:
            return
        true = task_of_class[y]
        hit = (self._last == true).float()
        correct = hit.new_zeros(self.n_tasks).index_add_(0, true, hit)
        total = hit.new_zeros(self.n_tasks).index_add_(0, true, torch.ones_like(hit))
        self._correct = correct if self._correct is None else self._correct + correct
        self._total = total if self._total is None else self._total + total
        self._last = None

    def summary(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._hist is not None:
            out[f"{prefix}_counts"] = self._hist.tolist()
        if self._total is not None:
            total, correct = self._total.tolist(), self._correct.tolist()
            seen = [i for i, t in enumerate(total) if t > 0]
            out[f"{prefix}_task_acc"] = 100.0 * sum(correct) / max(1.0, sum(total))
            out[f"{prefix}_task_acc_per_task"] = [100.0 * correct[i] / total[i] for i in seen]
        return out
