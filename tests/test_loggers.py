"""engine.loggers: csv, TensorBoard and W&B (offline) files of a tiny run, read back."""

import csv
import json
import sys

import pytest
import torch

from clbench import metrics
from clbench.engine.loggers import RunLoggers, check_loggers, flat_config, wandb_mode
from clbench.errors import ConfigError
from clbench.experiment import execute, plan

from conftest import spy_on_steps


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny run (3 tasks, 2 epochs) with every logger; the losses of its steps as the loop saw them."""
    out = tmp_path_factory.mktemp("logged")
    sets = [("benchmark.n_classes", 6), ("benchmark.n_tasks", 3), ("benchmark.train_per_class", 16),
            ("benchmark.test_per_class", 8), ("train.epochs", 2), ("train.batch_size", 16), ("train.lr", 0.02),
            ("train.schedule", "cosine"), ("engine.progress", False), ("engine.output_dir", str(out)),
            ("engine.loggers", "csv,tensorboard,wandb")]
    mp = pytest.MonkeyPatch()
    losses = spy_on_steps(mp)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_SILENT", "true")
    try:
        (planned,) = plan(["finetune"], "shapes", [1993], None, sets)
        record = execute(planned)
    finally:
        mp.undo()
    from pathlib import Path

    return Path(record["run_dir"]), record, losses


def _expected_task_values(record):
    per_task = metrics.stability_plasticity([t["correct_per_class"] for t in record["tasks"]],
                                            record["test_counts"]["per_class"], record["protocol"]["task_ranges"])
    return per_task


def test_csv_holds_every_steps_loss_and_lr_the_task_metrics_and_the_config(logged):
    run_dir, record, losses = logged
    with open(run_dir / "logs" / "steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(losses) == sum(t["steps"] for t in record["tasks"])
    assert [int(r["step"]) for r in rows] == list(range(len(rows)))
    for row, (task, loss, lr) in zip(rows, losses):
        assert int(row["task"]) == task + 1 and row["loop"] == "train"
        assert float(row["loss"]) == pytest.approx(loss, rel=1e-6) and float(row["lr"]) == pytest.approx(lr)
    assert len({r["lr"] for r in rows}) > 1  # cosine: the lr of each epoch
    with open(run_dir / "logs" / "tasks.csv") as fh:
        tasks = list(csv.DictReader(fh))
    sp = _expected_task_values(record)
    assert [int(t["task"]) for t in tasks] == [1, 2, 3]
    for t, row, (old, new), curve in zip(tasks, record["accuracy_matrix"], sp, record["accuracy_curve"]):
        assert float(t["acc_all"]) == pytest.approx(curve) and float(t["acc_new"]) == pytest.approx(new)
        assert (t["acc_old"] == "") if old is None else float(t["acc_old"]) == pytest.approx(old)
        assert float(t["acc_T1"]) == pytest.approx(row[0])
    hparams = json.loads((run_dir / "logs" / "hparams.json").read_text())
    assert hparams["train.lr"] == 0.02 and hparams["engine.loggers"] == '["csv", "tensorboard", "wandb"]'


def test_tensorboard_event_file_reads_back(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, record, losses = logged
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(len(losses)))
    assert [e.value for e in loss] == pytest.approx([v for _, v, _ in losses], rel=1e-5)
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([lr for *_, lr in losses], rel=1e-5)
    assert [e.value for e in acc.Scalars("task/acc_all")] == pytest.approx(record["accuracy_curve"], rel=1e-5)
    assert acc.Scalars("final/acc")[0].value == pytest.approx(record["metrics"]["acc"], rel=1e-5)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(0.02)
    assert start.hparams["run.method"].string_value == "finetune"


def wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header (':W&B', magic, version), then
    LevelDB-log blocks of 32 KiB holding chunks (crc32c, length, type: full/first/middle/last)."""
    data, block, pos, out, chunk = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(chunk)
            chunk = b""
    return out


def test_wandb_runs_offline_and_its_run_directory_reads_back(logged):
    run_dir, record, losses = logged
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (data,) = offline.glob("run-*.wandb")
    from wandb.proto import wandb_internal_pb2

    history, config = {}, {}
    for raw in wandb_records(data):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history[items["_step"]] = {**history.get(items["_step"], {}), **items}
        elif rec.WhichOneof("record_type") == "run":  # the config as the run started
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    steps = sorted(k for k, v in history.items() if "train/loss" in v)
    assert steps == list(range(len(losses)))
    assert [history[s]["train/loss"] for s in steps] == pytest.approx([v for _, v, _ in losses], rel=1e-6)
    assert [history[s]["train/lr"] for s in steps] == pytest.approx([lr for *_, lr in losses])
    tasks = [v for v in history.values() if "task/acc_all" in v]
    assert [t["task/acc_all"] for t in tasks] == pytest.approx(record["accuracy_curve"])
    assert config["train.lr"] == 0.02 and config["run.method"] == "finetune"


def test_wandb_is_offline_unless_configured(monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None


def test_per_step_losses_stay_on_the_device_until_the_epoch_ends(monkeypatch):
    written = []

    class Backend:
        def steps(self, loop, task, first, losses, lr):
            written.append((loop, task, first, losses, lr))

    syncs = []
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self, _real=torch.Tensor.tolist: syncs.append(1) or _real(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self, _real=torch.Tensor.item: syncs.append(1) or _real(self))
    loggers = RunLoggers([Backend()], step=10)
    for v in (1.0, 2.0, 3.0):
        loggers.step("train", torch.tensor(v, requires_grad=True) * 1)
    assert not written and not syncs  # buffered, no host copy yet
    loggers.epoch_done("train", 0, 0.1)
    assert written == [("train", 0, 10, [1.0, 2.0, 3.0], 0.1)] and len(syncs) == 1
    assert loggers.global_step == 13


def test_unknown_or_missing_loggers_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="choose from csv, tensorboard, wandb"):
        check_loggers(["mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'clbench\[wandb\]'"):
        check_loggers(["csv", "wandb"])
    with pytest.raises(ConfigError, match=r"engine.loggers"):
        plan(["finetune"], "shapes", [1], None, [("engine.loggers", "csv,tensorboard")])


def test_flat_config():
    assert flat_config({"train": {"lr": 0.1, "milestones": [1, 2]}, "seed": 3, "x": None}) == \
        {"train.lr": 0.1, "train.milestones": "[1, 2]", "seed": 3, "x": "null"}
