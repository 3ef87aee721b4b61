"""Shared prompt infrastructure and the invariants every prompt method must keep."""

import pytest
import torch
from torch.nn import functional as F

from clbench.adapters import KVPrefixes, PromptTokens, injections
from clbench.config import BackboneConfig, BenchmarkConfig, TrainConfig, apply_values
import clbench.benchmarks  # noqa: F401  (registers the presets this file checks)
from clbench.presets import PRESETS
from clbench.prompting import batch_vote, frozen_query, kv_prefixes, select_top_k
from clbench.registry import METHODS

from conftest import tiny_vit
from prompt_fixtures import build, run_tasks, task_ctx

PROMPT_METHODS = ["l2p", "dualprompt", "coda-prompt", "hide-prompt"]


def test_query_pass_is_the_frozen_unprompted_backbone_without_grad():
    bb = tiny_vit()
    x = torch.rand(3, 3, 16, 16)
    plain = bb(x)
    keys = torch.randn(3, 2, 32, requires_grad=True)
    tokens, prefixes = PromptTokens(bb), KVPrefixes(bb, blocks=[0])
    with tokens.using(torch.randn(1, 2, 32)), prefixes.using({0: (keys, keys)}):
        q = frozen_query(bb, x)  # prompts fed around the call are suspended
        assert not torch.allclose(bb(x), plain, atol=1e-4)
        assert tokens.active and prefixes.active  # and fed again after it
    torch.testing.assert_close(q, plain)
    assert not q.requires_grad and q.dtype == torch.float32


def test_prefixed_attention_goes_through_fused_sdpa(monkeypatch):
    bb = tiny_vit(depth=3)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, **kwargs):
        calls.append((q.shape[2], k.shape[2]))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    prefix = torch.randn(2, 4, 32)
    with KVPrefixes(bb, blocks=[1]).using({1: (prefix, prefix)}):
        bb(torch.rand(2, 3, 16, 16))
    # every block uses timm's fused attention; block 1 attends to 4 extra key/value rows
    assert [k - q for q, k in calls] == [0, 0, 0] and calls[1][1] == calls[0][1] + 4


def _pool(layers=2, m=5, length=3, d=8):
    return torch.randn(layers, m, 2, length, d)


def test_kv_prefixes_give_each_sample_its_own_key_and_value_parts():
    pool = _pool()
    idx = torch.tensor([3, 0, 4, 3])
    keys, values = kv_prefixes(pool, idx)
    assert keys.shape == values.shape == (2, 4, 3, 8)
    for b, i in enumerate(idx.tolist()):
        torch.testing.assert_close(keys[:, b], pool[:, i, 0], rtol=0, atol=0)
        torch.testing.assert_close(values[:, b], pool[:, i, 1], rtol=0, atol=0)
    k1, v1 = kv_prefixes(pool, 2)  # one entry for the whole batch: batch dimension 1
    assert k1.shape == (2, 1, 3, 8) and torch.equal(k1[:, 0], pool[:, 2, 0]) and torch.equal(v1[:, 0], pool[:, 2, 1])
    top2 = torch.tensor([[1, 4], [0, 2]])  # k > 1: prompts concatenated along the length
    k2, v2 = kv_prefixes(pool, top2)
    assert torch.equal(k2[:, 0], torch.cat([pool[:, 1, 0], pool[:, 4, 0]], dim=1))
    assert torch.equal(v2[:, 1], torch.cat([pool[:, 0, 1], pool[:, 2, 1]], dim=1))


def test_reshape_bug_is_reproduced_only_behind_the_flag():
    pool = _pool()
    same = torch.full((4,), 2)
    keys, values = kv_prefixes(pool, same, reshape_bug=True)
    k, v = pool[:, 2, 0], pool[:, 2, 1]
    for b in (0, 1):  # first half: the key part as key and as value
        assert torch.equal(keys[:, b], k) and torch.equal(values[:, b], k)
    for b in (2, 3):  # second half: the value part as both
        assert torch.equal(keys[:, b], v) and torch.equal(values[:, b], v)
    idx = torch.tensor([0, 1, 2, 3])
    keys, values = kv_prefixes(pool, idx, reshape_bug=True)  # per-sample ids: parts of other samples
    assert torch.equal(keys[:, 0], pool[:, 0, 0]) and torch.equal(values[:, 0], pool[:, 1, 0])
    assert torch.equal(keys[:, 1], pool[:, 2, 0]) and torch.equal(values[:, 1], pool[:, 3, 0])
    assert torch.equal(keys[:, 2], pool[:, 0, 1]) and torch.equal(values[:, 3], pool[:, 3, 1])


def test_selection_is_per_sample_and_batch_vote_is_a_majority():
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.0, 0.8, 0.7, 0.1], [0.2, 0.9, 0.1, 0.3]])
    assert select_top_k(sim, 2).tolist() == [[0, 2], [1, 2], [1, 3]]
    voted = select_top_k(sim, 2, batchwise=True)  # ids 1 and 2 are chosen twice each
    assert voted.tolist() == [[1, 2]] * 3
    assert batch_vote(torch.tensor([[3], [1], [3], [1]]), 1, 5).tolist() == [[1]] * 4  # tie: lower id


def _disabled(name):
    return {"l2p": dict(prompt_length=0, head="token"), "dualprompt": dict(g_length=0, e_length=0),
            "coda-prompt": {}, "hide-prompt": dict(length=0)}[name]


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_disabled_prompts_equal_the_plain_vit(name):
    method, info = build(name, **_disabled(name))
    x = torch.rand(4, 3, 16, 16)
    if name == "coda-prompt":  # no components yet: nothing is composed
        method.eval()
        with method.prefix_hooks.using(method.prefixes(method.query(x))):
            got = method.backbone(x)
    else:
        run_tasks(method, 1)
        got = {"l2p": lambda: method.features(x, torch.zeros(4, 2, dtype=torch.long)),
               "dualprompt": lambda: method.features(x, torch.zeros(4, dtype=torch.long)),
               "hide-prompt": lambda: method.features(x, method.prompts, torch.zeros(4, dtype=torch.long))}[name]()
    torch.testing.assert_close(got, method.backbone(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_evaluation_does_not_depend_on_the_batch_size(name):
    method, info = build(name, seed=1)
    run_tasks(method, 3, steps=2)
    x = torch.rand(11, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    if name in ("l2p", "dualprompt"):  # keys at some samples' queries: selections differ per sample
        with torch.no_grad():
            method.keys[:4] = method.query(x[:4])
    if name == "hide-prompt":  # TII head rows at some samples' TII features: tasks differ per sample
        with torch.no_grad():
            method.tii_head.weight[:] = 10 * method.tii_mlp(method.query(x[:6]))
    with torch.no_grad(), method.eval_context():
        full = method.predict(x)
        for size in (1, 4):
            chunks = torch.cat([method.predict(x[i:i + size]) for i in range(0, 11, size)])
            torch.testing.assert_close(chunks, full, atol=1e-5, rtol=1e-4)
    if name != "coda-prompt":  # the samples did not all select the same prompt(s)
        assert sum(c > 0 for c in method.task_log()[f"{method.selection_name}_counts"]) > 1


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_one_query_pass_and_one_prompted_pass_per_step_and_prediction(name):
    """The query pass is the only extra backbone pass (no second copy, no repeated passes)."""
    method, info = build(name)
    run_tasks(method, 2)
    task = task_ctx(info, 1)
    passes = []

    (hooks,) = injections(method.backbone)

    def record(*_):
        passes.append((torch.is_grad_enabled(), hooks.active))

    method.backbone.vit.patch_embed.register_forward_hook(record)
    method.train()
    method.training_step(task.x, task.y, task)
    if name == "hide-prompt":  # its TII trains in its own stage: the prompt step needs no query
        assert passes == [(True, True)]
    else:
        assert passes == [(False, False), (True, True)]  # no-grad query without prompts, then the prompted pass
    passes.clear()
    with torch.no_grad():
        method.predict(task.x)
    assert len(passes) == 2


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_compatibility_flags_mark_the_run_noncomparable(name):
    assert build(name)[0].noncomparable == []
    if name == "coda-prompt":
        return
    flagged = build(name, batchwise_prompt=True)[0]
    assert len(flagged.noncomparable) == 1 and "majority vote" in flagged.noncomparable[0]
    if name in ("dualprompt", "hide-prompt"):
        assert any("reshape bug" in r for r in build(name, prefix_reshape_bug=True)[0].noncomparable)


def test_prompt_presets_resolve_and_cite_their_sources():
    presets = [p for p in PRESETS if p.method in PROMPT_METHODS]
    sections = {"train": TrainConfig(), "backbone": BackboneConfig(), "benchmark": BenchmarkConfig()}
    for p in presets:
        assert p.source and p.name in ("default", "paper", "sdlora", "dino"), p
        for dotted, value in p.values.items():
            section, _, key = dotted.partition(".")
            obj = METHODS.get(p.method).Config() if section == "method" else sections[section]
            apply_values(obj, {key: value}, section)  # raises on an unknown key or a wrong type
        if p.reported is not None:
            r = p.reported
            assert 0 < r.acc < 100 and r.source and (r.aaa is None or r.acc < r.aaa < 100)
    for method in PROMPT_METHODS:
        found = {(p.benchmark, p.when.get("n_tasks")) for p in presets if p.name == "sdlora" and p.method == method}
        assert {("imagenet_r", 5), ("imagenet_r", 10), ("imagenet_r", 20), ("imagenet_a", 10), ("domainnet", 5)} <= found
        assert any(p.name == "paper" and p.method == method for p in presets)
        assert [p.benchmark for p in presets if p.name == "default" and p.method == method] == ["shapes"]
    # the source's batch-vote selection is documented, never switched on by a preset
    assert not any(p.values.get("method.batchwise_prompt") or p.values.get("method.prefix_reshape_bug") for p in presets)


def test_frozen_parts_never_change_in_training():
    """The backbone stays frozen for every prompt method (only prompts, keys and heads train)."""
    for name in PROMPT_METHODS:
        method, info = build(name)
        before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
        run_tasks(method, 2, steps=1)
        assert all(torch.equal(v, before[k]) for k, v in method.backbone.state_dict().items())
        assert not any(p.requires_grad for p in method.backbone.parameters())

