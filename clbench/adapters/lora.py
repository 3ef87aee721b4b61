"""Task-wise low-rank branches on the q/k/v slices of timm's fused ``qkv`` projections.

For every adapted block ``l`` and projection ``p`` (a subset of q, k, v), branch ``k`` adds
``s_k · B_k A_k x`` to the rows of ``qkv`` that produce ``p``, with ``A_k`` (r_k × d_in) the
down-projection and ``B_k`` (d_out × r_k) the up-projection. The module is the mechanism
shared by every LoRA-style method; a method decides what is trained and how branches scale.

Speed by construction:

* branches of finished tasks are *frozen* and stored concatenated along the rank axis, so
  the forward of block ``l`` is one GEMM ``x @ A_frozenᵀ`` for all its projections and one
  GEMM per projection for the up-projection, whatever the task count; the frozen and the
  current branch are separate products, so backward computes weight gradients only for the
  current factors. Normalisations (e.g. SD-LoRA's ``1/(‖A‖‖B‖)``) are folded into the
  stored factors once, when a branch is frozen;
* per-branch scales (e.g. SD-LoRA's magnitudes) are applied as a per-rank-column scale,
  computed once per forward by ``scale_fn`` and shared by all blocks;
* branches with fixed scales can be merged into the ``qkv`` weight when frozen
  (``freeze_current(merge=True)``: InfLoRA); their factors are kept in the module's state
  and re-merged when a saved state is loaded, so the weights never need saving. :meth:`merged`
  folds everything into the weight for evaluation, so inference costs exactly a plain ViT
  forward.

Exactness and safety: the original rows of the adapted projections are copied the first time
a branch is merged into them; loading a state restores them before re-merging, and
:meth:`~clbench.adapters.Injection.remove` writes them back, so both are bit for bit (nothing
is subtracted). A state dict of the backbone holds those original rows (a state-dict hook on
each adapted ``qkv``), so saving and reloading a whole method never merges twice. Every merge
checks that the new weights are finite before writing any of them
(:class:`~clbench.errors.NonFiniteMerge` otherwise).

It is an :class:`~clbench.adapters.Injection`: forward hooks on the untouched ``qkv``
modules, whose parameters keep timm's names; a second ``QKVLowRank`` on the same blocks is an
error. :meth:`input_covariance` collects the uncentred covariance of the qkv inputs
(InfLoRA's subspace design) on the compute device. :func:`lowrank_inner` gives Frobenius
inner products of low-rank products from r×r Gram matrices, never a d×d matrix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import NonFiniteMerge
from .base import Injection

QKV_INDEX = {"q": 0, "k": 1, "v": 2}

# scale_fn() -> (frozen column scales: (R_frozen,) or (L, P, R_frozen) or None,
#                current-branch scale: float, 0-dim tensor, (L, P) tensor or None)
ScaleFn = Callable[[], tuple[Tensor | None, Tensor | float | None]]


def lowrank_inner(A1: Tensor, B1: Tensor, A2: Tensor, B2: Tensor) -> Tensor:
    """Frobenius inner products of rank-one terms: entry (i, j) is ⟨B1[:, i] A1[i], B2[:, j] A2[j]⟩.

    ``A*`` are (..., R*, d_in), ``B*`` are (..., d_out, R*); the result is (..., R1, R2), the
    elementwise product of the Gram matrices ``B1ᵀB2`` and ``A1A2ᵀ``. Summing a block of it
    gives ``⟨B1 A1, B2 A2⟩_F`` of the corresponding branches.
    """
    return (B1.transpose(-1, -2) @ B2) * (A1 @ A2.transpose(-1, -2))


def product_norm(A: Tensor, B: Tensor) -> Tensor:
    """‖B A‖_F over the last two dims of ``B @ A`` (batched), from r×r Grams."""
    return lowrank_inner(A, B, A, B).sum(dim=(-1, -2)).clamp_min(0).sqrt()


class InputCovariance:
    """Running sums of ``x xᵀ`` (float64, on the inputs' device) of the adapted qkv inputs."""

    def __init__(self, n_blocks: int, dim: int):
        self.sums: Tensor | None = None
        self.count: Tensor | None = None
        self.n_blocks, self.dim = n_blocks, dim

    def add(self, i: int, x: Tensor) -> None:
        h = x.reshape(-1, self.dim).float()
        if self.sums is None:
            self.sums = torch.zeros(self.n_blocks, self.dim, self.dim, dtype=torch.float64, device=h.device)
            self.count = torch.zeros((), dtype=torch.float64, device=h.device)
        self.sums[i] += (h.t() @ h).double()
        if i == 0:
            self.count += h.shape[0]


class QKVLowRank(Injection):
    """Low-rank branches on ``targets`` (e.g. ``"qv"``) of the given blocks' fused qkv."""

    weight_buffers = ("merged_A", "merged_B")  # merged factors, kept to redo merges: weights, not statistics

    def __init__(self, backbone: Backbone, blocks: Sequence[int] | None = None, targets: str = "qv"):
        super().__init__(backbone)
        if not targets or any(t not in QKV_INDEX for t in targets):
            raise ValueError(f"targets must be letters from 'qkv', got {targets!r}")
        self.block_ids = list(range(backbone.depth)) if blocks is None else sorted(blocks)
        self.targets = tuple(targets)
        for b in self.block_ids:
            self.module_at(backbone, f"vit.blocks.{b}.attn")
        self._qkv = [backbone.qkv(b) for b in self.block_ids]  # not registered: owned by backbone
        qkv = self._qkv[0]
        self.d_in, self.d_out = qkv.in_features, qkv.out_features // 3
        shape = (len(self.block_ids), len(self.targets))
        ref = qkv.weight
        self.frozen_A = nn.Parameter(ref.new_zeros(*shape, 0, self.d_in), requires_grad=False)
        self.frozen_B = nn.Parameter(ref.new_zeros(*shape, self.d_out, 0), requires_grad=False)
        self.frozen_ranks: list[int] = []  # rank of each frozen (unmerged) branch, in order
        self.register_parameter("A", None)  # current branch, (L, P, r, d_in)
        self.register_parameter("B", None)  # current branch, (L, P, d_out, r)
        # Branches merged into the qkv weights (kept so a fresh module can redo the merge).
        self.register_buffer("merged_A", None)  # (L, P, R_merged, d_in)
        self.register_buffer("merged_B", None)  # (L, P, d_out, R_merged), scale and norm folded in
        self.merged_ranks: list[int] = []
        self.scale_fn: ScaleFn | None = None
        self._starts = [QKV_INDEX[name] * self.d_out for name in self.targets]
        self._scales: tuple[Tensor | None, Tensor | None] = (None, None)
        self._original: list[Tensor] | None = None  # rows before the first persistent merge, per _rows()
        self._merged_rows: list[Tensor] | None = None  # rows saved by an active merged()
        for i, (b, module) in enumerate(zip(self.block_ids, self._qkv)):
            path = f"vit.blocks.{b}.attn.qkv"
            self.hook(path, module, self._make_hook(i), prepend=True)
            self.hook(path, module, self._make_state_hook(i), kind="state_dict")
        self.register_load_state_dict_post_hook(lambda module, keys: module._redo_merges())

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
        stored as a frozen branch (for branches whose scale never changes again); the
        factors are kept in ``merged_A``/``merged_B`` for :meth:`_redo_merges`.
        """
        if self.A is None:
            raise RuntimeError("no current branch to freeze")
        A, B = self.A.detach(), self.B.detach()
        if norm is not None:
            B = B / norm[..., None, None].to(B)
        if scale != 1.0:
            B = B * scale
        A, B = A.contiguous(), B.contiguous()
        if merge:
            self._merge_into_weights([(A, B)], "Merging the finished branch into the qkv weights "
                                     "(freeze_current(merge=True))")
            self.merged_A = A.clone() if self.merged_A is None else torch.cat([self.merged_A, A], dim=2)
            self.merged_B = B.clone() if self.merged_B is None else torch.cat([self.merged_B, B], dim=3)
            self.merged_ranks.append(A.shape[2])
        else:
            self.frozen_A = nn.Parameter(torch.cat([self.frozen_A, A], dim=2), requires_grad=False)
            self.frozen_B = nn.Parameter(torch.cat([self.frozen_B, B], dim=3), requires_grad=False)
            self.frozen_ranks.append(A.shape[2])
        self.A = self.B = None

    def drop_current(self) -> None:
        """Discard the current branch (e.g. when SD-LoRA-KD absorbs it into old magnitudes)."""
        self.A = self.B = None

    def get_extra_state(self) -> dict:
        return {"frozen_ranks": list(self.frozen_ranks), "merged_ranks": list(self.merged_ranks)}

    def set_extra_state(self, state: dict) -> None:
        self.frozen_ranks = list(state["frozen_ranks"])
        self.merged_ranks = list(state.get("merged_ranks", []))

    def _rows(self) -> Iterator[tuple[int, int, slice]]:
        for i in range(len(self.block_ids)):
            for p, start in enumerate(self._starts):
                yield i, p, slice(start, start + self.d_out)

    @torch.no_grad()
    def _merge_into_weights(self, merges: list[tuple[Tensor, Tensor]], doing: str, from_original: bool = False) -> None:
        """qkv[rows of p] += B[i, p] @ A[i, p] for every (A, B) in ``merges``, block and projection,
        starting from the current rows or (``from_original``) from the rows before any merge.

        All new rows are computed and checked for finite values before any is written; the
        first merge keeps a copy of the original rows (for exact reloads and :meth:`remove`)."""
        self._require_attached()
        if self._merged_rows is not None:
            raise RuntimeError("cannot merge branches into the weights inside merged()")
        new = []
        for k, (i, p, rows) in enumerate(self._rows()):
            weight = self._qkv[i].weight
            start = self._original[k] if from_original and self._original is not None else weight[rows]
            rows_k = start.to(weight).clone()
            for A, B in merges:
                rows_k += (B[i, p] @ A[i, p]).to(device=weight.device, dtype=weight.dtype)
            new.append(rows_k)
        self._check_finite(new, doing)
        if self._original is None:
            self._original = [self._qkv[i].weight[rows].clone() for i, _, rows in self._rows()]
        for (i, _, rows), rows_k in zip(self._rows(), new):
            self._qkv[i].weight[rows] = rows_k

    def _check_finite(self, new: list[Tensor], doing: str) -> None:
        """A NonFiniteMerge naming the first projection whose new rows are not all finite."""
        if bool(torch.stack([rows.isfinite().all() for rows in new]).all()):
            return
        i, p, rows = next(where for where, r in zip(self._rows(), new) if not bool(r.isfinite().all()))
        block = self.block_ids[i]
        loading = doing.startswith("Re-merging")
        fix = ("The state holds non-finite merged factors (saved from a diverged run, or damaged): load a state "
               "saved before the divergence." if loading else
               "Training diverged: lower train.lr or set train.grad_clip (e.g. --set train.grad_clip=1.0).")
        raise NonFiniteMerge(
            f"{doing} would make the {self.targets[p]} projection of block {block} (vit.blocks.{block}.attn.qkv, "
            f"rows {rows.start}:{rows.stop}) NaN or infinite on backbone '{self.backbone_tag}', so no weight was "
            f"changed. {fix}")

    @torch.no_grad()
    def _redo_merges(self) -> None:
        """After loading a state: make the qkv weights carry exactly the merges in the state.

        The original rows (kept at the first merge, or the current ones on a module that has
        merged nothing) get the merges task by task, with the same operations as in training,
        so the weights are bit-identical to the ones the state was saved from."""
        if self._merged_rows is not None:
            raise RuntimeError("cannot load a state inside merged()")
        if not self.attached or (not self.merged_ranks and self._original is None):
            return
        merges, start = [], 0
        for rank in self.merged_ranks:
            merges.append((self.merged_A[:, :, start:start + rank].contiguous(),
                           self.merged_B[..., start:start + rank].contiguous()))
            start += rank
        self._merge_into_weights(merges, "Re-merging the loaded state's merged branches", from_original=True)

    def _restore(self) -> None:
        """remove(): the original rows back into the qkv weights, exactly."""
        if self._merged_rows is not None:
            raise RuntimeError("leave merged() before remove()")
        if self._original is not None:
            with torch.no_grad():
                for (i, _, rows), original in zip(self._rows(), self._original):
                    self._qkv[i].weight[rows] = original
            self._original = None

    def _make_state_hook(self, i: int) -> Callable:
        """State-dict hook of block index ``i``'s qkv: report its rows without this adapter's merges."""
        def hook(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
            original = self._original if self._original is not None else self._merged_rows
            if original is None:
                return
            key = prefix + "weight"
            weight = state[key].detach().clone()
            for (j, _, rows), rows_k in zip(self._rows(), original):
                if j == i:
                    weight[rows] = rows_k.to(weight)
            state[key] = weight

        return hook

    # ------------------------------------------------------------------ forward
    def _branch_scales(self) -> tuple[Tensor | None, Tensor | None]:
        """Column scales of the frozen branches (L, P, R_frozen) and of the current one
        (L, P, r), each None when all ones."""
        if self.scale_fn is None:
            return None, None
        frozen, current = self.scale_fn()
        L, P = self.frozen_A.shape[:2]
        ref = self.frozen_A
        if frozen is not None and self.frozen_rank:
            frozen = frozen.expand(L, P, self.frozen_rank) if frozen.dim() == 1 else frozen
        else:
            frozen = None
        if current is not None and self.A is not None:
            c = torch.as_tensor(current, device=ref.device, dtype=ref.dtype)
            c = c.reshape(L, P, 1) if c.dim() == 2 else c.reshape(1, 1, 1)
            current = c.expand(L, P, self.rank)
        else:
            current = None
        return frozen, current

    def _add_branch_output(self, flat: Tensor, x: Tensor, A: Tensor, B: Tensor, scale: Tensor | None) -> None:
        """flat[:, rows of p] += (x A[p]ᵀ ⊙ scale[p]) B[p]ᵀ for every projection p (in place)."""
        P, R = A.shape[0], A.shape[1]
        h = x @ A.reshape(P * R, self.d_in).to(x.dtype).t()
        if scale is not None:
            h = h * scale.reshape(P * R).to(h.dtype)
        h = h.to(flat.dtype)
        for p, start in enumerate(self._starts):
            flat[:, start:start + self.d_out].addmm_(h[:, p * R:(p + 1) * R], B[p].to(flat.dtype).t())

    def _make_hook(self, i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            if self._merged_rows is not None:
                return None
            if i == 0:  # first adapted block of this forward: refresh the shared scales once
                self._scales = self._branch_scales()
            has_frozen, has_current = self.frozen_rank > 0, self.A is not None
            if not (has_frozen or has_current):
                return None
            x = args[0].reshape(-1, self.d_in)
            flat = out.view(-1, out.shape[-1])
            frozen_scale, current_scale = self._scales
            if has_frozen:
                self._add_branch_output(flat, x, self.frozen_A[i], self.frozen_B[i],
                                        None if frozen_scale is None else frozen_scale[i])
            if has_current:
                self._add_branch_output(flat, x, self.A[i], self.B[i],
                                        None if current_scale is None else current_scale[i])
            return out

        return hook

    @contextlib.contextmanager
    def input_covariance(self) -> Iterator[InputCovariance]:
        """Record Σ x xᵀ of every adapted block's qkv input over the forwards run inside.

        The sums (``.sums``: (L, d_in, d_in) float64) and the token count (``.count``) stay
        on the inputs' device; divide to get InfLoRA's uncentred covariance.
        """
        self._require_attached()
        recorder = InputCovariance(len(self.block_ids), self.d_in)
        handles = [module.register_forward_pre_hook(lambda m, args, i=i: recorder.add(i, args[0]))
                   for i, module in enumerate(self._qkv)]
        try:
            yield recorder
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def delta_weight(self, i: int, p: int) -> Tensor:
        """Dense ΔW (d_out × d_in) that the unmerged branches add to projection ``p`` of block index ``i``."""
        frozen_scale, current_scale = self._branch_scales()
        delta = self.frozen_A.new_zeros(self.d_out, self.d_in)
        if self.frozen_rank:
            B = self.frozen_B[i, p] if frozen_scale is None else self.frozen_B[i, p] * frozen_scale[i, p][None, :]
            delta += B @ self.frozen_A[i, p]
        if self.A is not None:
            B = self.B[i, p] if current_scale is None else self.B[i, p] * current_scale[i, p][None, :]
            delta += B @ self.A[i, p]
        return delta

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Fold all unmerged branches into the qkv weights (exact restore on exit); hooks are idle."""
        if self._merged_rows is not None or (self.frozen_rank == 0 and self.A is None):
            yield
            return
        self._require_attached()
        with torch.no_grad():
            saved = [self._qkv[i].weight[rows].clone() for i, _, rows in self._rows()]
            new = [rows_k + self.delta_weight(i, p).to(rows_k.dtype) for (i, p, _), rows_k in zip(self._rows(), saved)]
            self._check_finite(new, "Merging the adapter's branches for evaluation (merged())")
            for (i, _, rows), rows_k in zip(self._rows(), new):
                self._qkv[i].weight[rows] = rows_k
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
                f"merged_ranks={self.merged_ranks}, current_rank={self.rank}, {super().extra_repr()}")
