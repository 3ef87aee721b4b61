"""The shared low-rank adapter on timm's fused qkv: fused = looped reference = merged."""

import copy

import pytest
import torch

from clbench.adapters import QKV_INDEX, QKVLowRank

from conftest import tiny_vit

X = torch.rand(3, 3, 16, 16)


def reference(bb_plain, branches, targets, blocks):
    """A copy of the plain model whose qkv weights get Σ_k s_k B_k A_k, branch by branch."""
    ref = copy.deepcopy(bb_plain)
    d = ref.qkv(0).in_features
    with torch.no_grad():
        for scale, A, B in branches:  # loop over tasks, then blocks, then projections
            for i, block in enumerate(blocks):
                for p, name in enumerate(targets):
                    rows = slice(QKV_INDEX[name] * d, (QKV_INDEX[name] + 1) * d)
                    s = scale[i, p] if torch.is_tensor(scale) and scale.dim() == 2 else scale
                    ref.qkv(block).weight[rows] += s * (B[i, p] @ A[i, p])
    return ref


def random_branch(L, P, r, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, P, r, d, generator=g) * 0.1, torch.randn(L, P, d, r, generator=g) * 0.1


@pytest.mark.parametrize("targets, blocks", [("qv", None), ("kv", [0]), ("qkv", [1])])
def test_fused_looped_and_merged_agree_with_mixed_ranks(targets, blocks):
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    ad = QKVLowRank(bb, blocks=blocks, targets=targets)
    L, P, d = len(ad.block_ids), len(targets), ad.d_in
    raw = []
    for task, rank in enumerate([4, 2, 3]):
        A, B = random_branch(L, P, rank, d, task)
        ad.add_branch(rank, A, B)
        norm = torch.rand(L, P) + 0.5
        raw.append((A, B, norm))
        ad.freeze_current(norm=norm)
    A, B = random_branch(L, P, 5, d, 99)
    ad.add_branch(5, A, B)
    magnitudes = torch.tensor([0.7, 1.3, 0.9])
    current = torch.rand(L, P) + 0.5
    ad.scale_fn = lambda: (torch.repeat_interleave(magnitudes, torch.tensor(ad.frozen_ranks)), current)
    branches = [(m / n, A_, B_) for m, (A_, B_, n) in zip(magnitudes, raw)] + [(current, A, B)]
    expected = reference(plain, branches, targets, ad.block_ids)(X)
    torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)
    weights = [bb.qkv(b).weight.clone() for b in range(bb.depth)]
    with ad.merged():
        torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(w, bb.qkv(b).weight) for b, w in enumerate(weights))  # exact restore
    torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_current_factors_and_scales():
    bb = tiny_vit()
    for p in bb.parameters():
        p.requires_grad_(False)
    ad = QKVLowRank(bb)
    ad.add_branch(2, *random_branch(2, 2, 2, 32, 0))
    ad.freeze_current()
    ad.add_branch(2, *random_branch(2, 2, 2, 32, 1))
    magnitude = torch.ones(1, requires_grad=True)
    ad.scale_fn = lambda: (magnitude.expand(2), None)
    bb(X).square().sum().backward()
    assert ad.A.grad is not None and ad.B.grad is not None and magnitude.grad is not None
    assert ad.frozen_A.grad is None and ad.frozen_B.grad is None
    assert all(p.grad is None for p in bb.parameters())


def test_merge_on_freeze_keeps_the_function_and_stores_nothing():
    bb = tiny_vit()
    ad = QKVLowRank(bb)
    ad.add_branch(3, *random_branch(2, 2, 3, 32, 0))
    before = bb(X)
    ad.freeze_current(merge=True)
    torch.testing.assert_close(bb(X), before, atol=1e-5, rtol=1e-5)
    assert ad.frozen_rank == 0 and ad.A is None


def test_default_init_is_a_no_op_and_works_without_grad_and_under_autocast():
    bb = tiny_vit()
    plain = bb(X)
    ad = QKVLowRank(bb)
    ad.add_branch(4)  # B = 0 -> the branch adds nothing
    torch.testing.assert_close(bb(X), plain)
    ad.B.data.normal_()
    with torch.inference_mode():
        out = bb(X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bb(X)
    torch.testing.assert_close(low.float(), out, atol=0.1, rtol=0.1)
    assert not torch.allclose(out, plain)
