"""SD-LoRA, -RR, -KD: layer math per mode, task boundaries, gradients, sizes, distillation, presets."""

import copy
import math

import pytest
import timm
import torch

from clbench.adapters import QKV_INDEX
from clbench.backbones import Backbone
from clbench.config import apply_values
from clbench.methods.base import StreamInfo
import clbench.benchmarks  # noqa: F401  (registers the presets this file checks)
from clbench.presets import PRESETS
from clbench.testing import InMemoryTask
from clbench.registry import METHODS
from clbench.weights import WeightsInfo

from conftest import tiny_vit

X = torch.rand(3, 3, 16, 16)


def make(name, bb, n_tasks=4, per_task=2, **options):
    cls = METHODS.get(name)
    cfg = apply_values(cls.Config(), options, "method")
    info = StreamInfo(n_tasks * per_task, tuple((t * per_task, (t + 1) * per_task) for t in range(n_tasks)))
    return cls(cfg, bb, info)


def task(t, n_tasks=4, per_task=2):
    return InMemoryTask(t, t * per_task, (t + 1) * per_task, n_tasks)


def dense_reference(plain, components, targets="qv"):
    """A copy of the plain model whose qkv weights get Σ_k scale_k(l, p) · B_k A_k, looped."""
    ref = copy.deepcopy(plain)
    with torch.no_grad():
        for scale, A, B in components:
            for l in range(A.shape[0]):
                for p, name in enumerate(targets):
                    d = A.shape[-1]
                    rows = slice(QKV_INDEX[name] * d, (QKV_INDEX[name] + 1) * d)
                    ref.qkv(l).weight[rows] += scale(l, p, A[l, p], B[l, p]) * (B[l, p] @ A[l, p])
    return ref


def official_norm(A, B):
    return torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)


def paper_norm(A, B):
    return torch.linalg.matrix_norm(B @ A)


def train_randomly(method, seed, magnitudes=None):
    """Stand-in for training a task: random current factors (and magnitudes)."""
    g = torch.Generator().manual_seed(seed)
    ad = method.adapter
    with torch.no_grad():
        ad.A.copy_(torch.randn(ad.A.shape, generator=g) * 0.2)
        ad.B.copy_(torch.randn(ad.B.shape, generator=g) * 0.2)
        if magnitudes is not None:
            method.magnitudes.copy_(torch.as_tensor(magnitudes, dtype=torch.float32))
    return ad.A.detach().clone(), ad.B.detach().clone()


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_fused_looped_and_merged_forwards_agree_over_tasks_with_mixed_ranks(mode):
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora-rr", bb, mode=mode, rank=4, rank_mu=3, rank_nu=1, mu=1, nu=3)
    raw = []
    for t in range(4):
        m.before_task(task(t))
        raw.append(train_randomly(m, seed=t, magnitudes=torch.rand(t + 1) + 0.5))
        m.after_task(task(t))
    assert m.ranks == [4, 3, 3, 1] and m.adapter.frozen_ranks == [4, 3, 3]
    mags = m.magnitudes.detach()
    norm = official_norm if mode == "official" else paper_norm
    components = [(lambda l, p, A, B, k=k: mags[k] / norm(A, B), A, B) for k, (A, B) in enumerate(raw[:-1])]
    current = (lambda l, p, A, B: mags[-1]) if mode == "official" else (lambda l, p, A, B: mags[-1] / paper_norm(A, B))
    expected = dense_reference(plain, components + [(current, *raw[-1])])(X)
    torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)  # fused low-rank forward
    m.eval()
    unmerged = m.predict(X)
    with m.eval_context():
        torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)  # merged weights
        torch.testing.assert_close(m.predict(X), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)  # weights restored


def test_official_mode_resets_magnitudes_and_normalises_the_last_component_at_a_new_task():
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora", bb, rank=3)
    m.before_task(task(0))
    assert m.magnitudes.tolist() == pytest.approx([0.8])
    A0, B0 = train_randomly(m, 0, magnitudes=[1.7])
    m.after_task(task(0))
    end_of_task = bb(X)
    torch.testing.assert_close(end_of_task, dense_reference(plain, [(lambda *a: 1.7, A0, B0)])(X), atol=1e-5, rtol=1e-5)
    m.before_task(task(1))  # B_1 = 0: the new component adds nothing
    assert m.magnitudes.tolist() == pytest.approx([0.8, 0.8])
    start = bb(X)
    expected = dense_reference(plain, [(lambda l, p, A, B: 0.8 / official_norm(A, B), A0, B0)])(X)
    torch.testing.assert_close(start, expected, atol=1e-5, rtol=1e-5)
    assert (start - end_of_task).abs().max() > 1e-2  # the official code's jump at the boundary
    A1, B1 = train_randomly(m, 1, magnitudes=[1.3, 2.1])
    m.after_task(task(1))
    m.before_task(task(2))
    assert m.magnitudes.tolist() == pytest.approx([0.8] * 3)  # all reset again
    expected = dense_reference(plain, [(lambda l, p, A, B: 0.8 / official_norm(A, B), A, B) for A, B in [(A0, B0), (A1, B1)]])
    torch.testing.assert_close(bb(X), expected(X), atol=1e-5, rtol=1e-5)


def test_paper_mode_is_continuous_across_tasks_and_carries_magnitudes():
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora", bb, rank=3, mode="paper")
    m.before_task(task(0))
    torch.testing.assert_close(bb(X), plain(X))  # B = 0: no change (0/0 taken as 0)
    assert m.magnitudes.tolist() == [1.0]
    for t in range(3):
        train_randomly(m, t, magnitudes=torch.arange(t + 1) * 0.3 + 0.6)
        m.after_task(task(t))
        end = bb(X)
        m.before_task(task(t + 1))
        torch.testing.assert_close(bb(X), end, atol=1e-5, rtol=1e-5)
    assert m.magnitudes.tolist() == pytest.approx([0.6, 0.9, 1.2, 1.0])  # carried over, new one at 1


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_old_directions_get_no_gradient_magnitudes_and_current_factors_do(mode):
    bb = tiny_vit()
    m = make("sdlora", bb, rank=2, mode=mode)
    for t in range(2):
        m.before_task(task(t))
        train_randomly(m, t)
        m.after_task(task(t))
    m.before_task(task(2))
    train_randomly(m, 2)
    trained = {id(p) for g in m.parameter_groups() for p in g["params"]}
    assert trained == {id(p) for p in (m.adapter.A, m.adapter.B, m.magnitudes, m.head.weight, m.head.bias)}
    m.training_step(X, None, task(2)).logits.square().sum().backward()
    assert m.adapter.frozen_A.grad is None and m.adapter.frozen_B.grad is None
    assert not m.adapter.frozen_A.requires_grad and not m.adapter.frozen_B.requires_grad
    assert all(p.grad is None for p in bb.parameters())
    assert m.adapter.A.grad.abs().sum() > 0 and m.adapter.B.grad.abs().sum() > 0
    assert (m.magnitudes.grad.abs() > 0).all() and m.magnitudes.grad.shape == (3,)


def vit_b16():
    """ViT-B/16 shapes without initialising weights (counts only; values are garbage)."""
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    return Backbone(vit.to_empty(device="cpu"), "vit_base_patch16_224", WeightsInfo("random", None, None))


def test_parameter_counts_match_the_spec_for_vit_b16():
    """Parameter counts: 24·r·1536 per task (368,640 / 294,912 / 221,184 at r = 10/8/6);
    after 20 tasks 7.37 M (SD-LoRA) vs 5.31 M (RR); 769 head parameters per class; no
    duplicated backbone (85,798,656 parameters without head)."""
    expected_totals = {"sdlora": 7_372_800, "sdlora-rr": 5_308_416}
    for name, total in expected_totals.items():
        bb = vit_b16()
        assert sum(p.numel() for p in bb.parameters()) == 85_798_656
        m = make(name, bb, n_tasks=20, per_task=10)
        m._fit = lambda: None  # the least-squares log is not what this test is about (and slow on CPU)
        per_task = []
        for t in range(20):
            m.before_task(task(t, 20, 10))
            per_task.append(m.adapter.A.numel() + m.adapter.B.numel())
            trainable = sum(p.numel() for g in m.parameter_groups() for p in g["params"])
            assert trainable == per_task[-1] + (t + 1) + 769 * 10 * (t + 1)  # adapter, magnitudes, head
            m.after_task(task(t, 20, 10))
            assert m.task_log()["rank"] == m.rank_for(t)
        if name == "sdlora":
            assert per_task == [368_640] * 20
        else:
            assert per_task == [368_640] * 4 + [294_912] * 4 + [221_184] * 12
            assert [m.rank_for(t) for t in range(10)] == [10, 10, 10, 10, 8, 8, 8, 8, 6, 6]
        adapter_params = m.adapter.frozen_A.numel() + m.adapter.frozen_B.numel() + per_task[-1]
        assert adapter_params == total
        assert sum(p.numel() for p in m.parameters()) == 85_798_656 + total + 20 + 769 * 200


def orthogonal_old_components(m, seed=0):
    """Two trained tasks with the same A and B's of orthogonal column spaces (per projection)."""
    g = torch.Generator().manual_seed(seed)
    ad = m.adapter
    A = torch.randn(ad.A.shape, generator=g) * 0.2
    half = ad.d_out // 2
    for t in range(2):
        B = torch.zeros(ad.B.shape)
        rows = slice(0, half) if t == 0 else slice(half, None)
        B[..., rows, :] = torch.randn(B[..., rows, :].shape, generator=g) * 0.2
        with torch.no_grad():
            ad.A.copy_(A)
            ad.B.copy_(B)
            m.magnitudes.copy_(torch.full((t + 1,), 1.1))
        m.after_task(task(t))
        m.before_task(task(t + 1))
    return A


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_kd_absorbs_an_exact_combination_keeps_the_function_and_adds_nothing(mode):
    bb = tiny_vit()
    m = make("sdlora-kd", bb, rank=2, mode=mode)
    m.before_task(task(0))
    A = orthogonal_old_components(m)
    ad = m.adapter
    cols = [m.column_component == k for k in range(2)]
    alpha_t = 1.7
    with torch.no_grad():  # new component = 0.6·D_0 − 0.3·D_1 (exactly, as the forward applies it)
        m.magnitudes.copy_(torch.tensor([1.1, 1.1, alpha_t]))
        B = 0.6 * ad.frozen_B[..., cols[0]] - 0.3 * ad.frozen_B[..., cols[1]]
        ad.A.copy_(A)
        ad.B.copy_(B / alpha_t if mode == "official" else B)
    before = bb(X)
    m.after_task(task(2))
    log = m.task_log()
    assert log["kd"]["absorbed"] and log["kd"]["residual"] < 1e-6
    assert ad.A is None and ad.frozen_ranks == [2, 2] and m.ranks == [2, 2] and len(m.magnitudes) == 2
    torch.testing.assert_close(bb(X), before, atol=1e-5, rtol=1e-5)  # function unchanged
    m.eval()
    with m.eval_context():
        torch.testing.assert_close(bb(X), before, atol=1e-5, rtol=1e-5)
    m.before_task(task(3))  # the next task adds its own component as usual
    assert ad.rank == 2 and len(m.magnitudes) == 3


def test_kd_keeps_a_random_direction():
    bb = tiny_vit()
    m = make("sdlora-kd", bb, rank=2, mode="paper")
    m.before_task(task(0))
    orthogonal_old_components(m)
    train_randomly(m, 5)
    m.after_task(task(2))
    log = m.task_log()["kd"]
    assert not log["absorbed"] and log["residual"] > 0.1 and m.adapter.A is not None and m.ranks == [2, 2, 2]
    m.before_task(task(3))
    assert m.adapter.frozen_ranks == [2, 2, 2]


def test_kd_per_projection_absorbs_per_projection_fits_that_the_joint_fit_rejects():
    bb = tiny_vit()
    results = {}
    for per_projection in (False, True):
        m = make("sdlora-kd", bb if per_projection else tiny_vit(), rank=2, kd_per_projection=per_projection)
        m.before_task(task(0))
        A = orthogonal_old_components(m)
        ad = m.adapter
        cols = [m.column_component == k for k in range(2)]
        c = torch.tensor([[0.5, -0.2], [0.9, 0.4]])[..., None, None]  # coefficients differ per (block, proj)
        with torch.no_grad():
            m.magnitudes[-1] = 1.0
            ad.A.copy_(A)
            ad.B.copy_(c * ad.frozen_B[..., cols[0]] + (1 - c) * ad.frozen_B[..., cols[1]])
        before = m.backbone(X)
        m.after_task(task(2))
        results[per_projection] = m.task_log()["kd"]
    assert not results[False]["absorbed"] and results[False]["residual"] > 9e-4
    assert results[True]["absorbed"] and results[True]["absorbed_projections"] == 4
    assert m.offsets is not None and m.offsets.abs().sum() > 0
    torch.testing.assert_close(bb(X), before, atol=1e-5, rtol=1e-5)


def test_kd_unscaled_reading_adds_the_unit_direction_coefficients():
    bb = tiny_vit()
    m = make("sdlora-kd", bb, rank=2, mode="paper", kd_scale_by_alpha_t=False)
    m.before_task(task(0))
    A = orthogonal_old_components(m)
    ad = m.adapter
    cols = [m.column_component == k for k in range(2)]
    with torch.no_grad():
        m.magnitudes.copy_(torch.tensor([1.1, 1.1, 2.0]))
        ad.A.copy_(A)
        ad.B.copy_(0.6 * ad.frozen_B[..., cols[0]] + 0.8 * ad.frozen_B[..., cols[1]])  # unit norm combination
    m.after_task(task(2))
    assert m.task_log()["kd"]["delta"] == pytest.approx([0.6, 0.8], abs=1e-6)  # Δα, not α_t·Δα
    assert m.magnitudes.tolist() == pytest.approx([1.7, 1.9], abs=1e-6)


def test_magnitudes_ranks_and_residuals_are_logged_per_task():
    bb = tiny_vit()
    m = make("sdlora-rr", bb, rank=3, rank_mu=2, rank_nu=1, mu=1, nu=2)
    logs = []
    for t in range(3):
        m.before_task(task(t))
        train_randomly(m, t, magnitudes=torch.arange(1, t + 2) * 0.5)
        m.after_task(task(t))
        logs.append(m.task_log())
    assert [log["rank"] for log in logs] == [3, 2, 1]
    assert logs[-1]["magnitudes"] == pytest.approx([0.5, 1.0, 1.5]) and logs[-1]["ranks"] == [3, 2, 1]
    assert logs[0]["fit_residual"] is None and 0 < logs[2]["fit_residual"] <= 1.0
    assert logs[0]["mode"] == "official"


SDLORA_REPORTED = {  # (benchmark, n_tasks): {method: (acc, aaa)}, SD-LoRA Tables 2, 3 and 6
    ("imagenet_r", 5): {"sdlora": (79.15, 83.01), "sdlora-rr": (79.01, 82.50), "sdlora-kd": (78.85, 82.47)},
    ("imagenet_r", 10): {"sdlora": (77.34, 82.04), "sdlora-rr": (77.18, 81.74), "sdlora-kd": (77.03, 81.52)},
    ("imagenet_r", 20): {"sdlora": (75.26, 80.22), "sdlora-rr": (74.05, 80.65), "sdlora-kd": (74.12, 80.11)},
    ("imagenet_a", 10): {"sdlora": (55.96, 64.95), "sdlora-rr": (55.59, 64.59), "sdlora-kd": (54.24, 63.89)},
    ("domainnet", 5): {"sdlora": (72.82, 78.89), "sdlora-rr": (72.58, 78.79), "sdlora-kd": (72.15, 78.44)},
    ("cifar100", 10): {"sdlora": (88.01, 92.54), "sdlora-rr": (87.26, 92.05), "sdlora-kd": (87.09, 92.01)},
    ("cub200", 10): {"sdlora": (77.48, 85.59), "sdlora-rr": (76.35, 83.89), "sdlora-kd": (75.95, 83.21)},
}


def test_paper_presets_carry_the_sdlora_tables_and_the_official_settings():
    for (bench, n_tasks), rows in SDLORA_REPORTED.items():
        for method, (acc, aaa) in rows.items():
            (p,) = [p for p in PRESETS if p.name == "paper" and p.method == method and p.benchmark == bench
                    and p.when == {"n_tasks": n_tasks}]
            assert (p.reported.acc, p.reported.aaa) == (acc, aaa) and p.reported.acc_se is not None
            assert "SD-LoRA" in p.source and p.reported.source
            v = p.values
            assert v["backbone.name"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
            assert v["method.mode"] == "official" and v["train.optimizer"] == "sgd" and v["train.batch_size"] == 128
    inr5 = next(p for p in PRESETS if p.name == "paper" and p.method == "sdlora" and p.when == {"n_tasks": 5})
    assert inr5.values["train.lr"] == 0.01 and inr5.values["benchmark.order_seed"] == 1995
    dom = next(p for p in PRESETS if p.name == "paper" and p.method == "sdlora" and p.benchmark == "domainnet")
    assert dom.values["train.epochs"] == 10 and dom.values["train.lr"] == 0.02


def test_every_lora_method_has_a_default_preset_on_shapes():
    for method in ("sdlora", "sdlora-rr", "sdlora-kd", "inflora", "inflora-b5"):
        assert any(p.name == "default" and p.method == method and p.benchmark == "shapes" for p in PRESETS)


def test_kd_absorbs_at_exactly_the_residual_threshold_and_not_above_it():
    """The rule is residual ≤ τ: a component whose residual equals τ is absorbed; with τ one
    float below its residual it is kept."""
    decisions = {}
    for below in (False, True):
        m = make("sdlora-kd", tiny_vit(), rank=2, mode="paper")
        m.before_task(task(0))
        A = orthogonal_old_components(m)
        ad = m.adapter
        cols = [m.column_component == k for k in range(2)]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # nearly a combination of the old directions: a small, non-zero residual
            ad.A.copy_(A)
            ad.B.copy_(0.6 * ad.frozen_B[..., cols[0]] + 0.005 * torch.randn(ad.B.shape, generator=g))
        residual = float(m._solve(*(t.sum((0, 1)) for t in m._fit()))[1])
        assert 1e-3 < residual < 0.5
        m.cfg.tau = math.nextafter(residual, 0.0) if below else residual
        m.after_task(task(2))
        decisions[below] = m.task_log()["kd"]
    assert decisions[False]["absorbed"] and decisions[False]["residual"] == decisions[False]["tau"]
    assert not decisions[True]["absorbed"] and decisions[True]["residual"] > decisions[True]["tau"]


# ------------------------------------------------------------------ Table 4 ablations
def trainable(m):
    return {id(p) for g in m.parameter_groups() for p in g["params"]}


def check_forward(m, bb, expected):
    torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)
    m.eval()
    with m.eval_context():
        torch.testing.assert_close(bb(X), expected, atol=1e-5, rtol=1e-5)  # merged for evaluation
    m.train()


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_ablation_first_direction_trains_only_the_first_components_magnitude_after_task_one(mode):
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora", bb, rank=3, mode=mode, ablation="first-direction")
    m.before_task(task(0))
    assert trainable(m) == {id(p) for p in (m.adapter.A, m.adapter.B, m.magnitudes, m.head.weight, m.head.bias)}
    A0, B0 = train_randomly(m, 0, magnitudes=[1.7])
    m.after_task(task(0))
    norm = official_norm if mode == "official" else paper_norm
    for t in (1, 2):
        m.before_task(task(t))
        assert m.adapter.A is None and m.ranks == [3] and m.magnitudes.shape == (1,)  # no new component
        assert trainable(m) == {id(p) for p in (m.magnitudes, m.head.weight, m.head.bias)}
        carried = 0.8 if mode == "official" else 1.7  # the mode's magnitude rule still applies
        assert m.magnitudes.item() == pytest.approx(carried if t == 1 else m.magnitudes.item())
        with torch.no_grad():
            m.magnitudes.fill_(0.5 + t)
        check_forward(m, bb, dense_reference(plain, [(lambda l, p, A, B: (0.5 + t) / norm(A, B), A0, B0)])(X))
        m.training_step(X, None, task(t)).logits.square().sum().backward()
        assert m.magnitudes.grad.abs().item() > 0 and m.adapter.frozen_B.grad is None
        m.magnitudes.grad = None
        m.after_task(task(t))
    assert m.task_log()["ablation"] == "first-direction" and m.task_log()["n_components"] == 1


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_ablation_one_component_trains_the_same_factors_and_magnitude_on_every_task(mode):
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora", bb, rank=3, mode=mode, ablation="one-component")
    m.before_task(task(0))
    A, B = m.adapter.A, m.adapter.B
    train_randomly(m, 0, magnitudes=[1.4])
    m.after_task(task(0))
    m.before_task(task(1))
    assert m.adapter.A is A and m.adapter.B is B and m.adapter.frozen_rank == 0 and m.ranks == [3]
    assert trainable(m) == {id(p) for p in (A, B, m.magnitudes, m.head.weight, m.head.bias)}
    assert m.magnitudes.item() == pytest.approx(0.8 if mode == "official" else 1.4)
    A1, B1 = train_randomly(m, 1, magnitudes=[1.1])
    current = (lambda l, p, A, B: 1.1) if mode == "official" else (lambda l, p, A, B: 1.1 / paper_norm(A, B))
    check_forward(m, bb, dense_reference(plain, [(current, A1, B1)])(X))
    m.training_step(X, None, task(1)).logits.square().sum().backward()
    assert A.grad.abs().sum() > 0 and B.grad.abs().sum() > 0 and m.magnitudes.grad.abs().item() > 0


@pytest.mark.parametrize("scale", ["learned", "one"])
def test_ablation_fixed_old_merges_old_components_with_fixed_scales_and_trains_only_the_current(scale):
    bb = tiny_vit()
    plain = copy.deepcopy(bb)
    m = make("sdlora", bb, rank=2, ablation="fixed-old", fixed_old_scale=scale)
    raw, learned = [], [1.7, 1.3, 0.9]
    for t in range(3):
        m.before_task(task(t))
        assert m.magnitudes.shape == (1,) and m.adapter.frozen_rank == 0  # old ones are not magnitudes any more
        assert trainable(m) == {id(p) for p in (m.adapter.A, m.adapter.B, m.magnitudes, m.head.weight, m.head.bias)}
        raw.append(train_randomly(m, t, magnitudes=[learned[t]]))
        m.after_task(task(t))
    fixed = [(lambda l, p, A, B, k=k: (learned[k] if scale == "learned" else 1.0) / official_norm(A, B), *raw[k])
             for k in range(2)]
    check_forward(m, bb, dense_reference(plain, fixed + [(lambda *a: learned[2], *raw[2])])(X))
    assert m.ranks == [2, 2, 2] and m.adapter.merged_ranks == [2, 2]
    m.training_step(X, None, task(2)).logits.square().sum().backward()
    assert all(p.grad is None for p in bb.parameters())  # the merged old components are weights: frozen
    restored = make("sdlora", copy.deepcopy(plain), rank=2, ablation="fixed-old", fixed_old_scale=scale)
    for t in range(3):
        restored.before_task(task(t))
    restored.load_state_dict(m.state_dict())  # the merged components are re-merged from the state
    torch.testing.assert_close(restored.backbone(X), bb(X), atol=1e-6, rtol=1e-6)


def test_ablations_belong_to_sdlora_and_table4_presets_carry_the_paper_numbers():
    from clbench.errors import ConfigError

    with pytest.raises(ConfigError, match="ablation of sdlora"):
        make("sdlora-rr", tiny_vit(), ablation="fixed-old")
    table4 = {(p.name, p.when["n_tasks"]): p for p in PRESETS if p.method == "sdlora" and p.name.startswith("table4")}
    assert {name for name, _ in table4} == {"table4-first-direction", "table4-one-component", "table4-fixed-old"}
    assert table4[("table4-first-direction", 5)].reported.acc == 78.17
    assert table4[("table4-one-component", 10)].reported.aaa == 76.32
    for preset in table4.values():
        assert preset.values["method.ablation"] == preset.name.removeprefix("table4-")
        paper = next(p for p in PRESETS if p.name == "paper" and p.method == "sdlora" and p.benchmark == "imagenet_r"
                     and p.when == preset.when)
        assert {k: v for k, v in preset.values.items() if k != "method.ablation"} == paper.values
