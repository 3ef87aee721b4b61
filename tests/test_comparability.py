"""Comparability that cannot lie: every departure from a preset's published setting is named,
warned about at the start, recorded, and keeps the paper's numbers out of the report."""

from __future__ import annotations

import io

from rich.console import Console

import fake_formats as ff
from clbench.comparability import departures
from clbench.engine.progress import ProgressReporter
from clbench.experiment import execute, plan
from clbench.report.build import gather
from clbench.report.tables import to_markdown
from clbench.resolve import resolve

EMBEDDED = "vit_micro_patch4_32.shapes_pre"
NEUTRAL = [("benchmark.data_root", "/somewhere"), ("engine.output_dir", "/tmp/x"), ("engine.device", "cpu"),
           ("train.eval_batch_size", 32), ("engine.num_workers", 0)]


def test_an_exact_preset_run_is_comparable_and_neutral_values_do_not_change_that():
    run = resolve("sdlora", "imagenet_r", 1993, "paper", NEUTRAL)
    assert run.preset.reported is not None and departures(run.config, run.preset) == []
    # a value set to what the preset fixes anyway is no departure either
    same = resolve("sdlora", "imagenet_r", 1993, "paper", [("train.epochs", 20), ("method.rank", 10)])
    assert departures(same.config, same.preset) == []


def test_every_kind_of_departure_is_named_with_the_preset_value():
    changes = [("backbone.weights", "none"), ("train.lr", 0.5), ("train.optimizer", "adam"),
               ("train.schedule", "cosine"), ("benchmark.split", "seeded"), ("benchmark.order_seed", 7),
               ("method.rank", 4), ("benchmark.check_counts", False)]
    run = resolve("sdlora", "imagenet_r", 1993, "paper", changes)
    assert departures(run.config, run.preset) == [
        "backbone.weights=none (preset paper: auto)",
        "benchmark.order_seed=7 (preset paper: 1995)",
        "benchmark.check_counts=False (preset paper: True)",
        "benchmark.split=seeded (preset paper: presplit)",
        "train.optimizer=adam (preset paper: sgd)",
        "train.lr=0.5 (preset paper: 0.01)",
        "train.schedule=cosine (preset paper: constant)",
        "method.rank=4 (preset paper: 10)",
    ]


def test_no_preset_or_a_preset_without_numbers_has_nothing_to_depart_from():
    plain = resolve("lora", "imagenet_r", 1993, None, [("train.epochs", 1)])
    assert departures(plain.config, plain.preset) == []
    shapes = resolve("sdlora", "shapes", 1993, None, [("train.epochs", 1)])  # the 'default' preset: no numbers
    assert shapes.preset is not None and departures(shapes.config, shapes.preset) == []


def test_the_issue_example_is_not_comparable_warns_records_and_hides_the_paper_number(tmp_path, monkeypatch):
    """--preset paper on a 20-class ImageNet-R tree with the embedded micro backbone at 32 px,
    1 epoch instead of 20 and batch 16 instead of 128 (issue 14, item 4)."""
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    ff.presplit(tmp_path / "data", "imagenet-r", ff.wnids(20), 3, 2, size=(36, 36))
    overrides = [("benchmark.data_root", str(tmp_path / "data")), ("benchmark.check_counts", False),
                 ("benchmark.n_tasks", 5), ("backbone.name", EMBEDDED), ("benchmark.image_size", 32),
                 ("train.epochs", 1), ("train.batch_size", 16), ("engine.output_dir", str(tmp_path / "results")),
                 ("engine.progress", False), ("engine.num_workers", 0), ("engine.device", "cpu")]
    (run,) = plan(["sdlora"], "imagenet_r", [1993], "paper", overrides)
    out = io.StringIO()
    record = execute(run, ProgressReporter(Console(file=out, width=400), enabled=False))
    reasons = record["noncomparable_reasons"]
    assert record["comparable"] is False
    for expected in (f"backbone.name={EMBEDDED} (preset paper: vit_base_patch16_224.augreg2_in21k_ft_in1k)",
                     "benchmark.image_size=32 (preset paper: 224)", "train.epochs=1 (preset paper: 20)",
                     "train.batch_size=16 (preset paper: 128)", "benchmark.check_counts=False (preset paper: True)"):
        assert expected in reasons
    printed = out.getvalue()
    assert "NOT comparable with the published numbers of preset 'paper'" in printed and "train.epochs=1" in printed
    assert printed.index("NOT comparable") < printed.index("task 1/5")  # warned when the run starts

    # the report keeps the paper's 79.15 away from our number and says why
    record["comparable"], record["noncomparable_reasons"] = True, []  # even a record that claims otherwise
    import json

    rec_path = next((tmp_path / "results").rglob("record.json"))
    rec_path.write_text(json.dumps(record))
    rep = gather([tmp_path / "results"])
    (table,) = rep.tables
    assert [r.kind for r in table.rows] == ["ours"] and table.rows[0].label == "SD-LoRA (not comparable)"
    assert "79.15" not in to_markdown(table)
    row = rep.summary.iloc[0]
    assert row["paper_hidden"] and row["paper_acc"] is None
    notes = "\n".join(rep.notes)
    assert "NOT comparable with preset paper; its published numbers are not shown" in notes
    assert "train.epochs=1 (preset paper: 20)" in notes


class Crash(Exception):
    pass


def test_a_resumed_run_keeps_its_departures_and_ends_with_efficiency(tmp_path, monkeypatch):
    from clbench.engine.loop import Loop
    from clbench.experiment import resume
    from clbench.presets import PRESETS, Preset, Reported

    small = {"benchmark.n_classes": 4, "benchmark.train_per_class": 8, "benchmark.test_per_class": 4,
             "train.batch_size": 16}
    preset = Preset("test-paper", "lora", "shapes", {**small, "train.epochs": 3}, when={"n_tasks": 2},
                    reported=Reported(70.0, 75.0, source="A paper"))
    monkeypatch.setattr("clbench.presets.PRESETS", [*PRESETS, preset])
    base = [("benchmark.n_tasks", 2), ("engine.progress", False), ("engine.output_dir", str(tmp_path)),
            ("engine.checkpoint_every", 1)]
    (run,) = plan(["lora"], "shapes", [1993], "test-paper", base + [("train.epochs", 1)])
    original, calls = Loop.step, {"n": 0}

    def crash(loop, spec, *args):
        calls["n"] += spec.task_index == 1
        if calls["n"] == 1 and spec.task_index == 1:
            raise Crash
        return original(loop, spec, *args)

    monkeypatch.setattr(Loop, "step", crash)
    try:
        execute(run)
    except Crash:
        pass
    monkeypatch.setattr(Loop, "step", original)
    run_dir = next((tmp_path / "shapes" / "lora").iterdir())
    record = resume(run_dir)
    assert record["status"] == "complete" and not record["comparable"]
    assert record["noncomparable_reasons"] == ["train.epochs=1 (preset test-paper: 3)"]
    assert record["efficiency"]["inference_flops"] > 0 and len(record["tasks"]) == 2
