"""Every mechanic of the engine's loop, observed through the real trainer.

A probe method records what the engine does to it: the gradient its hooks see before
clipping, the parameter change the optimiser makes (SGD without momentum: change =
-lr × clipped gradient, so the effective lr and the clipped norm can be read back), the
batches it is fed, and the order of the stages. Each test fails if its mechanic breaks.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from clbench.config import MethodConfig, TrainConfig
from clbench.engine.checkpoint import Checkpointer
from clbench.engine.loop import LoopSpec
from clbench.engine.optim import lr_factor, masked_cross_entropy, task_hparams
from clbench.engine.trainer import Trainer
from clbench.errors import TrainingDiverged
from clbench.methods import CLMethod, Phase, StepOutput, StreamInfo
from clbench.testing import InMemoryTask, run_config, run_method, tensor_stream

from conftest import tiny_vit

INFO = StreamInfo(4, ((0, 2), (2, 4)))
SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}


class Probe(CLMethod):
    """A linear head in two groups (the second at ``lr_scale``) on frozen features, plus an
    extra parameter that only the method's own loss term reaches."""

    def __init__(self, lr_scale=0.1, extra=0.0, phases=(), nan_at=None, info=INFO):
        super().__init__(MethodConfig(), tiny_vit(), info)
        self.freeze_backbone()
        d = self.backbone.embed_dim
        torch.manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(info.n_classes, d) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(info.n_classes, d) * 0.1)
        self.u = torch.nn.Parameter(torch.ones(3))
        self.lr_scale, self.extra, self.phases, self.nan_at = lr_scale, extra, phases, nan_at
        self.steps: list[dict] = []  # one entry per optimiser step
        self.stages: list[str] = []

    def parameter_groups(self):
        return [{"params": [self.w1, self.u]}, {"params": [self.w2], "lr_scale": self.lr_scale}]

    def logits(self, x):
        f = self.backbone(x)
        return f @ self.w1.t() + f @ self.w2.t()

    def training_step(self, x, y, ctx):
        logits = self.logits(x)
        self.steps.append({"task": ctx.index, "y": y.clone(), "x_sum": x.sum(dim=(1, 2, 3)).clone(),
                           "logits": logits.detach().clone()})
        loss = self.extra * self.u.sum()
        if self.nan_at is not None and len(self.steps) == self.nan_at:
            loss = loss + float("nan")
        return StepOutput(logits, loss=loss, logs={"extra": loss.detach()})

    def _params(self):
        return [p for g in self.parameter_groups() for p in g["params"]]

    def before_optimizer_step(self, ctx):
        step = self.steps[-1] if ctx.stage == "train" else {}
        step["grads"] = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self._params()]
        step["before"] = [p.detach().clone() for p in self._params()]
        if ctx.stage != "train":
            self.steps.append({"task": ctx.index, "stage": ctx.stage, **step})
        self.stages.append(ctx.stage)

    def after_optimizer_step(self, ctx):
        step = self.steps[-1]
        step["delta"] = [p.detach() - b for p, b in zip(self._params(), step["before"])]

    def pre_training_phases(self, ctx):
        return [p(self, ctx) for kind, p in self.phases if kind == "pre"]

    def post_task_phases(self, ctx):
        return [p(self, ctx) for kind, p in self.phases if kind == "post"]

    def predict(self, x):
        return self.logits(x)


def effective_lrs(step):
    """lr the optimiser applied to each parameter: -Δp / g (SGD, no momentum, no decay)."""
    out = []
    for g, d in zip(step["grads"], step["delta"]):
        mask = g.abs() > 1e-6
        out.append(float((-d[mask] / g[mask]).mean()) if mask.any() else None)
    return out


def test_group_lr_scale_and_the_schedule_reach_the_optimiser():
    probe = Probe(lr_scale=0.1)
    run_method(probe, tasks=1, steps=4, train={**SGD, "lr": 0.2, "schedule": "cosine"})
    for epoch, step in enumerate(probe.steps):
        lr = 0.2 * lr_factor("cosine", epoch, 4, (), 0.1)
        w1, u, w2 = effective_lrs(step)
        assert w1 == pytest.approx(lr, rel=1e-4) and w2 == pytest.approx(0.1 * lr, rel=1e-4)


def test_first_task_lr_and_epochs_apply_to_the_first_task_only():
    probe = Probe()
    results = run_method(probe, tasks=2, steps=2, train={**SGD, "lr": 0.01, "first_task_lr": 0.3,
                                                         "first_task_epochs": 3})
    assert [r["steps"] for r in results] == [3, 2] and [r["lr"] for r in results] == [0.3, 0.01]
    assert [round(effective_lrs(s)[0], 6) for s in probe.steps] == [0.3] * 3 + [0.01] * 2


def test_grad_clip_bounds_the_gradient_norm_of_the_update():
    for clip in (None, 1e-3):
        probe = Probe(extra=5.0)
        run_method(probe, tasks=1, steps=2, train={**SGD, "lr": 0.1, "grad_clip": clip})
        for step in probe.steps:
            raw = math.sqrt(sum(float(g.square().sum()) for g in step["grads"]))
            # the update is -lr × lr_scale × clipped gradient (w2 has lr_scale 0.1)
            applied = math.sqrt(sum(float((d / (0.1 * s)).square().sum())
                                    for d, s in zip(step["delta"], (1.0, 1.0, 0.1))))
            assert raw > 1e-2
            assert applied == pytest.approx(raw if clip is None else clip, rel=1e-3)


def test_the_methods_own_loss_enters_the_gradient_and_the_logs():
    probe = Probe(extra=3.0)
    results = run_method(probe, tasks=1, steps=2, train={**SGD, "lr": 0.01})
    assert all(torch.allclose(s["grads"][1], torch.full((3,), 3.0)) for s in probe.steps)  # d(3·Σu)/du
    logs = results[0]["train_logs"]
    assert logs["loss"] == pytest.approx(logs["ce"] + logs["extra"], rel=1e-5)
    assert logs["extra"] == pytest.approx(3.0 * (3 + (3 - 3 * 0.03)) / 2, rel=1e-4)  # u moved by -lr·3 once


@pytest.mark.parametrize("policy", ["seen", "current", "none"])
def test_logit_mask_policy_and_the_logged_loss_is_the_mean_over_steps(policy):
    info = StreamInfo(6, ((0, 2), (2, 4), (4, 6)))
    probe = Probe(info=info)
    results = run_method(probe, tasks=2, steps=3, train={**SGD, "lr": 0.05, "logit_mask": policy})
    for task, (lo, hi) in zip(results, info.task_ranges):
        steps = [s for s in probe.steps if s["task"] == task["task"]]
        ces = [float(masked_cross_entropy(s["logits"], s["y"], lo, hi, policy)) for s in steps]
        assert len(ces) == 3 and task["train_logs"]["ce"] == pytest.approx(sum(ces) / 3, rel=1e-5)
    reference = {"seen": lambda z, y: F.cross_entropy(z[:, :4], y), "current": lambda z, y: F.cross_entropy(
        z[:, 2:4], y - 2), "none": lambda z, y: F.cross_entropy(z, y)}[policy]
    last = probe.steps[-1]
    assert float(masked_cross_entropy(last["logits"], last["y"], 2, 4, policy)) == pytest.approx(
        float(reference(last["logits"], last["y"])))


def test_epoch_orders_differ_between_epochs_and_are_a_function_of_seed_task_and_epoch():
    """(That the ranks' batches together are the one-process batches: tests/test_ddp.py.)"""
    probe = Probe()
    run_method(probe, tasks=1, steps=3, train={**SGD, "lr": 0.0, "batch_size": 4}, per_class=6)
    orders = [torch.cat([s["x_sum"] for s in probe.steps[e * 3:(e + 1) * 3]]) for e in range(3)]
    assert all(len(o) == 12 for o in orders)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert all(torch.equal(o.sort().values, orders[0].sort().values) for o in orders)  # each epoch: every sample once
    again = Probe()
    run_method(again, tasks=1, steps=3, train={**SGD, "lr": 0.0, "batch_size": 4}, per_class=6)
    assert all(torch.equal(a["x_sum"], b["x_sum"]) for a, b in zip(probe.steps, again.steps))


def test_a_nan_loss_stops_the_run_with_a_clear_error():
    with pytest.raises(TrainingDiverged, match=r"training loss became nan in task 1.*Lower train.lr"):
        run_method(Probe(nan_at=2), tasks=1, steps=3, train={**SGD, "lr": 0.01})


def _phase(name, lr_values):
    """A phase that trains the probe's w1 on two batches of random features per epoch, drawn
    from the global generator (as methods sample stored class statistics)."""
    def make(probe, ctx):
        d = probe.backbone.embed_dim
        batches = lambda epoch: [(torch.randn(4, d), torch.randint(0, ctx.hi, (4,))) for _ in range(2)]  # noqa: E731
        return Phase(name, [{"params": [probe.w1]}], 2, batches,
                     lambda f, y: F.cross_entropy(f @ probe.w1.t(), y), {**SGD, **lr_values})
    return make


def test_phases_run_before_and_after_the_main_training_with_their_overrides():
    probe = Probe(phases=[("pre", _phase("warmup", {"lr": 0.5})), ("post", _phase("align", {"lr": 0.25}))])
    results = run_method(probe, tasks=1, steps=2, train={**SGD, "lr": 0.01})
    assert probe.stages == ["warmup"] * 4 + ["train"] * 2 + ["align"] * 4
    by_stage = {s.get("stage", "train"): effective_lrs(s)[0] for s in probe.steps}
    assert by_stage == {"warmup": pytest.approx(0.5, rel=1e-4), "train": pytest.approx(0.01, rel=1e-4),
                        "align": pytest.approx(0.25, rel=1e-4)}
    assert {"warmup/loss", "align/loss", "loss", "ce"} <= set(results[0]["train_logs"])


def test_a_diverging_phase_names_itself():
    bad = lambda probe, ctx: Phase("align", [{"params": [probe.w1]}], 1,  # noqa: E731
                                   lambda e: [(torch.randn(2, 32), torch.zeros(2, dtype=torch.long))],
                                   lambda f, y: (f @ probe.w1.t()).sum() * float("nan"), SGD)
    with pytest.raises(TrainingDiverged, match="'align' phase became nan"):
        run_method(Probe(phases=[("post", bad)]), tasks=1, steps=1, train={**SGD, "lr": 0.01})


class Projecting(Probe):
    """A gradient-level method: projects w1's gradient onto the orthogonal complement of a
    stored subspace of the feature space (GPM-style), entirely inside its own hook."""

    def __init__(self, project):
        super().__init__()
        torch.manual_seed(3)
        self.register_buffer("basis", torch.linalg.qr(torch.randn(self.backbone.embed_dim, 4))[0])
        self.project = project

    def parameter_groups(self):
        return [{"params": [self.w1]}]

    def before_optimizer_step(self, ctx):
        if self.project:
            self.w1.grad -= self.w1.grad @ self.basis @ self.basis.t()

    def after_optimizer_step(self, ctx):
        pass


def test_a_gradient_projection_method_trains_through_the_engine_without_engine_changes():
    moved_in_subspace = {}
    for project in (True, False):
        method = Projecting(project)
        start = method.w1.detach().clone()
        run_method(method, tasks=2, steps=3, train={"optimizer": "sgd", "momentum": 0.9, "lr": 0.1})
        delta = method.w1.detach() - start
        moved_in_subspace[project] = float((delta @ method.basis).norm() / delta.norm())
    assert moved_in_subspace[True] < 1e-5 and moved_in_subspace[False] > 0.05


def _trainer(method, tmp_path, every):
    cfg = run_config(method, {**SGD, "lr": 0.05, "epochs": 2, "batch_size": 4},
                     engine={"checkpoint_every": every})
    return Trainer(method, tensor_stream(method.info, per_class=4), cfg,
                   checkpoint=Checkpointer(tmp_path if every else None, every))


class Crash(BaseException):
    pass


@pytest.mark.parametrize("stage", ["warmup", "train", "align"])
@pytest.mark.parametrize("crash_at", [2, 3])  # within an epoch, at an epoch's end
def test_a_run_stopped_in_any_stage_resumes_mid_loop_to_the_same_result(tmp_path, monkeypatch, stage, crash_at):
    phases = [("pre", _phase("warmup", {"lr": 0.5})), ("post", _phase("align", {"lr": 0.25}))]
    reference = Probe(phases=phases)
    _trainer(reference, tmp_path / "ref", 0).fit()

    from clbench.engine.loop import Loop

    original, calls = Loop.step, {"n": 0}

    def crash(loop, spec: LoopSpec, *args):
        if spec.task_index == 1 and spec.name == stage:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise Crash
        return original(loop, spec, *args)

    monkeypatch.setattr(Loop, "step", crash)
    with pytest.raises(Crash):
        _trainer(Probe(phases=phases), tmp_path / "run", 1).fit()
    monkeypatch.undo()
    point = Checkpointer(tmp_path / "run", 1).load()
    assert point.tasks_done == 1 and point.step["stage"]["name"] == stage and point.step["position"]["steps"] == crash_at - 1
    resumed = Probe(phases=phases)
    _trainer(resumed, tmp_path / "run", 1).fit(point)
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_in_memory_task_is_a_task_context():
    from clbench.methods.base import TaskContext

    assert isinstance(InMemoryTask(0, 0, 2, 1), TaskContext)


def test_logit_mask_policies():
    logits = torch.randn(5, 6)
    y = torch.tensor([2, 3, 3, 2, 3])
    assert torch.allclose(masked_cross_entropy(logits, y, 2, 4, "current"), F.cross_entropy(logits[:, 2:4], y - 2))
    assert torch.allclose(masked_cross_entropy(logits, y, 2, 4, "seen"), F.cross_entropy(logits[:, :4], y))
    assert torch.allclose(masked_cross_entropy(logits, y, 2, 4, "none"), F.cross_entropy(logits, y))


def test_schedules_and_first_task_overrides():
    assert lr_factor("constant", 3, 10, (), 0.1) == 1.0
    assert lr_factor("cosine", 0, 10, (), 0.1) == 1.0 and math.isclose(lr_factor("cosine", 5, 10, (), 0.1), 0.5)
    assert [lr_factor("multistep", e, 20, (10, 15), 0.05) for e in (9, 10, 15)] == pytest.approx([1, 0.05, 0.0025])
    cfg = TrainConfig(epochs=20, lr=5e-3, first_task_lr=1e-2, first_task_epochs=10, milestones=(10, 15))
    assert task_hparams(cfg, 0) == (10, 1e-2, (10, 15)) and task_hparams(cfg, 1) == (20, 5e-3, (10, 15))


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_results_within_float_tolerance():
    """engine.compile (torch.compile of the backbone forward, here on the CPU with inductor)
    through adapter hooks, training and merged evaluation."""
    from clbench.registry import METHODS

    results = {}
    for compiled in (False, True):
        cls = METHODS.get("lora")
        method = cls(cls.Config(rank=2), tiny_vit(seed=1), INFO)
        results[compiled] = run_method(method, tasks=1, steps=2, train={"lr": 0.05},
                                       engine={"compile": compiled})[0]
        results[compiled]["compiled"] = hasattr(method.backbone.vit.forward_features, "_torchdynamo_orig_callable")
    assert results[True]["compiled"] and not results[False]["compiled"]
    assert results[True]["correct_per_class"] == results[False]["correct_per_class"]
    for key, value in results[False]["train_logs"].items():
        assert results[True]["train_logs"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_weights_broken_by_the_last_update_stop_the_task_before_evaluation_and_the_boundary(tmp_path):
    """The loss of the last step was finite, its update was not: no boundary checkpoint (the
    resume point) may hold those weights."""
    class Poisoned(Probe):
        def after_optimizer_step(self, ctx):
            super().after_optimizer_step(ctx)
            if ctx.index == 1 and sum(s["task"] == 1 for s in self.steps) == 4:
                with torch.no_grad():
                    self.w1[0, 0] = float("inf")

    method = Poisoned()
    trainer = _trainer(method, tmp_path, 0)
    trainer.checkpoint = Checkpointer(tmp_path, 0)
    with pytest.raises(TrainingDiverged, match="made the parameters NaN or infinite in task 2"):
        trainer.fit()
    point = Checkpointer(tmp_path, 0).load()
    assert point.tasks_done == 1 and torch.isfinite(point.model["w1"]).all()
