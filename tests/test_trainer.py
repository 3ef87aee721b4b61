"""Engine mechanics: declared phases, NaN stop, logit masking, schedules, first-task overrides."""

import math

import pytest
import torch
from torch.nn import functional as F

from clbench.config import TrainConfig
from clbench.engine.optim import lr_factor, masked_cross_entropy, task_hparams
from clbench.engine.trainer import Trainer
from clbench.errors import TrainingDiverged
from clbench.experiment import build, plan
from clbench.heads import IncrementalLinear
from clbench.methods import CLMethod, Phase, StepOutput


class ProbeWithPhase(CLMethod):
    """Trains nothing in the main loop; a post-task phase fits its head on given features."""

    def __init__(self, cfg, backbone, info, features, labels, phase_train):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.head = IncrementalLinear(4)
        self.features, self.labels, self.phase_train = features, labels, phase_train

    def before_task(self, task):
        self.head.grow(2)

    def parameter_groups(self):
        return []

    def post_task_phases(self, task):
        batches = lambda epoch: [(self.features[i:i + 32], self.labels[i:i + 32]) for i in range(0, 256, 32)]  # noqa: E731
        loss = lambda x, y: F.cross_entropy(self.head(x), y)  # noqa: E731
        return [Phase("align", [{"params": list(self.head.parameters())}], 20, batches, loss, self.phase_train)]

    def predict(self, x):
        return self.head(x.new_zeros(len(x), 4))


def _trainer(tmp_path, method_factory):
    (run,) = plan(["simplecil"], "shapes", [0], None, [("benchmark.n_classes", 2), ("benchmark.n_tasks", 1),
                                                        ("benchmark.train_per_class", 4), ("benchmark.test_per_class", 2),
                                                        ("backbone.weights", "none"), ("engine.output_dir", str(tmp_path))])
    _, stream, base = build(run.config)
    method = method_factory(run.config.method_cfg, base.backbone, base.info)
    return Trainer(method, stream, run.config), method


def test_declared_phase_is_run_by_the_engine_with_its_overrides(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, 0] > 0).long()
    trainer, method = _trainer(tmp_path, lambda c, b, i: ProbeWithPhase(c, b, i, x, y, {"optimizer": "sgd", "lr": 0.5}))
    trainer.fit()
    assert (method.head(x).argmax(1) == y).float().mean() > 0.95
    trainer, frozen = _trainer(tmp_path, lambda c, b, i: ProbeWithPhase(c, b, i, x, y, {"lr": 0.0}))
    trainer.fit()
    assert (frozen.head(x).argmax(1) == y).float().mean() < 0.9  # lr 0: the phase changed nothing


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    class Diverging(ProbeWithPhase):
        def post_task_phases(self, task):
            (phase,) = super().post_task_phases(task)
            phase.loss = lambda x, y: self.head(x).sum() * float("nan")
            return [phase]

    x, y = torch.randn(256, 4), torch.zeros(256, dtype=torch.long)
    trainer, _ = _trainer(tmp_path, lambda c, b, i: Diverging(c, b, i, x, y, {}))
    with pytest.raises(TrainingDiverged, match="'align' phase became nan"):
        trainer.fit()


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
