"""The common base of the prompt methods (``l2p``, ``dualprompt``, ``coda-prompt``, ``hide-prompt``).

The shared machinery itself (query pass, matching, prefixes, selection log) is in
:mod:`clbench.prompting`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from clbench.backbones import Backbone
from clbench.heads import IncrementalLinear
from clbench.prompting import SelectionLog, frozen_query

from .base import CLMethod, StreamInfo

BATCH_VOTE_REASON = ("{method}: batchwise_prompt selects one prompt set per batch by majority vote "
                     "(near-oracle task identity on task-ordered test batches; google-research/l2p#28)")
RESHAPE_BUG_REASON = ("{method}: prefix_reshape_bug reproduces the public ports' key/value prefix "
                      "reshape bug (JH-LEE-KR/dualprompt-pytorch#8)")


class PromptMethod(CLMethod):
    """Common base: frozen backbone, an :class:`IncrementalLinear` head, query pass, and a
    :class:`SelectionLog` recorded during evaluation (``selection_*`` in ``task_log``).

    Subclasses set ``self.selection`` to a :class:`SelectionLog` when they select prompts
    (``self.selection_name`` prefixes its entries in ``task_log``).
    """

    defaults = {"train.optimizer": "adam", "train.logit_mask": "current"}

    def __init__(self, cfg: Any, backbone: Backbone, info: StreamInfo):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.head = IncrementalLinear(backbone.embed_dim)
        task_of_class = torch.empty(info.n_classes, dtype=torch.long)
        for t, (lo, hi) in enumerate(info.task_ranges):
            task_of_class[lo:hi] = t
        self.register_buffer("task_of_class", task_of_class, persistent=False)
        self.selection: SelectionLog | None = None
        self.selection_name = "selection"

    def flag_noncomparable(self, batchwise: bool, reshape_bug: bool = False) -> None:
        """Record why a run with compatibility flags must not be compared (see the record)."""
        name = self.registered_name or type(self).__name__
        if batchwise:
            self.noncomparable.append(BATCH_VOTE_REASON.format(method=name))
        if reshape_bug:
            self.noncomparable.append(RESHAPE_BUG_REASON.format(method=name))

    def before_task(self, ctx) -> None:
        self.head.grow(ctx.hi)

    def query(self, x: Tensor) -> Tensor:
        return frozen_query(self.backbone, x)

    def eval_context(self) -> contextlib.AbstractContextManager:
        return self._recording()

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        log = self.selection
        if log is None:
            yield
            return
        log.reset()
        log.active = True
        try:
            yield
        finally:
            log.active = False

    def eval_labels(self, y: Tensor) -> None:
        if self.selection is not None:
            self.selection.labels(y, self.task_of_class)

    def task_log(self) -> dict[str, Any]:
        return self.selection.summary(self.selection_name) if self.selection is not None else {}
