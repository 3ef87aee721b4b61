"""InfLoRA and InfLoRA-b5: designed down-projections, subspace memory, merging, sizes, presets."""

import copy

import pytest
import torch

from clbench.engine.state import restore_state
from clbench.methods.inflora import SubspaceMemory, memory_threshold
import clbench.benchmarks  # noqa: F401  (registers the presets this file checks)
from clbench.presets import PRESETS
from clbench.testing import InMemoryTask

from conftest import tiny_vit
from test_sdlora import make, vit_b16

X = torch.rand(3, 3, 16, 16)


def data(seed, n=4, size=16, batches=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n * batches, 3, size, size, generator=g), torch.zeros(n * batches, dtype=torch.long)


def task(t, n_tasks=4, per_task=2, size=16):
    return InMemoryTask(t, t * per_task, (t + 1) * per_task, n_tasks, *data(t, size=size), batch_size=4)


def train_randomly(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.adapter.B.copy_(torch.randn(m.adapter.B.shape, generator=g) * 0.3)
        m.heads.weight.copy_(torch.randn(m.heads.weight.shape, generator=g))


def test_threshold_schedule():
    assert [round(memory_threshold(0.95, 1.0, t, 10), 6) for t in range(10)] == [0.95 + 0.005 * t for t in range(10)]
    assert memory_threshold(0.98, 1.0, 3, 10) == pytest.approx(0.986)
    m = make("inflora", tiny_vit(), lamb=0.9, n_tasks=4)
    for t in range(2):
        m.before_task(task(t))
        m.after_task(task(t))
        assert m.task_log()["threshold"] == pytest.approx(0.9 + 0.1 * t / 4)


@pytest.mark.parametrize("name", ["inflora", "inflora-b5"])
def test_function_is_unchanged_at_a_task_start_and_by_merging(name):
    bb = tiny_vit(depth=6) if name == "inflora-b5" else tiny_vit()
    plain = copy.deepcopy(bb)
    m = make(name, bb)
    m.eval()
    m.before_task(task(0))
    torch.testing.assert_close(m.backbone(X), plain(X))  # Up = 0
    for t in range(3):
        before = m.backbone(X)
        train_randomly(m, t)
        unmerged = m.predict(X)
        assert (m.backbone(X) - before).abs().max() > 1e-3  # the branch acts
        m.after_task(task(t))
        assert m.adapter.A is None and m.adapter.frozen_rank == 0  # merged into qkv, nothing stored
        torch.testing.assert_close(m.predict(X), unmerged, atol=1e-5, rtol=1e-5)
        m.before_task(task(t + 1))  # new designed branch with Up = 0, new head
        torch.testing.assert_close(m.predict(X)[:, : 2 * (t + 1)], unmerged, atol=1e-5, rtol=1e-5)
    assert m.adapter.merged_ranks == [10, 10, 10]
    # a fresh instance on the pretrained backbone re-merges the stored factors bit for bit
    fresh_bb = copy.deepcopy(plain)
    fresh = make(name, fresh_bb)
    restore_state(fresh, copy.deepcopy(m.task_state()))
    for b in range(bb.depth):
        assert torch.equal(fresh_bb.qkv(b).weight, bb.qkv(b).weight)
    fresh.eval()
    torch.testing.assert_close(fresh.predict(X), m.predict(X), atol=0, rtol=0)
    # loading again does not merge twice: the merges start again from the original rows, bit for bit
    restore_state(fresh, copy.deepcopy(m.task_state()))
    torch.testing.assert_close(fresh.predict(X), m.predict(X), atol=0, rtol=0)


def test_designed_down_projection_is_orthogonal_to_the_remove_memory():
    m = make("inflora", tiny_vit(), rank=3, lamb=0.6)
    m.before_task(task(0))
    A0 = m.adapter.A.detach().clone()
    assert torch.equal(A0[:, 0], A0[:, 1])  # the same design for k and v
    rows = A0[:, 0] * 3 ** 0.5
    torch.testing.assert_close(rows @ rows.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    assert not m.adapter.A.requires_grad and m.adapter.B.requires_grad
    train_randomly(m, 0)
    m.after_task(task(0))
    assert m.memory.kinds == ["remove", "remove"] and all(0 < k < 16 for k in m.memory.dims())
    for t in range(1, 3):
        m.before_task(task(t))
        for i in range(2):
            M = m.memory.basis(i)
            assert (m.adapter.A[i, 0] @ M).abs().max() < 1e-5  # rows lie in the complement of the memory
        train_randomly(m, t)
        m.after_task(task(t))


def test_dualgpm_switches_to_a_retain_basis_and_designs_inside_it():
    m = make("inflora", tiny_vit(), rank=2, lamb=0.9999)  # keeps almost everything: > d/2 directions
    m.before_task(task(0))
    train_randomly(m, 0)
    m.after_task(task(0))
    assert m.memory.kinds == ["retain", "retain"]
    m.before_task(task(1))
    for i in range(2):
        M = m.memory.basis(i)  # spans the free space
        assert M.shape[1] <= 16
        torch.testing.assert_close(M.t() @ M, torch.eye(M.shape[1]), atol=1e-5, rtol=0)
        A = m.adapter.A[i, 0]
        torch.testing.assert_close(A @ M @ M.t(), A, atol=1e-5, rtol=0)  # rows inside the free space


def spectrum_cov(weights, dim=8, seed=0):
    """A covariance with eigenvalues ``weights`` in a random orthonormal basis (returned too)."""
    Q = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]
    return Q @ torch.diag(torch.tensor(weights, dtype=torch.float64)) @ Q.t(), Q


def test_memory_update_follows_the_energy_criterion():
    # energies are S² of the covariance: eigenvalues 4, 2, 1, ... give 16, 4, 1, ... (total 26)
    C, Q = spectrum_cov([4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    gpm = SubspaceMemory(1, 8)
    gpm.update(C[None], eps=0.7, dual=False)
    assert gpm.dims() == [1]  # cumulative 16/26 = 0.62 < 0.7, then 20/26 = 0.77: one direction
    torch.testing.assert_close(gpm.basis(0).double().abs(), Q[:, :1].abs(), atol=1e-5, rtol=0)
    gpm.update(C[None], eps=0.9, dual=False)  # captured 16/26; add residual directions while < 0.9:
    assert gpm.dims() == [6] and gpm.kinds == ["remove"]  # 0.62 0.77 0.81 0.85 0.88 -> 0.92: five more
    M = gpm.basis(0).double()
    torch.testing.assert_close(M.t() @ M, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    dual = SubspaceMemory(1, 8)
    dual.update(C[None], eps=0.7, dual=True)
    dual.update(C[None], eps=0.9, dual=True)
    assert dual.kinds == ["retain"] and dual.dims() == [2]  # 6 > d/2 protected: keep the complement
    assert (dual.basis(0).double().t() @ M).abs().max() < 1e-5
    assert (dual.basis(0).double().t() @ Q[:, :2]).abs().max() < 1e-5  # leading directions stay protected
    dual.update(C[None], eps=0.999, dual=True)  # retain update: the free space shrinks
    assert dual.kinds == ["retain"] and dual.dims()[0] < 2


def test_memory_is_not_updated_after_the_last_task_and_old_heads_are_frozen():
    m = make("inflora", tiny_vit(), n_tasks=2)
    for t in range(2):
        m.before_task(task(t, n_tasks=2))
        groups = m.parameter_groups()
        assert [p for g in groups for p in g["params"]] == [m.adapter.B, m.heads.weight, m.heads.bias]
        assert m.heads.weight.shape == (2, 32) and m.heads.old_weight.shape == (2 * t, 32)
        m.after_task(task(t, n_tasks=2))
    assert "not updated" in m.task_log()["memory"]


@pytest.mark.parametrize("name, lora_params", [("inflora", 184_320), ("inflora-b5", 76_800)])
def test_parameter_counts_match_the_official_logs_for_vit_b16(name, lora_params):
    """Trainable parameters: 192,010 on CIFAR (184,320 LoRA + 7,690 head of 10 classes)."""
    m = make(name, vit_b16(), n_tasks=10, per_task=10)
    # the design's values are not what this test is about (and 12 SVDs of 768x768 are slow on a CPU)
    m.covariances = lambda *args: None
    m.design_down = lambda covs: torch.eye(768)[:10].expand(len(m.adapter.block_ids), 10, 768)
    m.before_task(InMemoryTask(0, 0, 10, 10))
    trainable = sum(p.numel() for g in m.parameter_groups() for p in g["params"])
    assert trainable == lora_params + 7_690
    assert m.adapter.A.numel() == lora_params and not m.adapter.A.requires_grad


def test_inflora_presets_cite_their_sources_and_numbers():
    def get(name, method, bench, n):
        (p,) = [p for p in PRESETS if p.name == name and p.method == method and p.benchmark == bench
                and p.when == {"n_tasks": n}]
        return p

    p = get("paper", "inflora", "cifar100", 10)
    assert p.values["train.optimizer"] == "adam" and p.values["train.lr"] == 5e-4 and p.values["method.lamb"] == 0.95
    assert p.values["backbone.name"] == "vit_base_patch16_224.augreg_in21k" and p.reported.acc == 86.51
    p = get("paper", "inflora", "imagenet_r", 10)
    assert p.values["train.epochs"] == 50 and p.values["method.lamb"] == 0.98 and p.reported.aaa == 80.82
    p = get("paper", "inflora", "domainnet", 5)
    assert p.values["method.rank"] == 30 and p.values["method.memory"] == "gpm" and p.values["train.optimizer"] == "sgd"
    assert get("paper", "inflora-b5", "imagenet_r", 20).values["method.lamb"] == 0.99
    assert get("paper", "inflora-b5", "imagenet_r", 5).values["method.lamb"] == 0.98
    for bench, n, acc, aaa in [("imagenet_r", 5, 76.95, 81.81), ("imagenet_r", 10, 74.75, 80.67),
                               ("imagenet_r", 20, 69.89, 76.68), ("imagenet_a", 10, 49.20, 60.92),
                               ("domainnet", 5, 71.59, 78.29)]:
        p = get("sdlora", "inflora-b5", bench, n)
        assert (p.reported.acc, p.reported.aaa) == (acc, aaa) and "SD-LoRA" in p.reported.source
        assert p.values["backbone.name"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
