"""The speed harness: interleaved timing, the late-task structure, memory and loader figures."""

import contextlib
import json
import math

import torch
from typer.testing import CliRunner

from clbench.bench import interleaved, measure, measure_loader
from clbench.cli import app

TINY_BENCH = [("backbone.name", "vit_micro_patch4_32.shapes_pre"), ("backbone.weights", "none"),
              ("benchmark.image_size", 32), ("benchmark.n_tasks", 3), ("benchmark.n_classes", 6)]


def test_measurements_are_interleaved_and_contexts_stay_untimed():
    calls = []

    @contextlib.contextmanager
    def context():
        calls.append("enter")
        yield
        calls.append("exit")

    timed = {"a": (lambda: calls.append("a"), contextlib.nullcontext), "b": (lambda: calls.append("b"), context)}
    medians = interleaved(timed, repeats=2, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "enter", "b", "exit"] * 3  # one call of each per round, rounds alternate
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_measure_reaches_the_late_task_and_reports_every_figure():
    row = measure("finetune", 2, 4, "random", TINY_BENCH, repeats=1, warmup=0)
    assert row["seen_classes_late"] == 6 and row["late_task"] == 3
    assert row["trainable_late"] - row["trainable_first"] == 4 * 97  # the head grew by 4 classes (96 + bias)
    for key in ("step_s_first", "step_s_late", "eval_img_s_merged", "eval_img_s_unmerged", "eval_img_s_bare",
                "step_late_vs_first", "eval_merged_vs_bare", "late_model_mb", "late_trainable_mb", "late_optimizer_mb"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["late_optimizer_mb"] == row["late_trainable_mb"]  # SGD momentum: one buffer per trainable tensor
    assert row["peak_mb_step_late"] is None  # CUDA only; unmeasured on CPU


def test_loader_throughput_with_and_without_augmentation():
    row = measure_loader("random", 8, TINY_BENCH, batches=3, repeats=1, warmup=0)
    assert row["loader_img_s_memory"] > 0 and row["loader_img_s_memory_augment"] > 0 and row["image_size"] == 32


def test_bench_command_prints_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--methods", "simplecil", "--backbone", "vit_micro_patch4_32.shapes_pre",
                                      "--image-size", "32", "--batch-size", "4", "--late-task", "2", "--repeats", "1",
                                      "--warmup", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "simplecil" in result.output and "data loader" in result.output
    data = json.loads(out.read_text())
    assert data["methods"][0]["step_s_first"] is None  # simplecil does not train
    assert data["loader"]["loader_img_s_memory"] > 0


def test_efficiency_command_keeps_the_other_methods_when_one_cannot_be_measured(tmp_path):
    """One training image per class: FeCAM's covariances cannot be estimated (a clear error
    naming the cause), SimpleCIL before and after it is still measured and written."""
    out = tmp_path / "eff.json"
    result = CliRunner().invoke(app, ["bench", "--efficiency", "--methods", "simplecil,fecam,lora",
                                      "--backbone", "vit_micro_patch4_32.shapes_pre", "--image-size", "32",
                                      "--late-task", "2", "--set", "benchmark.train_per_class=1", "--json", str(out)])
    assert result.exit_code != 0
    assert "fecam: Task 1 has a class with a single training sample" in result.output
    assert "Not measured: fecam" in result.output
    assert [r["method"] for r in json.loads(out.read_text())] == ["simplecil", "lora"]
