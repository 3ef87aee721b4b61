"""CODA-Prompt: component composition, Gram-Schmidt blocks, frozen old components, schedule."""

import math

import torch
from torch.nn import functional as F

from clbench.engine.optim import lr_factor

from prompt_fixtures import build, run_tasks, task_ctx


def test_weights_are_the_cosine_of_the_attended_query_and_the_key():
    q, keys, attention = torch.randn(5, 32), torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    method, _ = build("coda-prompt")
    alpha = method.weights(q, keys, attention)
    attended = F.normalize(q[None, :, None, :] * attention[:, None], dim=-1)  # (layers, B, m, D)
    reference = (attended * F.normalize(keys, dim=-1)[:, None]).sum(-1)
    torch.testing.assert_close(alpha, reference, atol=1e-5, rtol=1e-5)
    zero = method.weights(q, keys, torch.zeros_like(attention))  # A = 0: every weight 0, no NaN
    assert torch.equal(zero, torch.zeros_like(zero))


def test_each_new_block_is_orthonormal_and_orthogonal_to_the_old_components():
    method, info = build("coda-prompt", pool_size=12)  # 4 components per task and layer
    run_tasks(method, 1)
    with torch.no_grad():  # trained components are no longer orthonormal
        for name in ("old_p", "old_k", "old_a"):
            getattr(method, name).add_(0.3 * torch.randn_like(getattr(method, name)))
    method.before_task(task_ctx(info, 1))
    for new, old in ((method.k, method.old_k), (method.a, method.old_a), (method.p.flatten(2), method.old_p.flatten(2))):
        assert new.shape[1] == 4 and old.shape[1] == 4
        gram = new @ new.transpose(1, 2)
        torch.testing.assert_close(gram, torch.eye(4).expand_as(gram), atol=1e-5, rtol=0)
        assert (new @ old.transpose(1, 2)).abs().max() < 1e-5


def test_old_components_get_no_gradient_and_do_not_move():
    method, info = build("coda-prompt", pool_size=12, ortho_mu=0.1)
    run_tasks(method, 1, steps=2)
    frozen = [method.old_p.clone(), method.old_k.clone(), method.old_a.clone()]
    task = task_ctx(info, 1)
    method.train()
    method.before_task(task)
    out = method.training_step(task.x, task.y, task)
    (out.logits.sum() + out.loss).backward()
    for name in ("p", "k", "a"):
        assert getattr(method, f"old_{name}").grad is None and getattr(method, name).grad.abs().sum() > 0
    assert all(p is not method.old_k for g in method.parameter_groups() for p in g["params"])
    method.after_task(task)
    run_tasks(method, 3, steps=2, start=2)  # later tasks train; task 0's components stay put
    for old, now in zip(frozen, (method.old_p, method.old_k, method.old_a)):
        assert torch.equal(now[:, :4], old)
    assert method.old_k.shape[1] == 12 and method.task_log() == {"components_per_layer": 12}


def test_ortho_penalty_is_zero_on_a_fresh_block_and_positive_after_a_change():
    method, info = build("coda-prompt", pool_size=12)
    method.before_task(task_ctx(info, 0))
    assert method.ortho_penalty() < 1e-10
    with torch.no_grad():
        method.k.mul_(2)
    assert method.ortho_penalty() > 1


def test_coda_cosine_schedule():
    factors = [lr_factor("coda-cosine", e, 50, (), 0.1) for e in range(50)]
    assert factors[0] == 1.0 and all(a > b for a, b in zip(factors, factors[1:]))
    assert math.isclose(factors[-1], math.cos(99 * math.pi / 200)) and 0.015 < factors[-1] < 0.016
    assert lr_factor("coda-cosine", 0, 1, (), 0.1) == 1.0
