"""Per-task bottleneck adapters (AdaptFormer, see :mod:`~clbench.adapters.bottleneck`) as one fused computation.

EASE and MOS keep one set of adapters (one per block) per task and need features of the same
images under several of those sets. :class:`AdapterSet` stores the finished sets stacked
(``frozen_down_weight`` (K, L, r, d), ``frozen_down_bias`` (K, L, r), ``frozen_up_weight``
(K, L, d, r), ``frozen_up_bias`` (K, L, d)) and, optionally, one trainable *current* set
(``down_weight`` (L, r, d), ...). :meth:`AdapterSet.features` runs the backbone once on the
batch repeated G times, and in every adapted block group ``g`` of the repeated batch gets
adapter set ``g``::

    x_g = x_g + mlp(norm2(x_g)) + s · up_g(dropout(relu(down_g(x_g))))

computed for all groups by two batched matrix products (``baddbmm``). The number of Python
calls of a forward therefore does not depend on how many sets take part; only the FLOPs grow
with the number of groups. Outside :meth:`AdapterSet.using` (and inside
:meth:`~clbench.adapters.SwitchableInjection.disabled`) the hooks are idle and the backbone
computes its plain forward.

A set is named by an id: ``k >= 0`` the k-th frozen set, :data:`CURRENT` the current set,
:data:`PLAIN` no adapter (zero weights: the pretrained forward, bit for bit). A method that
transforms sets before using them (e.g. MOS's merging) passes explicit stacked weights to
:meth:`AdapterSet.using` / :meth:`AdapterSet.features` instead of ids.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import SwitchableInjection

CURRENT = -1
PLAIN = None
NAMES = ("down_weight", "down_bias", "up_weight", "up_bias")

Weights = tuple[Tensor, Tensor, Tensor, Tensor]  # (G, L, r, d), (G, L, r), (G, L, d, r), (G, L, d)


class AdapterSet(SwitchableInjection):
    """Frozen per-task bottleneck adapter sets plus an optional trainable current set, applied
    group-wise to a repeated batch in one backbone pass."""

    def __init__(self, backbone: Backbone, rank: int = 64, scale: float = 0.1, dropout: float = 0.1,
                 blocks: Sequence[int] | None = None):
        super().__init__(backbone)
        self.block_ids = list(range(backbone.depth)) if blocks is None else sorted(set(blocks))
        self.rank, self.scale, self.dim = rank, scale, backbone.embed_dim
        sites = [(f"vit.blocks.{b}", self.module_at(backbone, f"vit.blocks.{b}.norm2"),
                  self.module_at(backbone, f"vit.blocks.{b}.drop_path2")) for b in self.block_ids]
        ref = next(backbone.parameters())
        for name, shape in zip(NAMES, self._shapes()):
            self.register_parameter(f"frozen_{name}", nn.Parameter(ref.new_zeros(0, *shape), requires_grad=False))
            self.register_parameter(name, None)  # the current set
        self.dropout = nn.Dropout(dropout)
        self._weights: Weights | None = None
        self._inputs: dict[int, Tensor] = {}
        for i, (base, norm2, drop_path2) in enumerate(sites):
            self.hook(base + ".norm2", norm2, self._stash(i), kind="forward_pre")
            self.hook(base + ".drop_path2", drop_path2, self._add(i))

    def _shapes(self) -> list[tuple[int, ...]]:
        L, r, d = len(self.block_ids), self.rank, self.dim
        return [(L, r, d), (L, r), (L, d, r), (L, d)]

    # ------------------------------------------------------------------ sets
    @property
    def n_frozen(self) -> int:
        return self.frozen_down_weight.shape[0]

    @property
    def has_current(self) -> bool:
        return self.down_weight is not None

    def current(self) -> Weights:
        """The current set's parameters (L, ...), in :data:`NAMES` order."""
        if not self.has_current:
            raise RuntimeError("this AdapterSet has no current set: add_current() first")
        return tuple(getattr(self, name) for name in NAMES)  # type: ignore[return-value]

    def frozen(self) -> Weights:
        return tuple(getattr(self, f"frozen_{name}") for name in NAMES)  # type: ignore[return-value]

    @torch.no_grad()
    def add_current(self, init: Weights | None = None) -> None:
        """Start a trainable current set: AdaptFormer's init (``down`` Kaiming-uniform a=√5 as
        ``nn.Linear``, zero bias, zero ``up``), or a copy of ``init`` ((L, ...) tensors)."""
        ref = self.frozen_down_weight
        if init is None:
            bound = 1.0 / math.sqrt(self.dim)  # nn.Linear's default bound for the down-projection
            shapes = self._shapes()
            init = (torch.empty(shapes[0], device=ref.device, dtype=ref.dtype).uniform_(-bound, bound),
                    *(ref.new_zeros(s) for s in shapes[1:]))
        for name, value, shape in zip(NAMES, init, self._shapes()):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} of a set must have shape {shape}, got {tuple(value.shape)}")
            setattr(self, name, nn.Parameter(value.detach().to(ref).clone()))

    @torch.no_grad()
    def freeze_current(self, keep: bool = False) -> None:
        """Append a copy of the current set to the frozen sets; drop the current set unless ``keep``."""
        for name, value in zip(NAMES, self.current()):
            old = getattr(self, f"frozen_{name}")
            setattr(self, f"frozen_{name}", nn.Parameter(torch.cat([old, value.detach()[None].to(old)]),
                                                        requires_grad=False))
        if not keep:
            for name in NAMES:
                setattr(self, name, None)

    def stack(self, ids: Sequence[int | None]) -> Weights:
        """Stacked weights (G, L, ...) of the sets named by ``ids`` (frozen index, CURRENT, PLAIN)."""
        ids = list(ids)
        if ids == list(range(self.n_frozen)):
            return self.frozen()
        if ids == [CURRENT]:
            return tuple(p[None] for p in self.current())  # type: ignore[return-value]
        bad = [k for k in ids if k is not None and k != CURRENT and not 0 <= k < self.n_frozen]
        if bad:
            raise IndexError(f"adapter set ids {bad} do not exist ({self.n_frozen} frozen sets)")
        out = []
        for n, name in enumerate(NAMES):
            frozen = getattr(self, f"frozen_{name}")
            parts = [frozen.new_zeros(frozen.shape[1:]) if k is None else
                     self.current()[n] if k == CURRENT else frozen[k] for k in ids]
            out.append(torch.stack(parts))
        return tuple(out)  # type: ignore[return-value]

    # ------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def using(self, weights: Weights) -> Iterator[None]:
        """Inside: every backbone forward splits its batch into ``G = len(weights[0])`` equal
        groups and adds set ``g``'s adapters to group ``g``."""
        self._require_attached()
        previous, self._weights = self._weights, weights
        try:
            yield
        finally:
            self._weights = previous
            self._inputs.clear()

    def features(self, x: Tensor, ids: Sequence[int | None] | None = None, weights: Weights | None = None,
                 max_images: int = 0, forward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Pooled features (G, B, D) of ``x`` (B, ...) under each of G adapter sets (``ids`` or
        explicit stacked ``weights``), in ``ceil(G·B / max_images)`` fused backbone passes
        (one when ``max_images`` is 0 or at least G·B)."""
        weights = self.stack(ids) if weights is None else weights
        forward = forward or self._backbone()
        G, B = weights[0].shape[0], x.shape[0]
        per_pass = G if max_images <= 0 else max(1, min(G, max_images // max(B, 1)))
        out = []
        for start in range(0, G, per_pass):
            part = tuple(w[start:start + per_pass] for w in weights)
            g = part[0].shape[0]
            with self.using(part):  # type: ignore[arg-type]
                feats = forward(x.repeat(g, *([1] * (x.dim() - 1))) if g > 1 else x)
            out.append(feats.reshape(g, B, *feats.shape[1:]))
        return out[0] if len(out) == 1 else torch.cat(out)

    def branch(self, i: int, x: Tensor, weights: Weights) -> Tensor:
        """``s · up_g(dropout(relu(down_g(x_g))))`` for every group g of ``x`` (G·B, ..., d) at adapted block ``i``."""
        down_w, down_b, up_w, up_b = (w[:, i].to(x.dtype) for w in weights)
        G = down_w.shape[0]
        shape = x.shape
        xg = x.reshape(G, -1, shape[-1])
        h = torch.relu(torch.baddbmm(down_b[:, None, :], xg, down_w.transpose(1, 2)))
        h = self.dropout(h)
        out = torch.baddbmm(up_b[:, None, :], h, up_w.transpose(1, 2))
        return (self.scale * out).reshape(shape)

    def _stash(self, i: int) -> Callable:
        def stash(module: nn.Module, args: tuple) -> None:
            if self.enabled and self._weights is not None:
                self._inputs[i] = args[0]

        return stash

    def _add(self, i: int) -> Callable:
        def add(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            x = self._inputs.pop(i, None)
            if not self.enabled or x is None or self._weights is None:
                return None
            return out + self.branch(i, x, self._weights).to(out.dtype)

        return add

    def get_extra_state(self) -> dict:
        return {"rank": self.rank, "blocks": list(self.block_ids)}

    def set_extra_state(self, state: dict) -> None:
        if state["rank"] != self.rank or list(state["blocks"]) != self.block_ids:
            raise ValueError(f"saved adapter sets have rank {state['rank']} on blocks {state['blocks']}; this one "
                             f"has rank {self.rank} on blocks {self.block_ids}")

    def extra_repr(self) -> str:
        return (f"blocks={self.block_ids}, rank={self.rank}, scale={self.scale}, frozen_sets={self.n_frozen}, "
                f"current={self.has_current}, {super().extra_repr()}")
