"""Any timm ViT: backbone.img_size builds DINOv2, CLIP, EVA-02 and DeiT for the benchmark's input
size (tiny random-weight versions here), and LoRA and prompt methods run on them."""

from __future__ import annotations

import pytest
import torch

from clbench.backbones import BackboneSpec, create_backbone
from clbench.config import BackboneConfig
from clbench.errors import ConfigError
from clbench.methods.base import StreamInfo
from clbench.registry import BACKBONES, METHODS, register_backbone
from clbench.resolve import resolve
from clbench.testing import run_method

# family: (timm architecture, native size, a small size that its patch divides)
FAMILIES = {"dinov2": ("vit_small_patch14_dinov2", 518, 28), "clip": ("vit_base_patch16_clip_224", 224, 32),
            "eva02": ("eva02_tiny_patch14_224", 224, 28), "deit": ("deit_tiny_patch16_224", 224, 32)}
INFO = StreamInfo(4, ((0, 2), (2, 4)))


def tiny(family: str) -> str:
    name = f"test_tiny_{family}"
    if name not in BACKBONES:  # tiny depth and width through timm's own keyword arguments
        register_backbone(name)(BackboneSpec(FAMILIES[family][0], dict(embed_dim=32, depth=5, num_heads=2)))
    return name


def backbone(family: str, size: int | None = None):
    return create_backbone(BackboneConfig(name=tiny(family), weights="none", img_size=size or FAMILIES[family][2]))


@pytest.mark.parametrize("family", FAMILIES)
def test_img_size_resizes_the_position_embeddings(family):
    _, native, size = FAMILIES[family]
    bb = backbone(family)
    grid = (size // bb.vit.patch_embed.patch_size[0]) ** 2
    assert bb.vit.patch_embed.img_size in ((size, size), [size, size])
    if getattr(bb.vit, "pos_embed", None) is not None:
        prefix = 0 if getattr(bb.vit, "no_embed_class", False) else bb.num_prefix_tokens
        assert bb.vit.pos_embed.shape[1] == grid + prefix
    assert bb(torch.rand(2, 3, size, size)).shape == (2, 32)
    assert native != size


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_on_every_family(family):
    bb = backbone(family)
    calls = []
    bb.vit.blocks[0].attn.qkv.register_forward_hook(lambda *a: calls.append(1))
    method = METHODS.get("lora")(METHODS.get("lora").Config(), bb, INFO)
    results = run_method(method, 2, steps=1)
    assert [r["task"] for r in results] == [0, 1] and results[-1]["trainable_params"] > 0
    assert calls  # the qkv module runs (EVA's separate-bias switch), so its LoRA branch applies


@pytest.mark.parametrize("family", ["dinov2", "clip", "deit"])
def test_prompt_method_trains_on_absolute_position_families(family):
    method = METHODS.get("dualprompt")(METHODS.get("dualprompt").Config(), backbone(family), INFO)
    assert [r["task"] for r in run_method(method, 2, steps=1)] == [0, 1]


@pytest.mark.parametrize("name", ["dualprompt", "l2p"])
def test_prompts_on_rotary_embeddings_are_a_clear_error(name):
    with pytest.raises(ConfigError, match="rotary position embeddings.*lora"):
        METHODS.get(name)(METHODS.get(name).Config(), backbone("eva02"), INFO)


def test_a_size_the_patch_does_not_divide_names_both_sizes_and_the_fix():
    with pytest.raises(ConfigError, match=r"patch 14 px, native 518 px\) cannot take 32 px.*multiple of 14, e\.g\. 28"):
        backbone("dinov2", 32)


def test_img_size_defaults_to_the_benchmark_input_size_and_must_match_it():
    run = resolve("lora", "random", 1, None, [("benchmark.image_size", "48")])
    assert run.config.backbone.img_size == 48 and run.sources["backbone.img_size"] == "benchmark input size"
    shapes = resolve("simplecil", "shapes", 1, None, [("backbone.name", "vit_small_patch16_224"),
                                                      ("backbone.weights", "none")])
    assert shapes.config.backbone.img_size == 32  # the embedded 32 px benchmark on a random ViT-S
    with pytest.raises(ConfigError, match=r"backbone.img_size=224 but the benchmark feeds 32 px.*img_size=32"):
        resolve("lora", "shapes", 1, None, [("backbone.img_size", "224")])


def test_pretrained_weights_load_into_a_resized_model(tmp_path):
    from safetensors.torch import save_file

    native = create_backbone(BackboneConfig(name=tiny("deit"), weights="none", img_size=64))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in native.vit.state_dict().items()}, str(path))
    resized = create_backbone(BackboneConfig(name=tiny("deit"), weights=str(path), img_size=32))
    assert resized.vit.pos_embed.shape[1] == 1 + 4 and native.vit.pos_embed.shape[1] == 1 + 16
    assert torch.equal(resized.vit.blocks[1].attn.qkv.weight, native.vit.blocks[1].attn.qkv.weight)
