"""Backbone hooks (input tokens, key/value prefixes) and weight loading."""

import torch
import pytest
from torch.nn import functional as F

from clbench.backbones import EMBEDDED_BACKBONE, create_backbone
from clbench.config import BackboneConfig
from clbench.errors import RegistryError, WeightsError

from conftest import tiny_vit


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


def test_prefix_hook_matches_reference_attention():
    bb = tiny_vit()
    attn = bb.vit.blocks[1].attn
    x = torch.randn(3, 17, 32)
    keys, values = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    with bb.prompted(prefixes={1: (keys, values)}):
        got = attn(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, reference_prefix_attention(attn, x, keys, values), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x), reference_prefix_attention(attn, x, keys[:, :0], values[:, :0]), atol=1e-5, rtol=1e-5)


def test_prefixes_are_per_sample_and_batch_independent():
    bb = tiny_vit()
    x = torch.rand(4, 3, 16, 16)
    keys, values = torch.randn(4, 3, 32), torch.randn(4, 3, 32)
    with bb.prompted(prefixes={0: (keys, values), 1: (keys, values)}):
        batched = bb(x)
    singles = torch.cat([_single(bb, x, keys, values, i) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched, bb(x), atol=1e-3)  # the prefixes do change the output


def _single(bb, x, keys, values, i):
    with bb.prompted(prefixes={0: (keys[i:i + 1], values[i:i + 1]), 1: (keys[i:i + 1], values[i:i + 1])}):
        return bb(x[i:i + 1])


def test_empty_prompts_equal_the_plain_model():
    bb = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    plain = bb(x)
    empty = torch.zeros(1, 0, 32)
    with bb.prompted(tokens=empty, prefixes={0: (empty, empty)}):
        torch.testing.assert_close(bb(x), plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bb(x), plain)  # hooks are idle outside the context


def test_input_tokens_are_inserted_after_cls():
    bb = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    prompts = torch.randn(1, 4, 32)
    with bb.prompted(tokens=prompts):
        tokens = bb.forward_tokens(x)
    vit = bb.vit
    seq = vit._pos_embed(vit.patch_embed(x))
    seq = torch.cat([seq[:, :1], prompts.expand(2, -1, -1), seq[:, 1:]], dim=1)
    expected = vit.norm(vit.blocks(seq))
    assert tokens.shape == (2, 1 + 4 + 16, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_weights_from_file_roundtrip_and_checks(tmp_path):
    from safetensors.torch import save_file

    random_cfg = BackboneConfig(name=EMBEDDED_BACKBONE, weights="none")
    torch.manual_seed(3)
    a = create_backbone(random_cfg)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.vit.state_dict().items()}, str(path))
    torch.save(a.vit.state_dict(), tmp_path / "w.pth")
    x = torch.rand(2, 3, 32, 32)
    for file in (path, tmp_path / "w.pth"):
        b = create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(file)))
        torch.testing.assert_close(b(x), a(x))
        assert b.weights.source == "file" and len(b.weights.sha256) == 64
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(tmp_path / "missing.safetensors")))
    with pytest.raises(WeightsError, match="SHA-256"):
        create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(path), weights_sha256="0" * 64))
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="does not match"):
        create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(tmp_path / "bad.safetensors")))


def test_bundled_embedded_weights_load():
    bb = create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE))
    assert bb.weights.source == "bundled" and bb.embed_dim == 96 and bb.depth == 6
    assert bb(torch.rand(1, 3, 32, 32)).shape == (1, 96)


def test_unknown_backbone_suggests():
    with pytest.raises(RegistryError, match="Unknown backbone 'vit_base_patch16_2244'.*Did you mean"):
        create_backbone(BackboneConfig(name="vit_base_patch16_2244"))
