"""SLCA: the slow learner's lr groups, frozen old heads, Gaussian sampling, the alignment phase."""

import math

import pytest
import torch

from clbench.config import TrainConfig, apply_values
from clbench.engine.optim import build_optimizer
from clbench.engine.state import restore_state
from clbench.methods.base import StreamInfo
from clbench.methods.slca import SLCA
from clbench.testing import InMemoryTask, run_method, separable_images

from conftest import tiny_vit

INFO = StreamInfo(5, ((0, 2), (2, 5)))  # unequal tasks: τ_c must come from the real class→task map


def make(**options):
    return SLCA(apply_values(SLCA.Config(), options, "method"), tiny_vit(), INFO)


def task(t, per_class=12):
    x, y = separable_images(*INFO.task_ranges[t], per_class=per_class)
    return InMemoryTask.of(INFO, t, x, y, batch_size=10)


def test_backbone_lr_is_a_fixed_fraction_of_the_heads():
    m = make(backbone_lr_scale=0.01)
    m.before_task(task(0))
    groups = m.parameter_groups()
    opt = build_optimizer(groups, TrainConfig(lr=0.05), 0.05)
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.01 * head["lr"]) and head["lr"] == 0.05
    assert sum(p.numel() for p in backbone["params"]) == sum(p.numel() for p in m.backbone.parameters())
    assert head["params"][0] is m.weight and m.weight.shape == (2, m.backbone.embed_dim)
    frozen = make(backbone_lr_scale=0)
    frozen.before_task(task(0))
    assert [g["name"] for g in frozen.parameter_groups()] == ["head"]
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_old_heads_stay_as_trained_and_alignment_changes_only_the_aligned_copy():
    m = make(ca_epochs=2, ca_samples=8)
    run_method(m, tasks=1, steps=2, train={"lr": 0.05})
    first = (m.weight.detach().clone(), m.bias.detach().clone())
    assert torch.equal(m.aligned_weight, first[0])  # no alignment after the first task
    backbone0 = [p.detach().clone() for p in m.backbone.parameters()]
    results = run_method(m, tasks=range(1, 2), steps=2, train={"lr": 0.05})
    assert torch.equal(m.past_weight, first[0]) and torch.equal(m.past_bias, first[1])
    assert any(not torch.equal(a, b) for a, b in zip(backbone0, m.backbone.parameters()))  # slow, not frozen
    trained = torch.cat([m.past_weight, m.weight.detach()])
    assert m.aligned_weight.shape == trained.shape and not torch.allclose(m.aligned_weight, trained)
    assert "ca/loss" in results[0]["train_logs"]
    log = m.task_log()
    assert log["ca_epochs_logged"] == 2 and math.isfinite(log["ca_loss_last_epoch"])
    # predictions come from the aligned copy; the next task would train from the unaligned heads
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        f = m.backbone(x)
        assert torch.allclose(m.predict(x), f @ m.aligned_weight.t() + m.aligned_bias)


def test_alignment_trains_on_features_sampled_from_the_class_gaussians():
    m = make(ca_samples=4000)
    m.before_task(task(0))
    m.after_task(task(0))
    m.before_task(task(1))
    m.after_task(task(1))
    with torch.no_grad():
        feats = m.backbone(task(1).x).double()
    rows = feats[task(1).y == 3]
    assert torch.allclose(m.means[3].double(), rows.mean(0), atol=1e-5)
    cov = m.chol[3].double() @ m.chol[3].double().t()
    assert torch.allclose(cov, torch.cov(rows.t()) + 1e-4 * torch.eye(rows.shape[1], dtype=torch.float64), atol=1e-5)
    assert m.mean_scales(1).tolist() == pytest.approx([0.95, 0.95, 1.0, 1.0, 1.0])
    (phase,) = m.post_task_phases(task(1))
    batches = list(phase.batches(0))
    assert len(batches) == 5 and all(len(y) == 4000 for _, y in batches)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert torch.bincount(y).tolist() == [4000] * 5
    for c in (0, 3):
        sampled = x[y == c].double()
        scale = 0.95 if c < 2 else 1.0
        assert torch.allclose(sampled.mean(0), scale * m.means[c].double(), atol=0.05 * m.means[c].abs().max() + 0.02)
        cov = m.chol[c].double() @ m.chol[c].double().t()
        assert (torch.cov(sampled.t()) - cov).abs().max() < 0.1 * cov.abs().max() + 1e-3
    assert phase.groups[0]["params"] == [m.aligned_weight, m.aligned_bias] and m.aligned_weight.requires_grad


def test_logit_normalised_loss_is_invariant_to_rescaling_the_heads():
    m = make()
    for t in range(2):
        m.before_task(task(t))
        m.after_task(task(t))
    f, y = torch.randn(16, m.backbone.embed_dim), torch.randint(0, 5, (16,))
    base = m.alignment_loss(f, y, 1)
    with torch.no_grad():
        m.aligned_weight.mul_(3.0)
        m.aligned_bias.mul_(3.0)
    assert torch.allclose(m.alignment_loss(f, y, 1), base, atol=1e-5)
    plain = make(logit_norm=0)
    restore_state(plain, m.state_dict(), omitted=())
    logits = f @ m.aligned_weight.t() + m.aligned_bias
    assert torch.allclose(plain.alignment_loss(f, y, 1), torch.nn.functional.cross_entropy(logits, y))
