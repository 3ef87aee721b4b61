"""Following a run: one line per epoch when not on a terminal, a bar per step on one, and
neither costs a host sync per step."""

import io
import re
import traceback

import torch
from rich.console import Console

from clbench.config import MethodConfig
from clbench.engine import loop as loop_module
from clbench.engine.progress import ProgressReporter, duration, eta
from clbench.engine.trainer import Trainer
from clbench.methods import CLMethod, StepOutput, StreamInfo
from clbench.testing import run_config, tensor_stream

from conftest import spy_on_steps, tiny_vit

INFO = StreamInfo(4, ((0, 2), (2, 4)))
LINE = re.compile(r"^task (\d)/2 train · epoch (\d)/3 · loss (\d+\.\d{4}) · lr (\S+) · (\d+) img/s · "
                  r"task (\d+:\d\d) ETA (\d+:\d\d) · run (\d+:\d\d) ETA (\d+:\d\d)$")


class Linear(CLMethod):
    """A linear head on frozen features that keeps every step's loss (device tensors)."""

    def __init__(self):
        super().__init__(MethodConfig(), tiny_vit(), INFO)
        self.freeze_backbone()
        self.w = torch.nn.Parameter(torch.zeros(INFO.n_classes, self.backbone.embed_dim))
        self.losses: list[torch.Tensor] = []

    def parameter_groups(self):
        return [{"params": [self.w]}]

    def training_step(self, x, y, ctx):
        return StepOutput(self.backbone(x) @ self.w.t())

    def predict(self, x):
        return self.backbone(x) @ self.w.t()


def _trainer(console, steps_per_epoch=3, epochs=3, enabled=True):
    method = Linear()
    stream = tensor_stream(INFO, per_class=6 * steps_per_epoch)
    cfg = run_config(method, {"batch_size": 12, "epochs": epochs, "lr": 0.1, "schedule": "cosine"})
    return Trainer(method, stream, cfg, progress=ProgressReporter(console, enabled=enabled))


def test_a_piped_run_prints_one_line_per_epoch_with_loss_lr_speed_and_etas(monkeypatch):
    losses = spy_on_steps(monkeypatch)
    out = io.StringIO()
    _trainer(Console(file=out, width=300, force_terminal=False)).fit()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 * 3  # two tasks of three epochs, nothing else
    for i, line in enumerate(lines):
        m = LINE.match(line)
        assert m, line
        task, epoch = int(m[1]), int(m[2])
        assert (task, epoch) == (i // 3 + 1, i % 3 + 1)
        mine = [(loss, lr) for t, loss, lr in losses if t == task - 1][3 * (epoch - 1): 3 * epoch]
        assert float(m[3]) == round(sum(loss for loss, _ in mine) / 3, 4)  # the epoch's mean loss
        assert float(m[4]) == float(f"{mine[0][1]:.3g}")  # the epoch's lr (cosine: differs per epoch)
        assert int(m[5]) > 0
    assert LINE.match(lines[-1])[9] == "0:00"  # the last epoch of the last task: nothing left


def test_bars_advance_every_step_and_no_progress_code_syncs_per_step(monkeypatch):
    advanced, syncs = [], []
    for name in ("item", "cpu", "tolist", "__float__", "__bool__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            caller = traceback.extract_stack(limit=2)[0].filename
            if "clbench" in caller and "torch" not in caller:  # the engine's own (the loader's are CPU tensors)
                syncs.append(caller)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for console in (Console(file=io.StringIO(), force_terminal=True), Console(file=io.StringIO(), force_terminal=False)):
        trainer = _trainer(console, steps_per_epoch=25, epochs=2)
        real_advance = trainer.progress.advance

        def advance(bar, steps=1, info=None, _real=real_advance):
            if bar is not None:
                advanced.append(steps)
            _real(bar, steps, info)

        trainer.progress.advance = advance
        advanced.clear()
        syncs.clear()
        with trainer.progress:
            trainer.fit()
        steps = 2 * 2 * 25
        if console.is_terminal:  # 100 steps of training plus the evaluation batches, one advance each
            assert advanced.count(1) >= steps and set(advanced) <= {0, 1}  # 0: the loss shown changes
        else:
            assert not advanced
        # a sync every SYNC_EVERY steps, a few at each epoch's and task's end: far fewer than steps
        assert len(syncs) <= steps // loop_module.SYNC_EVERY + 3 * 2 * 2 + 2 * 2, syncs


def test_durations_and_eta():
    assert [duration(s) for s in (0, 59.6, 61, 3600 * 2 + 5, None, -1)] == ["0:00", "1:00", "1:01", "2:00:05", "?", "?"]
    assert eta(10.0, 0.25) == 30.0 and eta(10.0, 1.0) == 0.0 and eta(5.0, 0.0) is None
