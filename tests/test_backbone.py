"""Backbone construction and weight loading (adapters and their hooks: test_adapters.py)."""

import torch
import pytest

from clbench.backbones import EMBEDDED_BACKBONE, create_backbone
from clbench.config import BackboneConfig
from clbench.errors import RegistryError, WeightsError


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


def test_dino_tags_resolve_to_timms_dino_vit_b16():
    """The SD-LoRA Fig. 5 backbone: the full tag, and the deprecated name the SD-LoRA code uses."""
    from clbench.backbones import _resolve_spec
    from clbench.weights import pretrained_identity

    for name in ("vit_base_patch16_224.dino", "vit_base_patch16_224_dino"):
        assert _resolve_spec(name) == ("vit_base_patch16_224.dino", {}, None)
    assert pretrained_identity("vit_base_patch16_224.dino") == ("vit_base_patch16_224.dino",
                                                                "timm/vit_base_patch16_224.dino")
    bb = create_backbone(BackboneConfig(name="vit_base_patch16_224_dino", weights="none"))
    assert (bb.depth, bb.embed_dim, bb.weights.tag) == (12, 768, "vit_base_patch16_224.dino")


def test_dino_presets_cover_fig5_for_every_method():
    import clbench.benchmarks  # noqa: F401
    from clbench.presets import PRESETS

    dino = {(p.method, p.benchmark, p.when["n_tasks"]) for p in PRESETS if p.name == "dino"}
    methods = {"l2p", "dualprompt", "coda-prompt", "hide-prompt", "inflora-b5", "sdlora", "sdlora-rr", "sdlora-kd"}
    assert dino == {(m, b, n) for m in methods for b, n in (("imagenet_a", 10), ("imagenet_r", 10), ("imagenet_r", 5))}
    for p in PRESETS:
        if p.name == "dino":
            assert p.values["backbone.name"] == "vit_base_patch16_224.dino" and p.reported is None
