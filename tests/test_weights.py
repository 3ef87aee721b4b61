"""Weights: Hugging Face cache offline, local files (safetensors, torch, Google npz), hub errors, hashes."""

import hashlib

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from clbench import backbones
from clbench.backbones import EMBEDDED_BACKBONE, create_backbone
from clbench.config import BackboneConfig
from clbench.errors import RegistryError, WeightsError
from clbench.experiment import plan

TAG = "test_vit.r160_in1k"  # a real timm tag on the hub, 0.37 M parameters
REPO = f"timm/{TAG}"


def hf_cache(root, repo_id, state, revision="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face hub cache as huggingface_hub lays it out: refs/main, snapshots/<rev>/file."""
    folder = root / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text('{"architecture": "test_vit"}')
    return snap / "model.safetensors"


def random_state(name=TAG, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).state_dict()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted in offline mode")

    monkeypatch.setattr(backbones, "_from_hub", no_network)
    return tmp_path / "hub"


def test_a_full_tag_resolves_from_the_hf_cache_offline(offline):
    state = random_state()  # includes a 1000-class head, as the hub file does
    path = hf_cache(offline, REPO, state)
    bb = create_backbone(BackboneConfig(name=TAG, weights="auto"))
    assert bb.weights.source == "hf-cache" and bb.weights.path == str(path) and bb.weights.tag == TAG
    assert bb.weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(bb.vit.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    plan(["simplecil"], "shapes", [1], None, [("backbone.name", TAG), ("engine.output_dir", str(offline.parent / "o"))])


def test_offline_without_the_file_says_what_to_download_and_where(offline, tmp_path):
    message = rf"'hf download {REPO}'.*models--timm--{TAG}.*{offline}.*HF_HUB_OFFLINE=1.*backbone.weights=/path"
    with pytest.raises(WeightsError, match=message):
        create_backbone(BackboneConfig(name=TAG, weights="auto"))
    out = tmp_path / "results"
    with pytest.raises(WeightsError, match=message):  # before any run starts
        plan(["simplecil"], "shapes", [1], None, [("backbone.name", TAG), ("engine.output_dir", str(out))])
    assert not out.exists()


def test_online_misses_go_to_the_hub_and_failures_explain(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_create(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained:
            raise OSError("Temporary failure in name resolution")
        return timm.models.create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", fake_create)
    with pytest.raises(WeightsError, match=r"could not be downloaded \(OSError: Temporary failure.*hf download"):
        create_backbone(BackboneConfig(name=TAG, weights="auto"))
    assert calls == [False, True]


def test_mismatched_and_corrupt_files_are_clear_errors(offline, tmp_path):
    wrong = tmp_path / "small.safetensors"
    save_file(random_state("test_vit2.r160_in1k"), str(wrong))
    with pytest.raises(WeightsError, match=r"small.safetensors does not match backbone .*full timm arch.tag must match"):
        create_backbone(BackboneConfig(name=TAG, weights=str(wrong)))
    path = hf_cache(offline, REPO, random_state())
    path.write_bytes(path.read_bytes()[:1000])  # a truncated download in the cache
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        create_backbone(BackboneConfig(name=TAG, weights="auto"))


def test_a_pinned_sha256_must_match(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(random_state(), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    bb = create_backbone(BackboneConfig(name=TAG, weights=str(path), weights_sha256=digest))
    assert bb.weights.source == "file" and bb.weights.sha256 == digest
    with pytest.raises(WeightsError, match=r"has SHA-256 .* expects 0{64}.*download it again"):
        create_backbone(BackboneConfig(name=TAG, weights=str(path), weights_sha256="0" * 64))


def test_torch_checkpoints_with_wrappers_and_bare_names(tmp_path):
    state = random_state()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    bb = create_backbone(BackboneConfig(name="test_vit", weights=str(path)))
    assert torch.equal(bb.vit.pos_embed, state["pos_embed"])
    assert bb.weights.tag == TAG  # a bare architecture name is recorded with the tag timm resolves


def test_unknown_tags_are_registry_errors():
    with pytest.raises(RegistryError, match=r"no pretrained tag .r160_in1x.*Did you mean .test_vit.r160_in1k."):
        create_backbone(BackboneConfig(name="test_vit.r160_in1x", weights="none"))


def to_google_npz(vit, path):
    """Write a timm ViT in the original Google (big_vision-free) .npz layout that timm reads."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    d, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0), "embedding/bias": sd["patch_embed.proj.bias"],
         "cls": sd["cls_token"], "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"]}
    for i in range(len(vit.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        attn = p + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for n, wt, bias in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[attn + f"{n}/kernel"] = wt.T.reshape(d, heads, d // heads)
            w[attn + f"{n}/bias"] = bias.reshape(heads, d // heads)
        w[attn + "out/kernel"] = sd[b + "attn.proj.weight"].reshape(d, heads, d // heads).transpose(1, 2, 0)
        w[attn + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + f"{ln}/scale"], w[p + f"{ln}/bias"] = sd[b + f"{name}.weight"], sd[b + f"{name}.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def test_the_google_npz_route(tmp_path):
    source = create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights="auto")).vit
    path = tmp_path / "ViT-micro.npz"
    to_google_npz(source, path)
    bb = create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(path)))
    assert bb.weights.source == "file" and bb.weights.path.endswith(".npz")
    for key, value in source.state_dict().items():
        assert torch.allclose(bb.vit.state_dict()[key].float(), value.float()), key
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{"embedding/kernel": np.zeros((4, 4, 3, 96), dtype=np.float32)})
    with pytest.raises(WeightsError, match=r"Cannot load .*broken.npz.*original Google .npz"):
        create_backbone(BackboneConfig(name=EMBEDDED_BACKBONE, weights=str(broken)))
