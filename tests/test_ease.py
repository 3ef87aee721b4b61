"""EASE against dense references: one task is an adapter plus a prototype classifier; the
prototype complement and the reweighted logits follow the official formulas; only the current
set trains; evaluation takes as many fused backbone passes as ``max_pass_images`` allows."""

import math

import pytest

import torch
from torch.nn import functional as F

from clbench.adapters import BottleneckAdapter
from clbench.adapters.adapter_sets import NAMES
from clbench.methods import StreamInfo
from clbench.registry import METHODS
from clbench.testing import run_method, task_tensors, tensor_stream

from conftest import tiny_vit


def build(n_tasks=3, per_task=2, **options):
    info = StreamInfo(n_tasks * per_task, tuple((t * per_task, (t + 1) * per_task) for t in range(n_tasks)))
    cls = METHODS.get("ease")
    return cls(cls.Config(**{"rank": 4, **options}), tiny_vit(depth=2), info), info


def test_one_task_is_a_trained_adapter_plus_a_cosine_prototype_classifier():
    method, info = build(n_tasks=1)
    run_method(method, tasks=1, steps=3, train={"lr": 0.1})
    assert method.adapters.n_frozen == 1 and method.prototypes.shape == (2, 1, 32)
    assert method.adapters.frozen_up_weight.abs().sum() > 0  # the adapter trained
    # independent reference: the trained weights in one BottleneckAdapter on a fresh backbone
    bb = tiny_vit(depth=2)
    single = BottleneckAdapter(bb, rank=4).eval()
    with torch.no_grad():
        for name in NAMES:
            getattr(single, name).copy_(getattr(method.adapters, f"frozen_{name}")[0])
    x, y = task_tensors(tensor_stream(info, per_class=6, size=16), 0)
    feats = bb(x)
    means = torch.stack([feats[y == c].mean(0) for c in range(2)])
    torch.testing.assert_close(method.prototypes[:, 0], means, atol=1e-5, rtol=1e-5)
    expected = F.normalize(feats, dim=-1) @ F.normalize(means, dim=-1).t()
    with method.frozen_features():
        torch.testing.assert_close(method.predict(x), expected, atol=1e-5, rtol=1e-5)


def filled(method, t, seed=0):
    """A hand-built prototype table at task t: genuine blocks random, missing blocks zero."""
    g = torch.Generator().manual_seed(seed)
    K, S = method.info.task_ranges[t][1], t + 1
    W = torch.randn(K, S, 32, generator=g)
    for i in range(t + 1):
        lo, hi = method.info.task_ranges[i]
        W[lo:hi, i + 1:] = 0  # task i's classes have prototypes in subspaces 0..i only
    method.prototypes, method.task = W, t
    return W.clone()


def test_the_prototype_complement_is_the_softmax_of_cosines_times_the_later_prototypes():
    method, info = build(n_tasks=3)
    W = filled(method, 2)
    log = method.complement()
    # dense reference of solve_sim_reset: every old task i, every later subspace j
    expected = W.clone()
    for i in range(2):
        for j in range(i + 1, 3):
            lo_i, hi_i = info.task_ranges[i]
            lo_ref = info.task_ranges[j][0]
            for c in range(lo_i, hi_i):
                sims = [F.cosine_similarity(W[c, i], W[r, i], dim=0) for r in range(lo_ref, 6)]
                e = [math.exp(float(s)) for s in sims]
                expected[c, j] = sum(e[n] / sum(e) * W[r, j] for n, r in enumerate(range(lo_ref, 6)))
    torch.testing.assert_close(method.prototypes, expected, atol=1e-6, rtol=1e-6)
    assert [(entry["task"], entry["subspace"]) for entry in log] == [(0, 1), (0, 2), (1, 2)]
    # recalc_sim false: only the newest subspace, from the current task's classes
    method2, _ = build(n_tasks=3, recalc_sim=False)
    filled(method2, 2)
    method2.complement()
    assert torch.equal(method2.prototypes[0:2, 1], W[0:2, 1])  # untouched (zero)
    lo_t = info.task_ranges[2][0]
    sims = F.normalize(W[0:2, 0], dim=-1) @ F.normalize(W[lo_t:, 0], dim=-1).t()
    torch.testing.assert_close(method2.prototypes[0:2, 2], sims.softmax(1) @ W[lo_t:, 2])


def test_logits_weight_the_own_subspace_by_one_and_the_others_by_alpha_over_t():
    method, info = build(n_tasks=3, alpha=0.3)
    for _ in range(3):
        method.adapters.add_current()
        method.adapters.freeze_current()
    with torch.no_grad():
        method.adapters.frozen_up_weight.normal_()
    filled(method, 2)
    method.complement()
    x = torch.rand(4, 3, 16, 16)
    method.eval()
    logits = method.predict(x)
    feats = method.adapters.features(x, [0, 1, 2])
    for c in range(6):
        i = c // 2
        z = sum((1.0 if j == i else 0.3 / 2) * F.cosine_similarity(feats[j], method.prototypes[c, j][None], dim=1)
                for j in range(3))
        torch.testing.assert_close(logits[:, c], z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(method.subspace_weights()[:, 0], torch.tensor([1.0, 0.15, 0.15]))


def test_pretrained_subspace_comes_first_with_weight_beta():
    method, _ = build(n_tasks=2, use_init_ptm=True, beta=0.5)
    method.adapters.add_current()
    method.adapters.freeze_current()
    method.task = 0
    assert method.subspace_ids() == [None, 0] and method.offset == 1
    method.prototypes = torch.randn(2, 2, 32)
    assert method.subspace_weights()[:, 0].tolist() == [0.5, 1.0]
    x = torch.rand(2, 3, 16, 16)
    feats = method.adapters.features(x, method.subspace_ids())
    torch.testing.assert_close(feats[0], tiny_vit(depth=2)(x))  # the pretrained feature


def test_training_uses_the_current_set_only_and_eval_passes_follow_max_pass_images():
    method, info = build(n_tasks=3)
    run_method(method, tasks=2, steps=1, train={"lr": 0.1})
    assert method.adapters.n_frozen == 2 and [p.requires_grad for p in method.adapters.frozen()] == [False] * 4
    assert method.task_log()["subspace_dims"] == [32, 32]
    calls = []
    method.backbone.vit.patch_embed.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    x = torch.rand(5, 3, 16, 16)
    method.eval()
    one = method.predict(x)
    assert calls == [10]  # both subspaces in one fused pass
    calls.clear()
    method.cfg.max_pass_images = 5
    torch.testing.assert_close(method.predict(x), one, atol=1e-6, rtol=1e-6)
    assert calls == [5, 5]
    # the next task trains one new set; the step's forward runs it alone on the batch
    calls.clear()
    run_method(method, tasks=range(2, 3), steps=1, train={"lr": 0.1})
    assert calls[0] == 12  # training batch (2 classes x 6 images), one group


def test_ease_and_mos_presets_resolve_with_sources_and_reported_numbers():
    import clbench.benchmarks  # noqa: F401  (registers the presets)
    from clbench.experiment import plan
    from clbench.presets import PRESETS

    presets = [p for p in PRESETS if p.method in ("ease", "mos")]
    for method in ("ease", "mos"):
        mine = [p for p in presets if p.method == method]
        assert [p.benchmark for p in mine if p.name == "default"] == ["shapes"]
        assert {p.benchmark for p in mine if p.name == "paper"} == {
            "cifar100", "cub200", "imagenet_r", "imagenet_a", "objectnet", "omnibenchmark", "vtab"}
    for p in presets:
        assert p.source
        if p.name == "default":
            continue
        r = p.reported
        assert r is not None and 0 < r.acc < 100 and 0 < r.aaa < 100 and r.source
        (run,) = plan([p.method], p.benchmark, [1993], p.name, [("benchmark.n_tasks", p.when["n_tasks"])])
        assert run.config.backbone.name.startswith("vit_base_patch16_224.augreg_in21k")
        assert not getattr(run.config.method_cfg, "eval_drift", False)  # presets stay comparable


def test_task_accuracy_of_the_predicted_class_is_logged_during_evaluation():
    method, info = build(n_tasks=2)
    run_method(method, tasks=2, steps=1, train={"lr": 0.1})
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 2])
    method.eval()
    with method.eval_context(), torch.no_grad():
        logits = method.predict(x)
        method.eval_labels(y)
    hits = (method.task_of_class[logits.argmax(1)] == method.task_of_class[y]).float().mean() * 100
    log = method.task_log()
    assert log["predicted_task_acc"] == pytest.approx(float(hits)) and len(log["predicted_task_acc_per_task"]) == 2
    method.predict(x)  # outside evaluation nothing is recorded
    assert method.task_log()["predicted_counts"] == log["predicted_counts"]


def test_adapter_limit_trains_the_first_sets_only_and_keeps_their_subspaces():
    method, info = build(n_tasks=3, adapter_limit=1, use_init_ptm=True, alpha=1.0, beta=1.0)
    results = run_method(method, tasks=3, steps=1, train={"lr": 0.1})
    assert [r["steps"] for r in results] == [1, 0, 0] and method.adapters.n_frozen == 1
    assert method.prototypes.shape == (6, 2, 32)  # pretrained + set 0 for every class, nothing to complete
    assert method.task_log()["complement"] == []
