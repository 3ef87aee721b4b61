"""`clbench report`: records built by hand from known accuracy matrices; every number checked."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from clbench.records import SCHEMA_PATH
from clbench.report.aggregate import paper_tables, summarize
from clbench.report.build import gather, write
from clbench.report.collect import collect
from clbench.report.tables import fmt, latex_escape, to_markdown

SCHEMA = json.loads(SCHEMA_PATH.read_text())
PER_CLASS = [5, 5, 10, 10, 10, 10]  # test samples per class: tasks of 10, 20 and 20 samples
RANGES = [[0, 2], [2, 4], [4, 6]]


def make_record(method, seed, correct, *, benchmark="shapes", status="complete", preset="default", paper=None,
                train=None, method_cfg=None, bench_cfg=None, protocol=None, comparable=True, reasons=(),
                trainable=1000, train_s=10.0, eval_s=1.0, magnitudes=None, created="2026-01-01T00:00:00+00:00",
                run_id=None, gflops=0.1, stored=0, paper_efficiency=None):
    """A schema-valid record whose task j has ``correct[t][j]`` correct test predictions after task t."""
    from clbench import metrics

    tasks, rows = [], []
    for t, row in enumerate(correct):
        per_class = []
        for j, (lo, hi) in enumerate(RANGES[: t + 1]):
            left = row[j]
            for c in range(lo, hi):  # spread the task's correct count over its classes
                per_class.append(min(left, PER_CLASS[c]))
                left -= per_class[-1]
            assert left == 0
        rows.append(per_class)
        lo, hi = RANGES[t]
        log = {"magnitudes": magnitudes[t]} if magnitudes else {}
        tasks.append({"index": t, "classes": list(range(lo, hi)), "lo": lo, "hi": hi, "n_train": 32,
                      "correct_per_class": per_class, "train_s": train_s / len(correct), "eval_s": eval_s / len(correct),
                      "epochs": 1, "lr": 0.01, "steps": 2, "trainable_params": trainable, "total_params": 5000,
                      "train_logs": {"loss": 1.0}, "method_log": log, "state": None,
                      "efficiency": {"train_s": train_s / len(correct), "train_images": 32,
                                     "train_img_s": 32 * len(correct) / train_s, "learnable_params": trainable,
                                     "peak_memory_bytes": 2**30, "peak_memory": "cpu-rss"}})
    matrix, counts = metrics.matrix_from_counts(rows, PER_CLASS, RANGES)
    bench = {"n_tasks": 3, "init_cls": None, "class_order": "seeded", "order_seed": None, "n_classes": 6,
             "train_per_class": 16, "test_per_class": 8, "data_seed": 0, "augment": True, **(bench_cfg or {})}
    run_id = run_id or f"20260101-000000-s{seed}-{method[:6]}"
    record = {
        "schema_version": 1, "status": status, "created": created, "finished": created, "run_id": run_id,
        "method": method, "benchmark": benchmark, "seed": seed, "preset": preset,
        "config": {"engine": {"device": "cpu", "output_dir": "results"},
                   "train": {"epochs": 1, "lr": 0.01, "eval_batch_size": 256, **(train or {})},
                   "backbone": {"name": "vit_micro_patch4_32.shapes_pre", "weights": "auto", "weights_sha256": None,
                                "input_norm": "none", "drop_path": 0.0},
                   "benchmark": bench, "method": dict(method_cfg or {})},
        "overrides": [],
        "protocol": {"class_order": np.random.RandomState(seed).permutation(6).tolist(), "order_id": f"o{seed}",
                     "split_id": "shapes-v1:tiny", "label_map_id": "shapes-v1-class-id", "data_info": {},
                     "n_classes": 6, "n_tasks": 3, "task_ranges": RANGES, "backbone": "vit_micro_patch4_32.shapes_pre",
                     "weights": {"source": "bundled", "path": None, "sha256": "a" * 64},
                     "input_norm": "none", "logit_mask": "seen", "evaluation": "after each task", **(protocol or {})},
        "comparable": comparable, "noncomparable_reasons": list(reasons),
        "test_counts": {"per_task": counts, "per_class": PER_CLASS},
        "paper": paper, "paper_efficiency": paper_efficiency,
        "efficiency": {"input_size": [3, 32, 32], "inference_flops": int(gflops * 1e9), "inference_gflops": gflops,
                       "learnable_params": trainable, "learnable_params_max": trainable, "added_params": trainable,
                       "stored_values": stored, "stored_bytes": 4 * stored, "stored_entries": {"means": stored} if stored else {},
                       "train_s_per_task": train_s / len(correct), "train_img_s": 32 * len(correct) / train_s,
                       "peak_memory_bytes": 2**30, "peak_memory": "cpu-rss"},
        "environment": {"versions": {"python": "3", "torch": "2", "timm": "1", "numpy": "2"},
                        "git": {"commit": None, "dirty": None}, "hostname": "h", "platform": "p"},
        "engine": {"device": "cpu", "autocast": "fp32"}, "params": {"backbone": 4000},
        "run_dir": run_id, "tasks": tasks, "accuracy_matrix": matrix,
        "accuracy_curve": metrics.accuracy_curve(matrix, counts).tolist(),
        "metrics": metrics.summarize(matrix, counts), "timing": {"train_s": train_s, "eval_s": eval_s},
    }
    jsonschema.validate(record, SCHEMA)
    return record


def write_records(root, records):
    for i, rec in enumerate(records):
        d = root / rec["benchmark"] / rec["method"] / f"{i:03d}-{rec['run_id']}"
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(rec))
    return root


# Correct counts per task (tasks of 10, 20, 20 test samples) after each task, three seeds.
LORA = {1993: [[9], [8, 18], [7, 16, 19]], 1994: [[10], [9, 17], [6, 14, 20]], 1995: [[8], [8, 16], [8, 15, 18]]}
FT = {1993: [[10], [3, 20], [1, 4, 20]], 1994: [[10], [5, 19], [2, 6, 19]], 1995: [[9], [4, 20], [0, 5, 20]]}
PAPER = {"acc": 79.15, "aaa": 83.01, "acc_se": 0.20, "aaa_se": 0.42, "source": "SD-LoRA (ICLR 2025) Table 2"}


def expected(correct_by_seed):
    """Acc, AAA (sample-weighted) and Chaudhry forgetting per seed, straight from the definitions."""
    sizes = [10, 20, 20]
    out = {"acc": [], "aaa": [], "forgetting": []}
    for rows in correct_by_seed.values():
        a = [[100 * c / sizes[j] for j, c in enumerate(row)] for row in rows]
        curve = [100 * sum(row) / sum(sizes[: len(row)]) for row in rows]
        out["acc"].append(curve[-1])
        out["aaa"].append(sum(curve) / len(curve))
        out["forgetting"].append(np.mean([max(a[t][j] for t in range(j, 2)) - a[2][j] for j in range(2)]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v)))) for k, v in out.items()}


@pytest.fixture
def results(tmp_path):
    recs = [make_record("lora", s, c, paper=PAPER) for s, c in LORA.items()]
    recs += [make_record("finetune", s, c, trainable=5000) for s, c in FT.items()]
    return write_records(tmp_path / "results", recs)


def test_every_number_in_the_tables(results, tmp_path):
    rep = write(gather([results]), tmp_path / "out", plots=False, html=False)
    (table,) = rep.tables
    (col,) = table.columns
    assert col.label == "N=3"
    rows = {r.label: r for r in table.rows}
    assert list(rows) == ["Full Fine-Tuning", "LoRA", "LoRA, reported (SD-LoRA (ICLR 2025) Table 2)"]  # papers' names
    md = (tmp_path / "out" / "tables.md").read_text()
    tex = (tmp_path / "out" / "tables.tex").read_text()
    with open(tmp_path / "out" / "summary.csv") as fh:
        csv_rows = {r["label"]: r for r in csv.DictReader(fh)}
    assert {r["method"] for r in csv_rows.values()} == {"lora", "finetune"}  # registry names stay in CSV
    for label, data in (("LoRA", LORA), ("Full Fine-Tuning", FT)):
        exp = expected(data)
        assert rows[label].n[col.key] == 3
        assert csv_rows[label]["n"] == "3" and csv_rows[label]["seeds"] == "1993,1994,1995"
        for metric, (mean, se) in exp.items():
            got_mean, got_se = table.value(rows[label], col.key, metric)
            assert got_mean == pytest.approx(mean, abs=1e-9) and got_se == pytest.approx(se, abs=1e-9)
            assert float(csv_rows[label][f"{metric}_mean"]) == pytest.approx(mean, abs=1e-9)
            assert float(csv_rows[label][f"{metric}_se"]) == pytest.approx(se, abs=1e-9)
            text = f"{mean:.2f} ({se:.2f})"
            assert text in md and text in tex
    # the markdown row of lora, cell by cell (best of ours in bold: lora wins Acc/AAA/forgetting)
    lora = expected(LORA)
    cells = [f"**{fmt(*lora[m])}**" for m in ("acc", "aaa", "forgetting")]
    assert f"| LoRA | {' | '.join(cells)} | 3 |" in md
    # the paper's numbers sit in a labelled row right under ours
    assert "| *LoRA, reported (SD-LoRA (ICLR 2025) Table 2)* | 79.15 (0.20) | 83.01 (0.42) | – | paper |" in md
    assert float(csv_rows["LoRA"]["paper_acc"]) == 79.15 and csv_rows["LoRA"]["paper_source"].startswith("SD-LoRA")
    assert r"\textit{79.15 (0.20)}" in tex and r"\multicolumn{4}{c}{N=3}" in tex


def test_single_seed_has_no_standard_error(tmp_path):
    root = write_records(tmp_path / "r", [make_record("lora", 1993, LORA[1993])])
    (table,) = gather([root]).tables
    row = table.rows[0]
    mean, se = table.value(row, table.columns[0].key, "acc")
    assert mean == pytest.approx(84.0) and math.isnan(se)
    assert "| LoRA | 84.00 | " in to_markdown(table)


def test_incompatible_runs_are_kept_apart(tmp_path):
    base = LORA[1993]
    recs = [
        make_record("lora", 1993, base),
        make_record("lora", 1994, LORA[1994]),
        make_record("lora", 1995, base, protocol={"split_id": "shapes-v1:other"}),
        make_record("lora", 1996, base, protocol={"backbone": "vit_other", "weights": {"source": "file", "path": "w", "sha256": "b" * 64}}),
        make_record("lora", 1997, base, bench_cfg={"class_order": "natural"}),
        make_record("lora", 1998, base, bench_cfg={"order_seed": 5}),
        make_record("lora", 1999, base, comparable=False, reasons=["batch-vote prompt selection"]),
        make_record("lora", 2000, base, protocol={"n_tasks": 3, "task_ranges": [[0, 2], [2, 4], [4, 6]], "label_map_id": "other-map"}),
        make_record("lora", 2001, base, train={"lr": 0.5}),  # same setting, another variant of the method
    ]
    rep = gather([write_records(tmp_path / "r", recs)])
    summary = rep.summary
    # 6 settings: the reference (seeds 1993, 1994, the lr=0.5 variant and the non-comparable run) and one per
    # difference of the data or backbone; a non-comparable run is a variant of its setting, never averaged in
    assert summary["setting_key"].nunique() == 6
    ref = summary[summary["seeds"] == "1993,1994"].iloc[0]
    assert ref["n"] == 2 and ref["label"] == "LoRA [train.lr=0.01]"
    assert summary[summary["seeds"] == "2001"].iloc[0]["label"] == "LoRA [train.lr=0.5]"
    assert (summary["n"] == 1).sum() == 7
    labels = sorted(c.label for c in rep.tables[0].columns)
    assert "N=3 · order_rule=natural" in labels and "N=3 · order_rule=seeded(order_seed=5)" in labels
    assert "N=3 · split_id=shapes-v1:other" in labels and "N=3 · label_map_id=other-map" in labels
    assert "N=3 · backbone=vit_other, weights_sha256=bbbbbbbb" in labels
    odd = summary[summary["seeds"] == "1999"].iloc[0]
    assert odd["setting_key"] == ref["setting_key"] and odd["label"] == "LoRA [train.lr=0.01] (not comparable)"
    notes = "\n".join(rep.notes)
    assert "NOT comparable with preset default: batch-vote prompt selection" in notes
    assert "order seeded(order_seed=5)" in notes
    # seeds realise different class orders by design: they still average together
    assert ref["seeds"] == "1993,1994"


def test_other_benchmarks_get_their_own_table_and_settings_sit_side_by_side(tmp_path):
    five = {"n_tasks": 5, "task_ranges": [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10]]}
    recs = [make_record("lora", 1993, LORA[1993]), make_record("lora", 1993, LORA[1993], benchmark="other"),
            make_record("lora", 1994, LORA[1994], protocol=five)]
    # a 5-task record: reuse the 3-task matrix shape but declare 5 tasks in the protocol (setting key only)
    rep = gather([write_records(tmp_path / "r", recs)])
    assert [t.benchmark for t in rep.tables] == ["other", "shapes"]
    shapes = rep.tables[1]
    assert [c.label for c in shapes.columns] == ["N=3", "N=5"]
    (row,) = shapes.rows
    assert all(row.n[c.key] == 1 for c in shapes.columns)


def test_only_complete_runs_enter_and_skips_are_explained(tmp_path):
    recs = [make_record("lora", s, c) for s, c in LORA.items()]
    running = make_record("lora", 7, LORA[1993], status="running")
    failed = make_record("lora", 8, LORA[1993], status="failed")
    failed["error"] = "TrainingDiverged: loss became nan"
    repeat = make_record("lora", 1993, LORA[1994], created="2025-01-01T00:00:00+00:00", run_id="older")
    root = write_records(tmp_path / "r", recs + [running, failed, repeat])
    (root / "broken").mkdir()
    (root / "broken" / "record.json").write_text("{not json")
    rep = gather([root])
    assert len(rep.collection.runs) == 3 and rep.summary.iloc[0]["n"] == 3
    # the newer seed-1993 run is kept, the older repeat skipped
    assert expected(LORA)["acc"][0] == pytest.approx(rep.summary.iloc[0]["acc_mean"])
    summary = rep.collection.skipped_summary()
    assert summary.startswith("4 record(s) skipped") and "1 status failed" in summary and "1 status running" in summary
    assert "1 repeat" in summary and "1 unreadable" in summary
    assert any("TrainingDiverged" in s.reason for s in rep.collection.skipped)


def test_metrics_come_from_the_matrix_not_the_stored_metrics(tmp_path):
    rec = make_record("lora", 1993, LORA[1993])
    rec["metrics"]["acc"] = 1.0  # a stale or hand-edited value must not reach the table
    rep = gather([write_records(tmp_path / "r", [rec])])
    assert rep.summary.iloc[0]["acc_mean"] == pytest.approx(84.0)


def test_variant_labels_and_paper_from_preset_registry(tmp_path):
    from clbench.presets import PRESETS, Preset, Reported

    tiny = {"benchmark.n_classes": 6, "benchmark.train_per_class": 16, "benchmark.test_per_class": 8,
            "train.epochs": 1, "train.logit_mask": "seen"}  # what the records ran: comparable with the preset
    preset = Preset("test-paper", "lora", "shapes", tiny, when={"n_tasks": 3},
                    reported=Reported(70.0, 75.0, 1.0, 2.0, "A paper, Table 9"))
    PRESETS.append(preset)
    try:
        recs = [make_record("lora", 1993, LORA[1993], preset="test-paper"),
                make_record("lora", 1993, LORA[1993], method_cfg={"rank": 4})]
        rep = gather([write_records(tmp_path / "r", recs)])
    finally:
        PRESETS.remove(preset)
    labels = [r.label for r in rep.tables[0].rows]
    assert labels == ["LoRA [method.rank=4, preset=default]", "LoRA [method.rank=None, preset=test-paper]",
                      "LoRA [method.rank=None, preset=test-paper], reported (A paper, Table 9)"]
    assert "| 70.00 (1.00) | 75.00 (2.00) |" in to_markdown(rep.tables[0])


def test_latex_escapes_and_compiles_structure():
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    rows = summarize(collect([]))  # empty collection: no tables
    assert paper_tables(rows) == []


def test_cli_report_writes_everything(results, tmp_path):
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "clbench.cli", "report", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LoRA" in proc.stdout and "N=3" in proc.stdout and "79.15 (0.20)" in proc.stdout
    names = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"tables.md", "tables.tex", "summary.csv", "runs.csv", "index.html"} <= names
    for kind in ("accuracy_curves", "accuracy_matrices", "forgetting_bars", "cost_bars"):
        assert any(n.startswith(kind) and n.endswith(".png") for n in names), kind
        assert any(n.startswith(kind) and n.endswith(".pdf") for n in names), kind


def test_cli_report_without_records_is_one_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "clbench.cli", "report", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "No complete run records" in proc.stderr and "Traceback" not in proc.stderr
