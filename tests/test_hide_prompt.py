"""HiDe-Prompt: class statistics, both alignments, prompt momentum, contrastive term, TII."""

import pytest
import torch
from torch.nn import functional as F

from clbench.experiment import execute, plan
from clbench.methods.hide_prompt import JOINT_REASON, centroid_statistics

from conftest import TINY
from clbench.testing import task_tensors, tensor_stream

from prompt_fixtures import build, run_tasks, task_ctx


def test_centroid_statistics_recover_separated_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0, 0.0], [-5.0, 2.0, 1.0]])
    x = torch.cat([centres[0] + 0.1 * torch.randn(30, 3), centres[1] + 0.3 * torch.randn(20, 3)])
    mean, var, count = centroid_statistics(x, 3)  # asks for 3: one cluster is split or tiny
    big = count.argsort(descending=True)
    assert count.sum() == 50 and mean.shape == var.shape == (3, 3)
    overall = (mean * count[:, None]).sum(0) / 50
    torch.testing.assert_close(overall, x.mean(0), atol=1e-5, rtol=0)
    m2, v2, c2 = centroid_statistics(x, 2)
    order = m2[:, 0].argsort(descending=True)
    torch.testing.assert_close(m2[order], torch.stack([x[:30].mean(0), x[30:].mean(0)]))
    torch.testing.assert_close(v2[order], torch.stack([x[:30].var(0, unbiased=False), x[30:].var(0, unbiased=False)]))
    assert c2[order].tolist() == [30, 20] and big.numel() == 3
    few = centroid_statistics(x[:2], 5)[2]  # fewer samples than centroids: one cluster each
    assert few.tolist() == [1, 1, 0, 0, 0]


def test_prompt_momentum_mixes_in_earlier_prompts_and_is_written_back():
    method, info = build("hide-prompt", prompt_momentum=0.25)
    run_tasks(method, 2)
    p = method.prompts.detach()
    torch.testing.assert_close(method.training_prompt(0), p[:, 0])
    task = task_ctx(info, 2)
    method.before_task(task)
    assert torch.equal(method.prompts[:, 2], method.prompts[:, 1])  # shared pool copy
    mixed = method.training_prompt(2).detach().clone()
    torch.testing.assert_close(mixed, 0.75 * method.prompts[:, 2] + 0.25 * method.prompts[:, :2].mean(dim=1))
    method.after_task(task)
    torch.testing.assert_close(method.prompts[:, 2], mixed)


def test_contrastive_term_is_the_identity_ce_over_prototypes_and_features():
    method, info = build("hide-prompt", temperature=0.8)
    run_tasks(method, 1)
    method.before_task(task_ctx(info, 1))
    protos = method._prototypes
    assert protos.shape[1] == 32 and 0 < len(protos) <= 2 * 2  # task 0's stored centroids
    feats = torch.randn(5, 32, requires_grad=True)
    rows = torch.cat([protos, feats])
    expected = F.cross_entropy(rows @ rows.t() / 0.8, torch.arange(len(rows)))
    got = method.contrastive(feats)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert feats.grad.abs().sum() > 0


def test_after_task_stores_statistics_and_declares_both_alignments():
    method, info = build("hide-prompt", n_centroids=2, tii_align_batch=3, tap_batch=4)
    run_tasks(method, 2, steps=1)
    task = task_ctx(info, 1)
    for space in ("raw", "prompted"):
        assert getattr(method, f"{space}_mean").shape == (4, 2, 32)
        assert getattr(method, f"{space}_count").sum(1).tolist() == [6.0] * 4
    raw_class0 = (method.raw_mean[0] * method.raw_count[0, :, None]).sum(0) / 6  # frozen features
    x, y = task_tensors(tensor_stream(info), 0)  # the data the trainer ran on
    torch.testing.assert_close(raw_class0, method.query(x[y == 0]).mean(0), atol=1e-5, rtol=1e-5)
    assert method.post_task_phases(task_ctx(info, 0)) == []
    tii, tap = method.post_task_phases(task)
    assert (tii.name, tap.name) == ("tii-align", "tap") and tii.train["optimizer"] == "sgd"
    assert tap.groups[0]["params"] == list(method.head.parameters())
    for phase, size in ((tii, 3), (tap, 4)):
        batches = phase.batches(0)
        assert len(batches) == task.lo  # one batch per class of the earlier tasks, as the official code
        assert all(x.shape == (size, 32) and y.max() < task.hi for x, y in batches)
        assert torch.isfinite(phase.loss(*batches[0]))


def test_tii_prediction_picks_each_samples_prompt():
    method, info = build("hide-prompt")
    run_tasks(method, 3)
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        method.tii_head.weight[:] = 10 * method.tii_mlp(method.query(x))  # sample i -> class i
        tasks = method.predict_tasks(method.query(x))
        assert tasks.tolist() == [0, 0, 1, 1, 2, 2]
        with method.eval_context():
            logits = method.predict(x)
            method.eval_labels(torch.tensor([0, 2, 2, 3, 4, 0]))  # true tasks 0, 1, 1, 1, 2, 0
        expected = method.head(method.features(x, method.prompts, tasks))
    torch.testing.assert_close(logits, expected)
    log = method.task_log()
    assert log["tii_counts"] == [2, 2, 2] and log["tii_task_acc_per_task"] == [50.0, 200 / 3, 100.0]


def test_runs_end_to_end_with_both_alignment_phases(tmp_path):
    overrides = TINY + [("benchmark.n_classes", 4), ("benchmark.n_tasks", 2), ("engine.output_dir", str(tmp_path)),
                        ("hide-prompt.align_epochs", 2)]
    (run,) = plan(["hide-prompt"], "shapes", [1], None, overrides)
    record = execute(run)
    first, second = record["tasks"]
    assert "tii/loss" in first["train_logs"] and "tii_ce" not in first["train_logs"]  # the TII stage
    assert "tap/loss" not in first["train_logs"]
    assert {"tii/loss", "tii-align/loss", "tap/loss", "contrast"} <= set(second["train_logs"])
    assert 0 <= second["method_log"]["tii_task_acc"] <= 100 and len(second["method_log"]["tii_task_acc_per_task"]) == 2


def _tii_state(method):
    return [p.detach().clone() for p in method.tii_parameters()]


def test_tii_stage_trains_only_the_tii_before_the_prompt_stage_with_its_own_lr_and_epochs():
    method, info = build("hide-prompt", tii_epochs=3, tii_lr=1e-3, tii_optimizer="adam")
    events, snapshots = [], {}
    tii_loss, groups = method.tii_loss, method.parameter_groups

    def logged_tii_loss(*args):
        events.append("tii")
        return tii_loss(*args)

    def logged_groups():  # the engine asks for the main groups right after the pre-training phases
        events.append("main groups")
        snapshots["after_stage"] = _tii_state(method)
        return groups()

    method.tii_loss, method.parameter_groups = logged_tii_loss, logged_groups
    before = [p.detach().clone() for p in method.tii_mlp.parameters()]  # (the head grows at the task start)
    (result,) = run_tasks(method, 1, steps=2)  # one batch per epoch: 3 TII steps, then 2 prompt steps
    assert events == ["tii"] * 3 + ["main groups"]  # before the main loop, and not in it
    phase = method.pre_training_phases(task_ctx(info, 0))[0]
    assert (phase.name, phase.epochs) == ("tii", 3)
    assert phase.train == {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "weight_decay": 0.0,
                           "grad_clip": 1.0}
    # an Adam step moves a parameter by about lr at most: 3 steps at lr 1e-3 (train.lr here is 0.05)
    moved = max((a - b).abs().max() for a, b in zip(snapshots["after_stage"], before))  # the MLP comes first
    assert 2e-3 < moved < 3.3e-3
    assert all(torch.equal(a, b) for a, b in zip(_tii_state(method), snapshots["after_stage"]))  # main: frozen TII
    assert not any(p in {id(q) for q in method.tii_parameters()} for g in groups() for p in map(id, g["params"]))
    assert "tii/loss" in result["train_logs"] and "tii_ce" not in result["train_logs"]
    assert not method.noncomparable


def test_joint_schedule_is_the_earlier_single_loop_and_marks_the_run():
    method, info = build("hide-prompt", tii_schedule="joint", tii_lr_scale=0.25, reg=0.3)
    task = task_ctx(info, 0)
    method.before_task(task)
    assert method.pre_training_phases(task) == [] and method.noncomparable == [JOINT_REASON]
    groups = method.parameter_groups()
    assert groups[-1]["lr_scale"] == 0.25 and groups[-1]["params"] == method.tii_parameters()
    out = method.training_step(task.x, task.y, task)
    tii_ce = F.cross_entropy(method.tii_logits(method.query(task.x))[:, 0:2], task.y)
    contrast = method.contrastive(method.features(task.x, method.training_prompt(0).unsqueeze(1), 0))
    torch.testing.assert_close(out.loss, tii_ce + 0.3 * contrast)
    assert list(out.logs) == ["tii_ce", "contrast"]


@pytest.mark.parametrize("schedule", ["stage", "joint"])
def test_tii_schedule_is_validated_and_recorded(schedule, tmp_path):
    overrides = TINY + [("benchmark.n_classes", 4), ("benchmark.n_tasks", 2), ("engine.output_dir", str(tmp_path)),
                        ("method.tii_schedule", schedule), ("method.tii_epochs", 1), ("method.align_epochs", 1)]
    (run,) = plan(["hide-prompt"], "shapes", [1], None, overrides)
    record = execute(run)
    assert record["config"]["method"]["tii_schedule"] == schedule
    assert record["comparable"] is (schedule == "stage")
