"""Bottleneck adapters, SSF and VPT as injections: exact against dense references, sizes on
ViT-B/16, removal and switching off restore the plain forward bit for bit."""

import pytest
import timm
import torch
from torch.nn import functional as F

from clbench.adapters import SSF, BottleneckAdapter, VisualPrompts, injections
from clbench.backbones import Backbone
from clbench.errors import ConfigError
from clbench.weights import WeightsInfo

from conftest import tiny_vit

X = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def vit_b16():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    return Backbone(vit.eval(), "vit_base_patch16_224", WeightsInfo("random", None, None))


def randomise(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def dense_forward(bb, block_fn, x):
    """timm's forward_features with each block computed by ``block_fn(i, block, tokens)``."""
    vit = bb.vit
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for i, block in enumerate(vit.blocks):
        t = block_fn(i, block, t)
    return vit.norm(t)


def test_a_new_bottleneck_adapter_is_the_identity_and_a_trained_one_matches_the_dense_block():
    bb = tiny_vit(depth=3)
    plain = bb(X)
    adapter = BottleneckAdapter(bb, rank=4).eval()
    assert torch.equal(bb(X), plain)  # up-projection zero: the function is unchanged, bit for bit
    randomise(adapter)

    def block(i, blk, t):
        t = t + blk.attn(blk.norm1(t))
        h = F.relu(t @ adapter.down_weight[i].t() + adapter.down_bias[i])
        return t + blk.mlp(blk.norm2(t)) + 0.1 * (h @ adapter.up_weight[i].t() + adapter.up_bias[i])

    reference = bb.pool(dense_forward(bb, block, X))
    torch.testing.assert_close(bb(X), reference, atol=1e-5, rtol=1e-5)
    with adapter.disabled():
        assert torch.equal(bb(X), plain)
    adapter.train()  # dropout on the bottleneck only in training
    assert not torch.allclose(bb(X), reference, atol=1e-4)
    adapter.remove()
    assert torch.equal(bb(X), plain)


def test_ssf_matches_the_dense_reference_merges_exactly_and_restores():
    bb = tiny_vit(depth=2)
    plain = bb(X)
    ssf = SSF(bb)
    randomise(ssf, scale=0.1)

    def s(key, t):
        return t * ssf.scales[key] + ssf.shifts[key]

    def block(i, blk, t):
        a = blk.attn
        h = s(f"blocks_{i}_norm1", blk.norm1(t))
        B, N, C = h.shape
        qkv = s(f"blocks_{i}_attn_qkv", a.qkv(h)).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(B, N, C)
        t = t + s(f"blocks_{i}_attn_proj", a.proj(o))
        m = blk.mlp
        h = s(f"blocks_{i}_mlp_fc1", m.fc1(s(f"blocks_{i}_norm2", blk.norm2(t))))
        return t + s(f"blocks_{i}_mlp_fc2", m.fc2(m.act(h)))

    vit = bb.vit
    with ssf.disabled():  # the reference applies γ, β itself
        t = vit.norm_pre(vit._pos_embed(s("patch_embed", vit.patch_embed(X))))
        for i, blk in enumerate(vit.blocks):
            t = block(i, blk, t)
        reference = bb.pool(s("norm", vit.norm(t)))
    torch.testing.assert_close(bb(X), reference, atol=1e-5, rtol=1e-5)
    weights = {k: v.clone() for k, v in bb.state_dict().items()}
    with ssf.merged():
        torch.testing.assert_close(bb(X), reference, atol=1e-5, rtol=1e-5)  # a plain forward on folded weights
    assert all(torch.equal(v, weights[k]) for k, v in bb.state_dict().items())
    with ssf.disabled():
        assert torch.equal(bb(X), plain)
    ssf.remove()
    assert torch.equal(bb(X), plain)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_vpt_appends_prompts_after_the_patches_as_the_dense_reference(mode):
    bb = tiny_vit(depth=3)
    plain = bb(X)
    vpt = VisualPrompts(bb, length=2, mode=mode)
    assert not torch.allclose(bb(X), plain)  # zero prompts still take part in attention
    randomise(vpt)
    n = 2

    def block(i, blk, t):
        if mode == "deep" or i == 0:
            t = torch.cat([t, vpt.prompts[i if mode == "deep" else 0].expand(len(t), -1, -1)], dim=1)
        t = blk(t)
        return t[:, :-n] if mode == "deep" or i == len(bb.vit.blocks) - 1 else t

    with vpt.disabled():  # the reference appends and drops the prompts itself
        reference = bb.pool(dense_forward(bb, block, X))
    torch.testing.assert_close(bb(X), reference, atol=1e-5, rtol=1e-5)
    with vpt.disabled():
        assert torch.equal(bb(X), plain)
    vpt.remove()
    assert torch.equal(bb(X), plain)


def test_sizes_on_vit_b16_match_the_reference_modules():
    bb = vit_b16()
    sizes = {"adapter r=64": sum(p.numel() for p in BottleneckAdapter(bb, rank=64).parameters())}
    for inj in injections(bb):
        inj.remove()
    sizes["ssf"] = sum(p.numel() for p in SSF(bb).parameters())
    for inj in injections(bb):
        inj.remove()
    sizes["vpt deep 5"] = VisualPrompts(bb, 5, "deep").prompts.numel()
    for inj in injections(bb):
        inj.remove()
    sizes["vpt shallow 5"] = VisualPrompts(bb, 5, "shallow").prompts.numel()
    assert sizes == {"adapter r=64": 1_189_632, "ssf": 205_824, "vpt deep 5": 46_080, "vpt shallow 5": 3_840}


def test_injections_name_their_modules_and_refuse_a_backbone_without_them():
    bb = tiny_vit(depth=2)
    assert "vit.blocks.1.norm2: forward_pre" in repr(BottleneckAdapter(bb, rank=2))
    with pytest.raises(ConfigError, match="already has a BottleneckAdapter"):
        BottleneckAdapter(bb, rank=2)
    del bb.vit.blocks[1].mlp.fc1
    with pytest.raises(ConfigError, match="SSF cannot attach to backbone 'tiny'.*vit.blocks.1.mlp.fc1"):
        SSF(bb)


def test_cosine_head_is_sigma_times_the_cosine_and_ignores_row_norms():
    from clbench.heads import CosineLinear

    head = CosineLinear(8, 3)
    x = torch.randn(5, 8)
    with torch.no_grad():
        head.sigma.fill_(2.5)
    expected = 2.5 * torch.nn.functional.cosine_similarity(x[:, None], head.weight[None], dim=-1)
    torch.testing.assert_close(head(x), expected)
    with torch.no_grad():
        head.weight[1] *= 7  # a class's row norm does not change its score
    torch.testing.assert_close(head(x), expected)
    assert CosineLinear(8, 3, learn_sigma=False).sigma.requires_grad is False
