"""APER and its first-session base: against a dense re-computation of the prototype
classifier on concatenated features, the first session's training and freezing, and the
pretrained branch staying exactly the pretrained backbone."""

import pytest
import torch
from torch.nn import functional as F

from clbench.methods.base import StreamInfo
from clbench.methods.first_session import FirstSessionConfig, FirstSessionMethod
from clbench.registry import METHODS
from clbench.testing import InMemoryTask, image_size, run_method, separable_images, task_tensors, tensor_stream

from conftest import tiny_vit

INFO = StreamInfo(6, ((0, 2), (2, 4), (4, 6)))
VARIANTS = {"aper-adapter": "adapter", "aper-ssf": "ssf", "aper-vpt-shallow": "vpt-shallow",
            "aper-vpt-deep": "vpt-deep", "aper-finetune": "finetune"}
X = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def build(name, depth=2, **options):
    cls = METHODS.get(name)
    return cls(cls.Config(**options), tiny_vit(depth=depth), INFO)


def adapted_state(m):
    return {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("petl.", "tuned."))}


@pytest.mark.parametrize("name", VARIANTS)
def test_prototypes_on_concatenated_features_match_a_dense_recomputation(name):
    m = build(name)
    results = run_method(m, steps=3, train={"lr": 0.05}, per_class=5, test_per_class=4)
    pretrained = tiny_vit().eval()  # an independent copy of the untouched backbone
    stream = tensor_stream(INFO, 5, image_size(m), 0, 4)
    m.eval()
    with torch.no_grad():
        def feats(x):
            return torch.cat([pretrained(x), m.adapted_features(x)], dim=1).double()

        protos = []
        for t in range(INFO.n_tasks):
            x, y = task_tensors(stream, t)
            f = feats(x)
            protos += [f[y == c].mean(0) for c in range(*INFO.task_ranges[t])]
        protos = torch.stack(protos)
        torch.testing.assert_close(m.prototypes.means.double(), protos, atol=1e-5, rtol=1e-5)
        test = stream.test_data(INFO.n_tasks - 1)
        xt, yt = test.__getitems__(list(range(len(test))))
        xt = xt.float() / 255
        reference = F.normalize(feats(xt), dim=1) @ F.normalize(protos, dim=1).t()
        torch.testing.assert_close(m.predict(xt).double(), reference, atol=1e-5, rtol=1e-5)
    correct = torch.zeros(6, dtype=torch.long).index_add_(0, yt, (reference.argmax(1) == yt).long())
    assert results[-1]["correct_per_class"] == correct.tolist()


@pytest.mark.parametrize("name", VARIANTS)
def test_only_task_0_trains_and_the_pretrained_branch_stays_the_pretrained_backbone(name):
    m = build(name)
    pretrained = tiny_vit().eval()
    before = adapted_state(m)
    first = run_method(m, tasks=1, steps=3, train={"lr": 0.05})
    after_first = adapted_state(m)
    assert first[0]["steps"] == 3 and m.first_head is None and not m.adapting
    assert any(not torch.equal(before[k], after_first[k]) for k in before)  # the module was trained
    assert m.task_log()["petl"] == VARIANTS[name]
    old = m.prototypes.means.clone()
    later = run_method(m, tasks=range(1, 3), steps=3, train={"lr": 0.05})
    assert [r["steps"] for r in later] == [0, 0] and [r["trainable_params"] for r in later] == [0, 0]
    assert m.parameter_groups() == [] and not any(p.requires_grad for p in m.parameters())
    assert all(torch.equal(after_first[k], v) for k, v in adapted_state(m).items())
    assert torch.equal(m.prototypes.means[:2], old)  # old prototypes are never rewritten
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.pretrained_features(X), pretrained(X))  # module off: the pretrained forward exactly
        assert not torch.allclose(m.adapted_features(X), pretrained(X), atol=1e-4)


def test_first_session_trains_module_and_a_temporary_cosine_head_over_the_task_0_classes():
    m = build("aper-adapter")
    m.train()
    m.before_task(InMemoryTask.of(INFO, 0))
    head = m.first_head
    assert head.out_features == 2 and head.sigma.requires_grad
    (group,) = m.parameter_groups()
    assert {id(p) for p in group["params"]} == {id(p) for p in [*m.petl.parameters(), *head.parameters()]}
    x, y = separable_images(0, 2, per_class=3)
    out = m.training_step(x, y, InMemoryTask.of(INFO, 0))
    f = m.adapted_features(x)
    reference = head.sigma * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(out.logits, reference)
    m.after_task(InMemoryTask.of(INFO, 0, x, y))
    assert m.first_head is None and not any(k.startswith("first_head") for k in m.task_state())


def test_finetune_trains_every_backbone_parameter_in_task_0_only():
    m = build("aper-finetune")
    n_backbone = sum(p.numel() for p in m.backbone.parameters())
    pretrained = tiny_vit().eval()
    results = run_method(m, steps=2, train={"lr": 0.05})
    d = m.backbone.embed_dim
    assert results[0]["trainable_params"] == n_backbone + 2 * d + 1  # the copy, head rows and sigma
    assert [r["steps"] for r in results] == [2, 0, 0]
    for (name, p), q in zip(m.backbone.named_parameters(), pretrained.parameters()):
        assert torch.equal(p, q), name  # the pretrained branch is not touched
    changed = [not torch.equal(p, q) for p, q in zip(m.tuned.parameters(), pretrained.parameters())]
    assert sum(changed) > len(changed) // 2


def test_vpt_deep_adds_its_prompts_before_every_block_and_shallow_carries_them_through():
    counts = {}
    for mode in ("deep", "shallow"):
        m = build(f"aper-vpt-{mode}", depth=3, vpt_length=4)
        seen = []
        for block in m.backbone.vit.blocks:  # hooks registered after the method's see its output
            block.register_forward_pre_hook(lambda mod, args: seen.append(("in", args[0].shape[1])))
            block.register_forward_hook(lambda mod, args, out: seen.append(("out", out.shape[1])))
        with torch.no_grad():
            m.adapted_features(X)
            counts[mode] = (list(seen), m.petl.prompts.shape)
            seen.clear()
            m.pretrained_features(X)
            assert all(n == 17 for _, n in seen)  # 16 patches + CLS: no prompts when switched off
    n = 16 + 1
    assert counts["deep"] == ([("in", n + 4), ("out", n)] * 3, (3, 4, 32))
    assert counts["shallow"] == ([("in", n + 4), ("out", n + 4), ("in", n + 4), ("out", n + 4), ("in", n + 4),
                                  ("out", n)], (1, 4, 32))


def test_an_untrained_zero_adapter_makes_aper_simplecil():
    aper = build("aper-adapter")
    simple = METHODS.get("simplecil")(METHODS.get("simplecil").Config(), tiny_vit(), INFO)
    a = run_method(aper, train={"epochs": 0})
    s = run_method(simple)
    assert [r["correct_per_class"] for r in a] == [r["correct_per_class"] for r in s]
    with torch.no_grad():
        torch.testing.assert_close(aper.eval().predict(X), simple.eval().predict(X), atol=1e-5, rtol=1e-5)


def test_class_means_ignore_sample_order_and_ssf_folding_matches_its_hooks():
    m = build("aper-ssf")
    x, y = separable_images(0, 2, per_class=7)
    ctx = InMemoryTask.of(INFO, 0, x, y, batch_size=4)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    shuffled = InMemoryTask.of(INFO, 0, x[order], y[order], batch_size=3)
    a = m.class_means(ctx, m.features, 64)
    torch.testing.assert_close(a, m.class_means(shuffled, m.features, 64), atol=1e-6, rtol=1e-6)
    assert a.dtype == torch.float64 and a.shape == (2, 64)
    m.eval()
    with torch.no_grad():
        folded = m.adapted_features(X)
    hooked = m.adapted_features(X)  # with grad: the hooks
    torch.testing.assert_close(folded, hooked.detach(), atol=1e-5, rtol=1e-5)


def test_first_session_base_without_a_module_trains_nothing():
    class Means(FirstSessionMethod):
        def after_task(self, ctx):
            super().after_task(ctx)
            self.means = self.class_means(ctx, self.adapted_features, self.backbone.embed_dim)

        def predict(self, x):
            return F.normalize(self.adapted_features(x), dim=1) @ F.normalize(self.means.float(), dim=1).t()

    m = Means(FirstSessionConfig(petl="none"), tiny_vit(), INFO)
    results = run_method(m, tasks=1, steps=3)
    assert results[0]["steps"] == 0 and m.petl is None and m.tuned is None
    x, y = task_tensors(tensor_stream(INFO, 6, 16), 0)
    with torch.no_grad():
        f = tiny_vit().eval()(x).double()
    torch.testing.assert_close(m.means, torch.stack([f[y == c].mean(0) for c in (0, 1)]))


def test_aper_presets_resolve_to_their_values_and_cover_every_official_setting():
    from clbench.presets import PRESETS
    from clbench.registry import load_plugins
    from clbench.resolve import resolve

    load_plugins()  # registers the presets
    presets = [p for p in PRESETS if p.method in VARIANTS]
    for p in presets:
        cfg = resolve(p.method, p.benchmark, 1993, p.name, [("benchmark.n_tasks", p.when["n_tasks"])]
                      if "n_tasks" in p.when else []).config
        for dotted, value in p.values.items():
            section, _, key = dotted.partition(".")
            assert getattr(cfg.section(section), key) == value, (p.name, p.method, p.benchmark, dotted)
        assert p.source and (p.reported is None or p.reported.acc < p.reported.aaa < 100)
    for name in VARIANTS:
        paper = {(p.benchmark, p.when["n_tasks"]) for p in presets if p.method == name and p.name == "paper"}
        assert paper == {("cifar100", 20), ("cub200", 20), ("imagenet_r", 40), ("imagenet_r", 10), ("imagenet_a", 20),
                         ("objectnet", 20), ("omnibenchmark", 10), ("vtab", 5)}
        pilot = {p.benchmark for p in presets if p.method == name and p.name == "pilot"}
        assert pilot == ({"cifar100"} if name == "aper-vpt-shallow" else {"cifar100", "imagenet_r"})  # PILOT's IN-R VPT-S config is broken
