"""Efficiency measured, not typed in: FLOPs against hand counts, parameters and statistics
against hand counts, the record's fields against the schema, the report's efficiency table."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from clbench.efficiency import count_flops, inference_flops, stored_statistics
from clbench.methods.base import StreamInfo
from clbench.records import SCHEMA_PATH
from clbench.registry import METHODS
from clbench.testing import run_method
from conftest import tiny_vit

DEPTH, DIM, SIZE, PATCH = 2, 32, 16, 4
TOKENS = (SIZE // PATCH) ** 2 + 1  # patches + [CLS]
INFO = StreamInfo(4, ((0, 2), (2, 4)))


def vit_flops(depth: int = DEPTH, d: int = DIM, n: int = TOKENS) -> int:
    """A ViT forward by hand, 2 FLOPs per multiply-add: the patch projection, then per block
    the qkv projection, q·kᵀ and attention·v, the output projection and the two MLP layers."""
    patch = 2 * (n - 1) * (3 * PATCH * PATCH) * d
    block = 2 * n * d * 3 * d + 2 * (2 * n * n * d) + 2 * n * d * d + 2 * (2 * n * d * 4 * d)
    return patch + depth * block


def build(name: str, **cfg):
    cls = METHODS.get(name)
    return cls(cls.Config(**cfg), tiny_vit(DEPTH, DIM), INFO)


def test_backbone_flops_equal_the_hand_count():
    backbone = tiny_vit(DEPTH, DIM)
    assert count_flops(backbone, torch.rand(1, 3, SIZE, SIZE)) == vit_flops()
    deeper = tiny_vit(3, 48, heads=3)  # the count follows depth and width
    assert count_flops(deeper, torch.rand(1, 3, SIZE, SIZE)) == vit_flops(3, 48)


def test_linear_probe_and_merged_lora_count_backbone_plus_head():
    """The evaluation forward: the backbone once plus the head over the seen classes; LoRA
    evaluates merged (eval_context), so its branches cost nothing at inference."""
    image = torch.rand(3, SIZE, SIZE)
    head = 2 * DIM * INFO.n_classes  # the linear head over 4 seen classes
    probe = build("finetune")
    run_method(probe, tasks=2, steps=1)
    assert inference_flops(probe, image) == vit_flops() + head
    lora = build("lora", rank=4)
    run_method(lora, tasks=2, steps=1)
    lora.train()
    assert inference_flops(lora, image) == vit_flops() + head
    unmerged = count_flops(lora.predict, image[None])  # outside eval_context the branches run
    assert unmerged > vit_flops() + head
    assert lora.training  # the measurement restores the training flag


def test_learnable_parameters_and_statistics_equal_hand_counts():
    simplecil = build("simplecil")
    results = run_method(simplecil, tasks=2, steps=1)
    assert [r["efficiency"]["learnable_params"] for r in results] == [0, 0]
    stats = stored_statistics(simplecil)
    assert stats == {"values": 4 * DIM, "bytes": 4 * DIM * 4, "entries": {"prototypes.means": 4 * DIM}}

    rank = 4
    lora = build("lora", rank=rank)
    results = run_method(lora, tasks=2, steps=1)
    adapter = DEPTH * 2 * (rank * DIM + DIM * rank)  # A and B on q and v of every block
    assert [r["efficiency"]["learnable_params"] for r in results] == [adapter + 2 * DIM + 2, adapter + 4 * DIM + 4]
    assert stored_statistics(lora)["values"] == 0  # adapter weights (and merged factors) are not statistics


def test_weight_buffers_are_not_statistics_but_other_buffers_are():
    lora = build("lora", rank=2)
    run_method(lora, tasks=1, steps=1)
    lora.adapter.freeze_current(merge=True)  # merged factors are kept in buffers to redo the merge
    assert lora.adapter.merged_A is not None
    lora.register_buffer("gram", torch.zeros(DIM, DIM, dtype=torch.float64))
    lora.register_buffer("index", torch.zeros(7, dtype=torch.long))  # bookkeeping, not a feature
    stats = stored_statistics(lora)
    assert stats["entries"] == {"gram": DIM * DIM} and stats["bytes"] == DIM * DIM * 8


def test_task_timing_and_memory_are_recorded():
    results = run_method(build("lora", rank=2), tasks=1, steps=2)
    eff = results[0]["efficiency"]
    assert eff["train_images"] == 2 * 12  # two epochs over 2 classes x 6 images
    assert eff["train_img_s"] == pytest.approx(eff["train_images"] / eff["train_s"])
    assert eff["peak_memory"] == "cpu-rss" and eff["peak_memory_bytes"] > 10 * 2**20


def test_every_record_carries_efficiency_and_validates(tiny):
    from clbench.experiment import execute, plan

    (run,) = plan(["simplecil"], "shapes", [0], None, tiny)
    record = execute(run)
    jsonschema.validate(record, json.loads(SCHEMA_PATH.read_text()))
    eff = record["efficiency"]
    assert eff["input_size"] == [3, 32, 32] and eff["inference_flops"] > 0
    assert eff["stored_entries"] == {"prototypes.means": 6 * 96}  # 6 class means of the micro ViT's width
    assert all(t["efficiency"]["learnable_params"] == 0 for t in record["tasks"])


def test_report_renders_the_efficiency_table_with_the_papers_row(tmp_path):
    from clbench.report.build import gather, write
    from test_report import LORA, make_record, write_records

    table5 = {"gflops": 35.12, "learnable_params_m": 0.37, "stored_features_m": 0.0,
              "source": "SD-LoRA Table 5", "verified": True}
    recs = [make_record("lora", s, c, gflops=0.25, trainable=370_000, paper_efficiency=table5) for s, c in LORA.items()]
    recs += [make_record("simplecil", 1993, LORA[1993], gflops=0.25, trainable=0, stored=1_500_000)]
    recs += [make_record("finetune", 1993, LORA[1993], comparable=False, reasons=["batch vote"],
                         paper_efficiency=table5)]
    rep = write(gather([write_records(tmp_path / "r", recs)]), tmp_path / "out", plots=False, html=True)
    (table,) = rep.efficiency
    rows = {r.label: r for r in table.rows}
    assert list(rows) == ["Full Fine-Tuning (not comparable)", "LoRA", "LoRA, reported (SD-LoRA Table 5)",
                          "SimpleCIL"]  # no published row beside the non-comparable group
    assert rows["LoRA"].values["gflops"] == pytest.approx(0.25) and rows["LoRA"].values["learnable_m"] == pytest.approx(0.37)
    assert rows["LoRA"].n == 3 and rows["SimpleCIL"].values["stored_m"] == pytest.approx(1.5)
    assert rows["LoRA, reported (SD-LoRA Table 5)"].values == {"gflops": 35.12, "learnable_m": 0.37, "stored_m": 0.0}
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "| GFLOPs | Learnable params (M) | Stored features (M) |" in md
    assert "| *LoRA, reported (SD-LoRA Table 5)* | 35.12 | 0.37 | 0.00 | – |" in md
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'class="results efficiency"' in page and "35.12" in page
    csv = (tmp_path / "out" / "efficiency.csv").read_text().splitlines()
    assert csv[0].startswith("benchmark,setting,method,label,kind,n,gflops") and any(",lora,LoRA,ours,3," in r for r in csv)


def test_unverified_published_numbers_are_marked(tmp_path):
    from clbench.report.build import gather
    from test_report import LORA, PAPER, make_record, write_records

    recs = [make_record("lora", 1993, LORA[1993], paper={**PAPER, "verified": False})]
    (table,) = gather([write_records(tmp_path / "r", recs)]).tables
    assert table.rows[1].kind == "paper" and "[unverified" in table.rows[1].label


def test_presets_cite_table5_and_label_recalled_numbers_unverified():
    from clbench.presets import find_preset

    sdlora = find_preset("paper", "sdlora", "imagenet_r", {"n_tasks": 20})
    assert (sdlora.efficiency.gflops, sdlora.efficiency.learnable_params_m) == (35.12, 0.37)
    hide = find_preset("sdlora", "hide-prompt", "imagenet_r", {"n_tasks": 20})
    assert hide.efficiency.stored_features_m == 0.15
    assert find_preset("paper", "sdlora", "imagenet_r", {"n_tasks": 10}).efficiency is None  # Table 5 is N=20
    assert find_preset("paper", "inflora", "imagenet_r", {"n_tasks": 10}).reported.verified is False
    assert sdlora.reported.verified is True


def test_bench_efficiency_measures_the_late_task_structure(tmp_path):
    """``clbench bench --efficiency``: the figures a record would hold, at a late task."""
    from typer.testing import CliRunner

    from clbench.bench import measure_efficiency
    from clbench.cli import app

    micro = [("backbone.name", "vit_micro_patch4_32.shapes_pre"), ("backbone.weights", "none"),
             ("benchmark.image_size", 32), ("benchmark.n_tasks", 3), ("benchmark.n_classes", 6),
             ("benchmark.train_per_class", 1)]
    simplecil = measure_efficiency("simplecil", 2, "random", micro)
    assert simplecil["stored_values"] == 6 * 96 and simplecil["learnable_params"] == 0  # 6 class means
    lora = measure_efficiency("lora", 2, "random", micro)
    assert lora["gflops"] == pytest.approx(simplecil["gflops"])  # merged: the backbone and a 6-class product, as SimpleCIL
    assert lora["learnable_params"] == 6 * 2 * (10 * 96 + 96 * 10) + 6 * 96 + 6  # rank-10 q/v adapters of 6 blocks + head
    out = tmp_path / "eff.json"
    result = CliRunner().invoke(app, ["bench", "-m", "simplecil", "--efficiency", "--backbone",
                                      "vit_micro_patch4_32.shapes_pre", "--image-size", "32", "--late-task", "2",
                                      "--set", "benchmark.train_per_class=1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "SimpleCIL" in result.output and json.loads(out.read_text())[0]["stored_values"] == 20 * 96  # 10 classes a task
