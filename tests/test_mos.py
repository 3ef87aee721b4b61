"""MOS against dense references: merges are the weighted combination of the parts; the
official per-block merge counts; the vectorised self-refinement equals the per-sample loop;
evaluation never changes the model (same predictions twice and in another batch order) unless
the eval_drift variant is asked for; retrieval accuracy is logged."""

import copy

import pytest
import torch

from clbench.adapters.adapter_sets import NAMES
from clbench.engine.state import restore_state
from clbench.methods import StreamInfo
from clbench.registry import METHODS
from clbench.testing import run_method

from conftest import tiny_vit

SMALL = dict(rank=4, ca_epochs=2, ca_samples=8)


def build(n_tasks=3, per_task=2, **options):
    info = StreamInfo(n_tasks * per_task, tuple((t * per_task, (t + 1) * per_task) for t in range(n_tasks)))
    cls = METHODS.get("mos")
    return cls(cls.Config(**{**SMALL, **options}), tiny_vit(depth=3), info), info


def with_snapshots(method, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        with torch.no_grad():
            for p in method.adapters.current():
                p.copy_(torch.randn(p.shape, generator=g))
        method.adapters.freeze_current(keep=True)
    with torch.no_grad():
        for p in method.adapters.current():
            p.copy_(torch.randn(p.shape, generator=g))


def test_a_merged_adapter_is_the_weighted_combination_of_its_parts():
    method, _ = build(momentum=0.1)
    with_snapshots(method, 3)
    frozen, theta = method.adapters.frozen(), method.adapters.current()
    for k in (1, 2, 3):
        mean = [sum(w[j] for j in range(k)) / k for w in frozen]
        once = method.merged(theta, method.snapshot_mean(k), 1.0)
        for got, th, mu in zip(once, theta, mean):
            torch.testing.assert_close(got, 0.9 * th + 0.1 * mu)
        many = method.merged(theta, method.snapshot_mean(k), 5.0)
        for got, th, mu in zip(many, theta, mean):
            torch.testing.assert_close(got, 0.9 ** 5 * th + (1 - 0.9 ** 5) * mu)
    # in place on the live set: n applications of the merge, one at a time
    expected = [p.detach().clone() for p in theta]
    mean = [sum(w[j] for j in range(2)) / 2 for w in frozen]
    for _ in range(3):
        expected = [0.9 * e + 0.1 * mu for e, mu in zip(expected, mean)]
    method.merge_live(2, 3)
    for got, e in zip(method.adapters.current(), expected):
        torch.testing.assert_close(got, e)
    method.merge_live(0, 3)  # snapshot 0 never merges
    for got, e in zip(method.adapters.current(), expected):
        torch.testing.assert_close(got, e)


def test_official_evaluation_merges_block_b_b_plus_one_times_and_snapshot_zero_never():
    method, _ = build(momentum=0.2)
    with_snapshots(method, 3)
    frozen = method.adapters.frozen()
    used = method.snapshot_weights()
    for w, u in zip(frozen, used):
        assert torch.equal(u[0], w[0])
    for k in (1, 2):
        for b in range(3):
            c = 0.8 ** (b + 1)
            for w, u in zip(frozen, used):
                mu = w[:k].mean(0)
                torch.testing.assert_close(u[k, b], c * w[k, b] + (1 - c) * mu[b])
    paper, _ = build(merge_mode="paper")
    with_snapshots(paper, 2)
    assert all(u is f for u, f in zip(paper.snapshot_weights(), paper.adapters.frozen()))


def test_training_forwards_use_the_merged_weights_and_gradients_reach_the_live_set():
    method, _ = build(momentum=0.1)
    with_snapshots(method, 2)
    weights = method.live_weights(2)
    theta = method.adapters.current()
    target = method.merged(theta, method.snapshot_mean(2), method.block_applications().float())
    for w, t in zip(weights, target):
        torch.testing.assert_close(w[0], t)
    loss = sum(w.sum() for w in weights)
    loss.backward()
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in theta)  # d(merged)/dθ taken as identity


def loop_refine(head, feats, first, task_of_class, hi, steps=4):
    """The official per-sample self-refinement loop."""
    out = []
    for b in range(feats.shape[1]):
        prev, n = int(first[b]), 0
        while True:
            n += 1
            logits = head(feats[prev, b][None])[:, :hi]
            cur = int(task_of_class[logits.argmax(1)])
            if n >= steps or cur == prev:
                break
            prev = cur
        out.append(logits)
    return torch.cat(out)


def test_the_vectorised_self_refinement_equals_the_per_sample_loop():
    method, info = build(n_tasks=3)
    torch.manual_seed(0)
    feats = torch.randn(3, 64, 32)
    first = torch.randint(0, 3, (64,))
    logits, chosen = method.refine(feats, first, 6)
    torch.testing.assert_close(logits, loop_refine(method.head, feats, first, method.task_of_class, 6))
    assert chosen.shape == (64,) and int(chosen.max()) <= 2


@pytest.fixture(scope="module")
def trained():
    method, info = build(n_tasks=2)
    run_method(method, tasks=2, steps=2, train={"lr": 0.05})
    return method, info


def test_evaluation_is_side_effect_free_and_independent_of_batch_order(trained):
    method, _ = trained
    method.eval()
    state = copy.deepcopy(method.state_dict())
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with method.eval_context(), torch.no_grad():
        first = method.predict(x)
        again = method.predict(x)
        order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
        permuted = torch.cat([method.predict(x[order[:4]]), method.predict(x[order[4:]])])
    assert torch.equal(first, again)
    torch.testing.assert_close(permuted, first[order], atol=1e-5, rtol=1e-5)
    assert torch.equal(permuted.argmax(1), first[order].argmax(1))
    after = method.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items() if torch.is_tensor(v))


def test_the_eval_drift_variant_accumulates_merges_and_is_flagged(trained):
    method, info = trained
    drifting, _ = build(n_tasks=2, eval_drift=True)
    restore_state(drifting, copy.deepcopy(method.task_state()))
    assert drifting.task == method.task and drifting.stats.factor.shape[0] == 0
    assert drifting.noncomparable and "eval_drift" in drifting.noncomparable[0]
    drifting.eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        first = drifting.predict(x)
        torch.testing.assert_close(first, method.predict(x))  # the first evaluation is the default's
        drifting.predict(x)
        assert drifting.drift.tolist() == [0, 2]
        used = drifting.snapshot_weights()
        frozen = drifting.adapters.frozen()
        c = 0.9 ** (2 * 3 + 1)  # two forwards of 3 merges each, then block 0's own
        torch.testing.assert_close(used[0][1, 0], c * frozen[0][1, 0] + (1 - c) * frozen[0][0, 0])


def test_retrieval_accuracy_and_merge_coefficients_are_logged(trained):
    method, _ = trained
    method.eval()
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3] * 2)
    with method.eval_context(), torch.no_grad():
        method.predict(x)
        method.eval_labels(y)
    log = method.task_log()
    assert len(log["retrieval_task_acc_per_task"]) == 2 and 0 <= log["retrieval_task_acc"] <= 100
    assert "first_guess_task_acc" in log and sum(log["retrieval_counts"]) == 8
    assert log["merges_per_step"] == 4 and log["eval_snapshot_weight_per_block"][0] == pytest.approx(0.9)
    assert log["snapshot_distance_to_mean"] >= 0
    assert method.stats.factor.shape == (4, 32, 32) and "stats.factor" not in method.task_state()
    assert set(NAMES) <= {k.split(".")[-1] for k in method.task_state()}


def test_paper_mode_merges_once_per_step_and_evaluates_the_stored_snapshots():
    method, _ = build(n_tasks=2, merge_mode="paper", ca_epochs=1)
    run_method(method, tasks=1, steps=1, train={"lr": 0.05})
    snapshot0 = [w[0].clone() for w in method.adapters.frozen()]
    live0 = [p.detach().clone() for p in method.adapters.current()]
    assert all(torch.equal(s, p) for s, p in zip(snapshot0, live0))  # the snapshot is the live set
    run_method(method, tasks=range(1, 2), steps=1, train={"lr": 0.05})
    assert method.task_log()["merges_per_step"] == 1
    assert all(u is f for u, f in zip(method.snapshot_weights(), method.adapters.frozen()))
    assert all(torch.equal(w[0], s) for w, s in zip(method.adapters.frozen(), snapshot0))  # snapshot 0 is kept
