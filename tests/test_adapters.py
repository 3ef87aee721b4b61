"""Injections: prompt tokens and key/value prefixes, and the lifecycle every adapter shares
(exact remove(), repr, build-time checks of the backbone, stacking, safe merging)."""

import copy

import pytest
import timm
import torch
from timm.layers.attention import AttentionRope
from torch import nn

from clbench.adapters import KVPrefixes, PromptTokens, QKVLowRank, injections
from clbench.backbones import Backbone
from clbench.engine.state import restore_state
from clbench.errors import ConfigError, NonFiniteMerge
from clbench.weights import WeightsInfo

from conftest import tiny_vit

X = torch.rand(3, 3, 16, 16)


def reference_prefix_attention(attn, x, keys, values):
    """Multi-head attention where queries also attend to prefix keys/values (per sample)."""
    B, N, C = x.shape
    H, hd = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    pk = keys.expand(B, -1, -1).reshape(B, -1, H, hd).transpose(1, 2)
    pv = values.expand(B, -1, -1).reshape(B, -1, H, hd).transpose(1, 2)
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    weights = (q @ k.transpose(-2, -1) * hd**-0.5).softmax(-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


def branch(L, P, r, d, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, P, r, d, generator=g) * scale, torch.randn(L, P, d, r, generator=g) * scale


def qkv_weights(bb):
    return [bb.qkv(b).weight.detach().clone() for b in range(bb.depth)]


def no_hooks(bb):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._state_dict_hooks for m in bb.modules())


class Holder(nn.Module):
    """A method's layout: the backbone first, then its adapter."""

    def __init__(self, bb):
        super().__init__()
        self.backbone = bb
        self.adapter = QKVLowRank(bb)


# ---------------------------------------------------------------------------- prompt injections


def test_prefix_hook_matches_reference_attention():
    bb = tiny_vit()
    prefixes = KVPrefixes(bb, blocks=[1])
    attn = bb.vit.blocks[1].attn
    x = torch.randn(3, 17, 32)
    keys, values = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    with prefixes.using({1: (keys, values)}):
        got = attn(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, reference_prefix_attention(attn, x, keys, values), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x), reference_prefix_attention(attn, x, keys[:, :0], values[:, :0]), atol=1e-5, rtol=1e-5)


def test_prefixes_are_per_sample_and_batch_independent():
    bb = tiny_vit()
    prefixes = KVPrefixes(bb, blocks=[0, 1])
    x = torch.rand(4, 3, 16, 16)
    keys, values = torch.randn(4, 3, 32), torch.randn(4, 3, 32)
    with prefixes.using({0: (keys, values), 1: (keys, values)}):
        batched = bb(x)
    singles = []
    for i in range(4):
        with prefixes.using({0: (keys[i:i + 1], values[i:i + 1]), 1: (keys[i:i + 1], values[i:i + 1])}):
            singles.append(bb(x[i:i + 1]))
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched, bb(x), atol=1e-3)  # the prefixes do change the output
    with pytest.raises(ValueError, match="blocks \\[0, 1\\]"):
        prefixes.using({2: (keys, values)})


def test_empty_prompts_equal_the_plain_model():
    bb = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    plain = bb(x)
    tokens, prefixes = PromptTokens(bb), KVPrefixes(bb, blocks=[0])
    empty = torch.zeros(1, 0, 32)
    with tokens.using(empty), prefixes.using({0: (empty, empty)}):
        torch.testing.assert_close(bb(x), plain, atol=1e-6, rtol=1e-6)
    assert torch.equal(bb(x), plain)  # hooks are idle outside the context


def test_input_tokens_are_inserted_after_cls():
    bb = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    prompts = torch.randn(1, 4, 32)
    with PromptTokens(bb).using(prompts):
        tokens = bb.forward_tokens(x)
    vit = bb.vit
    seq = vit._pos_embed(vit.patch_embed(x))
    seq = torch.cat([seq[:, :1], prompts.expand(2, -1, -1), seq[:, 1:]], dim=1)
    expected = vit.norm(vit.blocks(seq))
    assert tokens.shape == (2, 1 + 4 + 16, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- remove()


def test_remove_restores_the_plain_forward_after_frozen_current_and_merged_lora_branches():
    bb = tiny_vit()
    fresh, plain = copy.deepcopy(bb), qkv_weights(bb)
    ad = QKVLowRank(bb, targets="qkv")
    ad.add_branch(3, *branch(2, 3, 3, 32, 0))
    ad.freeze_current(merge=True)  # into the weights
    ad.add_branch(2, *branch(2, 3, 2, 32, 1))
    ad.freeze_current()  # a frozen branch
    ad.add_branch(4, *branch(2, 3, 4, 32, 2))  # the current branch
    merged = qkv_weights(bb)
    restore_state(ad, copy.deepcopy(ad.state_dict()))  # a reload re-merges from the original rows
    assert all(torch.equal(w, m) for w, m in zip(qkv_weights(bb), merged))
    with ad.merged():
        assert not torch.allclose(bb(X), fresh(X), atol=1e-3)
        with pytest.raises(RuntimeError, match="merged"):
            ad.remove()
    assert not torch.equal(bb.qkv(0).weight, plain[0])
    assert injections(bb) == [ad]
    ad.remove()
    assert all(torch.equal(w, p) for w, p in zip(qkv_weights(bb), plain))  # bit for bit, nothing subtracted
    assert torch.equal(bb(X), fresh(X)) and no_hooks(bb) and injections(bb) == []
    assert "removed" in repr(ad)
    with pytest.raises(RuntimeError, match="removed"):
        ad.merged().__enter__()
    QKVLowRank(bb)  # the blocks are free again


def test_remove_restores_the_plain_forward_after_prompt_tokens_and_prefixes():
    bb = tiny_vit()
    fresh = copy.deepcopy(bb)
    tokens, prefixes = PromptTokens(bb), KVPrefixes(bb, blocks=[0, 1])
    prompt, kv = torch.randn(1, 3, 32), torch.randn(1, 2, 32)
    with tokens.using(prompt), prefixes.using({0: (kv, kv), 1: (kv, kv)}):
        assert not torch.allclose(bb(X), fresh(X), atol=1e-3)
    tokens.remove()
    prefixes.remove()
    assert no_hooks(bb) and injections(bb) == []
    with tokens.using(prompt), prefixes.using({0: (kv, kv), 1: (kv, kv)}):  # fed, but no longer attached
        assert torch.equal(bb.forward_tokens(X), fresh.forward_tokens(X))


# ---------------------------------------------------------------------------- repr and stacking


def test_repr_names_the_hooked_modules():
    bb = tiny_vit()
    lora = repr(QKVLowRank(bb, blocks=[1]))
    assert "vit.blocks.1.attn.qkv: forward+state_dict" in lora and "vit.blocks.0" not in lora
    prefixes = repr(KVPrefixes(bb, blocks=[0]))
    for hooked in ("vit.blocks.0.attn: forward_pre", "vit.blocks.0.attn.qkv: forward_pre+forward",
                   "vit.blocks.0.attn.proj: forward_pre"):
        assert hooked in prefixes
    assert "vit.norm_pre: forward" in repr(PromptTokens(bb))


def test_a_second_injection_of_the_same_kind_on_the_same_modules_is_an_error():
    bb = tiny_vit()
    first = QKVLowRank(bb, blocks=[1])
    with pytest.raises(ConfigError, match="'tiny' already has a QKVLowRank on vit.blocks.1.attn.qkv"):
        QKVLowRank(bb)  # hooks block 0 first, then meets block 1
    assert not bb.qkv(0)._forward_hooks and len(bb.qkv(1)._forward_hooks) == 1  # nothing left behind
    QKVLowRank(bb, blocks=[0])  # other blocks: fine
    KVPrefixes(bb, blocks=[1])
    with pytest.raises(ConfigError, match="already has a KVPrefixes on vit.blocks.1.attn"):
        KVPrefixes(bb, blocks=[1])
    PromptTokens(bb)
    with pytest.raises(ConfigError, match="PromptTokens on vit.norm_pre"):
        PromptTokens(bb)
    assert [type(i).__name__ for i in injections(bb)] == ["QKVLowRank", "QKVLowRank", "KVPrefixes", "PromptTokens"]
    assert injections(bb)[0] is first


def test_lora_and_prefixes_share_a_qkv_and_the_branch_acts_on_the_real_rows_only():
    bb = tiny_vit()
    ad = QKVLowRank(bb)
    ad.add_branch(2, *branch(2, 2, 2, 32, 0, scale=0.3))
    prefixes = KVPrefixes(bb, blocks=[0, 1])
    kv = torch.randn(3, 2, 32)
    with prefixes.using({0: (kv, kv), 1: (kv, kv)}):
        hooked = bb(X)
        with ad.merged():  # the same function with the branch in the weights
            torch.testing.assert_close(bb(X), hooked, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- build-time checks


def _unfused_eva() -> Backbone:
    vit = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                            depth=2, num_heads=2, num_classes=0, qkv_fused=False)
    return Backbone(vit, "eva02_tiny_patch14_224.test", WeightsInfo("random", None, None))


@pytest.mark.parametrize("build", [lambda bb: QKVLowRank(bb), lambda bb: KVPrefixes(bb, blocks=[0]), lambda bb: bb.qkv(0)])
def test_a_vit_without_fused_qkv_is_a_clear_config_error(build):
    bb = _unfused_eva()
    assert bb.vit.blocks[0].attn.qkv is None  # timm's separate q/k/v projections
    with pytest.raises(ConfigError, match="'eva02_tiny_patch14_224.test' has no fused q/k/v projection in block 0.*use a ViT"):
        build(bb)
    assert no_hooks(bb)


def test_an_unfused_block_leaves_the_other_blocks_unhooked():
    bb = tiny_vit()
    bb.vit.blocks[1].attn = AttentionRope(32, num_heads=2, qkv_fused=False)
    with pytest.raises(ConfigError, match="no fused q/k/v projection in block 1"):
        KVPrefixes(bb, blocks=[0, 1])
    with pytest.raises(ConfigError, match="block 1"):
        QKVLowRank(bb)
    assert no_hooks(bb)


def test_a_missing_hooked_module_is_a_clear_config_error():
    bb = tiny_vit()
    del bb.vit.norm_pre
    with pytest.raises(ConfigError, match="PromptTokens cannot attach to backbone 'tiny': it hooks 'vit.norm_pre', "
                                          "but 'vit' has no module 'norm_pre'"):
        PromptTokens(bb)
    del bb.vit.blocks[1].attn.proj
    with pytest.raises(ConfigError, match="'vit.blocks.1.attn.proj'"):
        KVPrefixes(bb, blocks=[0, 1])
    with pytest.raises(ConfigError, match="'vit.blocks' has 2 entries. Choose indices 0..1"):
        QKVLowRank(bb, blocks=[4])
    assert no_hooks(bb)


# ---------------------------------------------------------------------------- safe merging


def _poisoned(L=2, P=2, r=2, d=32):
    A, B = branch(L, P, r, d, 0)
    B[1, 1, 5, 0] = float("nan")  # block 1, projection v
    return A, B


def test_a_non_finite_merge_for_evaluation_raises_and_leaves_the_weights_untouched():
    bb = tiny_vit()
    ad = QKVLowRank(bb)
    ad.add_branch(2, *branch(2, 2, 2, 32, 1))
    ad.freeze_current()
    ad.add_branch(2, *_poisoned())
    before = qkv_weights(bb)
    with pytest.raises(NonFiniteMerge, match="v projection of block 1 .*rows 64:96.*no weight was changed"):
        with ad.merged():
            pass
    assert all(torch.equal(w, b) for w, b in zip(qkv_weights(bb), before))
    assert ad._merged_rows is None  # not left half-merged: the hooks still act
    ad.B.data.nan_to_num_(0.0)
    with ad.merged():
        assert not torch.equal(bb.qkv(0).weight, before[0])


def test_a_non_finite_merge_on_freeze_or_load_raises_and_leaves_the_weights_untouched():
    bb = tiny_vit()
    ad = QKVLowRank(bb)
    ad.add_branch(2, *branch(2, 2, 2, 32, 1))
    ad.freeze_current(merge=True)
    ad.add_branch(2, *_poisoned())
    before = qkv_weights(bb)
    with pytest.raises(NonFiniteMerge, match="freeze_current.*v projection of block 1.*lower train.lr"):
        ad.freeze_current(merge=True)
    assert all(torch.equal(w, b) for w, b in zip(qkv_weights(bb), before))
    assert ad.A is not None and ad.merged_ranks == [2]  # the branch is neither lost nor recorded
    state = copy.deepcopy(ad.state_dict())
    state["merged_B"][1, 1, 5, 0] = float("inf")
    with pytest.raises(NonFiniteMerge, match="Re-merging the loaded state.*v projection of block 1"):
        restore_state(ad, state)
    assert all(torch.equal(w, b) for w, b in zip(qkv_weights(bb), before))


# ---------------------------------------------------------------------------- state dicts


def test_a_saved_method_state_holds_the_original_rows_and_reloads_never_merge_twice():
    bb = tiny_vit()
    fresh_bb, plain = copy.deepcopy(bb), qkv_weights(bb)
    holder = Holder(bb)
    for task in range(2):
        holder.adapter.add_branch(3, *branch(2, 2, 3, 32, task, scale=0.3))
        holder.adapter.freeze_current(merge=True)
    merged = qkv_weights(bb)
    state = copy.deepcopy(holder.state_dict())  # backbone included, as in a checkpoint
    assert all(torch.equal(state[f"backbone.vit.blocks.{b}.attn.qkv.weight"], plain[b]) for b in range(2))
    assert not torch.equal(merged[0], plain[0])  # the live weights do carry the merges
    reloaded = Holder(fresh_bb)
    for _ in range(2):  # into a fresh module, then again into the used one
        restore_state(reloaded, state, omitted=())
        assert all(torch.equal(w, m) for w, m in zip(qkv_weights(fresh_bb), merged))
    restore_state(holder, state, omitted=())
    assert all(torch.equal(w, m) for w, m in zip(qkv_weights(bb), merged))
