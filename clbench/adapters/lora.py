"""Task-wise low-rank branches on the q/k/v slices of timm's fused ``qkv`` projections.

For every adapted block ``l`` and projection ``p`` (a subset of q, k, v), branch ``k`` adds
``s_k · B_k A_k x`` to the rows of ``qkv`` that produce ``p``, with ``A_k`` (r_k × d_in) the
down-projection and ``B_k`` (d_out × r_k) the up-projection. The module is the mechanism
shared by every LoRA-style method; a method decides what is trained and how branches scale.

Speed by construction:

* branches of finished tasks are *frozen* and stored concatenated along the rank axis, so
  the forward of block ``l`` is one GEMM ``x @ [A_frozen; A_current]ᵀ`` for all its
  projections and one GEMM per projection for the up-projection, whatever the task count;
  their normalisation (e.g. SD-LoRA's ``1/(‖A‖‖B‖)``) is folded into the stored factors
  once, when a branch is frozen;
* per-branch scales (e.g. SD-LoRA's magnitudes) are applied as a per-rank-column scale,
  computed once per forward by ``scale_fn`` and shared by all blocks;
* branches with fixed scales can be merged into the ``qkv`` weight when frozen
  (``freeze_current(merge=True)``: InfLoRA), and :meth:`merged` folds everything into the
  weight for evaluation, so inference costs exactly a plain ViT forward.

The hooks modify timm's modules only through ``register_forward_hook``; the backbone's
parameters keep their names.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..backbones import Backbone

QKV_INDEX = {"q": 0, "k": 1, "v": 2}

# scale_fn() -> (frozen column scales: (R_frozen,) or (L, P, R_frozen) or None,
#                current-branch scale: float, 0-dim tensor, (L, P) tensor or None)
ScaleFn = Callable[[], tuple[Tensor | None, Tensor | float | None]]


class QKVLowRank(nn.Module):
    """Low-rank branches on ``targets`` (e.g. ``"qv"``) of the given blocks' fused qkv."""

    def __init__(self, backbone: Backbone, blocks: Sequence[int] | None = None, targets: str = "qv"):
        super().__init__()
        if not targets or any(t not in QKV_INDEX for t in targets):
            raise ValueError(f"targets must be letters from 'qkv', got {targets!r}")
        self.block_ids = list(range(backbone.depth)) if blocks is None else sorted(blocks)
        self.targets = tuple(targets)
        qkv = backbone.qkv(self.block_ids[0])
        self.d_in, self.d_out = qkv.in_features, qkv.out_features // 3
        shape = (len(self.block_ids), len(self.targets))
        ref = qkv.weight
        self.frozen_A = nn.Parameter(ref.new_zeros(*shape, 0, self.d_in), requires_grad=False)
        self.frozen_B = nn.Parameter(ref.new_zeros(*shape, self.d_out, 0), requires_grad=False)
        self.frozen_ranks: list[int] = []  # rank of each frozen (unmerged) branch, in order
        self.register_parameter("A", None)  # current branch, (L, P, r, d_in)
        self.register_parameter("B", None)  # current branch, (L, P, d_out, r)
        self.scale_fn: ScaleFn | None = None
        self._qkv = [backbone.qkv(b) for b in self.block_ids]  # not registered: owned by backbone
        self._colscale: Tensor | None = None
        self._merged_rows: list[Tensor] | None = None
        for i, module in enumerate(self._qkv):
            module.register_forward_hook(self._make_hook(i), prepend=True)

    # ------------------------------------------------------------------ branches
    @property
    def rank(self) -> int:
        """Rank of the current branch (0 if none)."""
        return 0 if self.A is None else self.A.shape[2]

    @property
    def frozen_rank(self) -> int:
        return self.frozen_A.shape[2]

    def add_branch(
        self,
        rank: int,
        A: Tensor | None = None,
        B: Tensor | None = None,
        train_A: bool = True,
        train_B: bool = True,
    ) -> None:
        """Start a new current branch. Default init: A ~ U(±1/√d_in) (kaiming_uniform, a=√5), B = 0."""
        if self.A is not None:
            raise RuntimeError("freeze_current() or drop_current() the current branch first")
        L, P = self.frozen_A.shape[:2]
        ref = self.frozen_A
        if A is None:
            bound = 1.0 / math.sqrt(self.d_in)
            A = torch.empty(L, P, rank, self.d_in, device=ref.device, dtype=ref.dtype).uniform_(-bound, bound)
        if B is None:
            B = ref.new_zeros(L, P, self.d_out, rank)
        if A.shape != (L, P, rank, self.d_in) or B.shape != (L, P, self.d_out, rank):
            raise ValueError(f"branch factors must be ({L},{P},{rank},{self.d_in}) and ({L},{P},{self.d_out},{rank})")
        self.A = nn.Parameter(A.to(ref).clone(), requires_grad=train_A)
        self.B = nn.Parameter(B.to(ref).clone(), requires_grad=train_B)

    @torch.no_grad()
    def freeze_current(self, norm: Tensor | None = None, merge: bool = False, scale: float = 1.0) -> None:
        """Freeze the current branch.

        ``norm`` (shape (L, P)) divides the branch per projection before it is stored.
        With ``merge``, ``scale · B A / norm`` is added to the qkv weights instead of being
        stored (for branches whose scale never changes again).
        """
        if self.A is None:
            raise RuntimeError("no current branch to freeze")
        A, B = self.A.detach(), self.B.detach()
        if norm is not None:
            B = B / norm[..., None, None].to(B)
        if merge:
            for i, p, rows in self._rows():
                self._qkv[i].weight[rows] += scale * (B[i, p] @ A[i, p]).to(self._qkv[i].weight.dtype)
        else:
            if scale != 1.0:
                B = B * scale
            self.frozen_A = nn.Parameter(torch.cat([self.frozen_A, A], dim=2), requires_grad=False)
            self.frozen_B = nn.Parameter(torch.cat([self.frozen_B, B], dim=3), requires_grad=False)
            self.frozen_ranks.append(A.shape[2])
        self.A = self.B = None

    def get_extra_state(self) -> dict:
        return {"frozen_ranks": list(self.frozen_ranks)}

    def set_extra_state(self, state: dict) -> None:
        self.frozen_ranks = list(state["frozen_ranks"])

    def drop_current(self) -> None:
        """Discard the current branch (e.g. when SD-LoRA-KD absorbs it into old magnitudes)."""
        self.A = self.B = None

    def _rows(self) -> Iterator[tuple[int, int, slice]]:
        for i in range(len(self.block_ids)):
            for p, name in enumerate(self.targets):
                start = QKV_INDEX[name] * self.d_out
                yield i, p, slice(start, start + self.d_out)

    # ------------------------------------------------------------------ forward
    def _column_scales(self) -> Tensor | None:
        """Per-rank-column scales (L, P, R_frozen + r), or None when all are 1."""
        if self.scale_fn is None:
            return None
        frozen, current = self.scale_fn()
        if frozen is None and current is None:
            return None
        L, P = self.frozen_A.shape[:2]
        parts = []
        ref = self.frozen_A
        if self.frozen_rank:
            f = ref.new_ones(self.frozen_rank) if frozen is None else frozen
            parts.append(f.expand(L, P, self.frozen_rank) if f.dim() == 1 else f)
        if self.A is not None:
            c = ref.new_ones(()) if current is None else torch.as_tensor(current, device=ref.device, dtype=ref.dtype)
            c = c.reshape(L, P, 1) if c.dim() == 2 else c.reshape(1, 1, 1)
            parts.append(c.expand(L, P, self.rank))
        return torch.cat(parts, dim=-1) if parts else None

    def factors(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Concatenated (A, B) of block index ``i``: (P, R, d_in) and (P, d_out, R)."""
        As, Bs = [], []
        if self.frozen_rank:
            As.append(self.frozen_A[i])
            Bs.append(self.frozen_B[i])
        if self.A is not None:
            As.append(self.A[i])
            Bs.append(self.B[i])
        if not As:
            return None
        if len(As) == 1:
            return As[0], Bs[0]
        return torch.cat(As, dim=1), torch.cat(Bs, dim=2)

    def _make_hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            if self._merged_rows is not None:
                return None
            if i == 0:  # first adapted block of this forward: refresh the shared scales once
                self._colscale = self._column_scales()
            factors = self.factors(i)
            if factors is None:
                return None
            A, B = factors
            P, R = A.shape[0], A.shape[1]
            x = args[0]
            h = x.reshape(-1, self.d_in) @ A.reshape(P * R, self.d_in).to(x.dtype).t()
            if self._colscale is not None:
                h = h * self._colscale[i].reshape(P * R).to(h.dtype)
            h = h.to(out.dtype)
            flat = out.view(-1, out.shape[-1])
            for p, name in enumerate(self.targets):
                start = QKV_INDEX[name] * self.d_out
                flat[:, start:start + self.d_out].addmm_(h[:, p * R:(p + 1) * R], B[p].to(out.dtype).t())
            return out

        return hook

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def delta_weight(self, i: int, p: int) -> Tensor:
        """Dense ΔW (d_out × d_in) that the branches add to projection ``p`` of block index ``i``."""
        factors = self.factors(i)
        if factors is None:
            return self.frozen_A.new_zeros(self.d_out, self.d_in)
        A, B = factors
        scales = self._column_scales()
        Bp = B[p] if scales is None else B[p] * scales[i, p][None, :]
        return Bp @ A[p]

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Fold all branches into the qkv weights (exact restore on exit); hooks are idle."""
        if self._merged_rows is not None:
            yield
            return
        saved = []
        with torch.no_grad():
            deltas = [(i, rows, self.delta_weight(i, p)) for i, p, rows in self._rows()]
            for i, rows, delta in deltas:
                weight = self._qkv[i].weight
                saved.append(weight[rows].clone())
                weight[rows] += delta.to(weight.dtype)
        self._merged_rows = saved
        try:
            yield
        finally:
            with torch.no_grad():
                for (i, _, rows), original in zip(self._rows(), saved):
                    self._qkv[i].weight[rows] = original
            self._merged_rows = None

    def extra_repr(self) -> str:
        return (f"blocks={self.block_ids}, targets={''.join(self.targets)}, frozen_ranks={self.frozen_ranks}, "
                f"current_rank={self.rank}")
