"""`clbench report`: confidence intervals, significance marks, stability/plasticity and the
terminal table's labels, on records built by hand."""

import csv
import io
import statistics

import pytest
from rich.console import Console

from clbench.report.aggregate import display_name
from clbench.report.build import gather, write
from clbench.report.stats import paired_t_test, welch_t_test
from clbench.report.tables import to_markdown, to_rich

from test_report import FT, LORA, expected, make_record, write_records

SIZES = [10, 20, 20]
# close to LORA: not significantly different from it over three seeds
NEAR = {1993: [[9], [8, 17], [7, 16, 18]], 1994: [[10], [9, 18], [6, 15, 19]], 1995: [[8], [8, 16], [8, 14, 19]]}


def acc(rows):
    return 100 * sum(rows[-1]) / sum(SIZES)


def _summary_rows(out):
    """summary.csv rows by label and, where a method has one row, by its registry name."""
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    methods = [r["method"] for r in rows]
    return {**{r["label"]: r for r in rows}, **{r["method"]: r for r in rows if methods.count(r["method"]) == 1}}


def test_summary_has_95_percent_confidence_intervals(tmp_path):
    root = write_records(tmp_path / "r", [make_record("lora", s, c) for s, c in LORA.items()])
    write(gather([root]), tmp_path / "out", plots=False, html=False)
    row = _summary_rows(tmp_path / "out")["lora"]
    for metric, (mean, se) in expected(LORA).items():
        half = 4.302653 * se  # t(0.975, 2 degrees of freedom), from a printed table
        assert float(row[f"{metric}_ci_lo"]) == pytest.approx(mean - half, abs=1e-4)
        assert float(row[f"{metric}_ci_hi"]) == pytest.approx(mean + half, abs=1e-4)


def test_methods_not_significantly_below_the_best_are_marked_with_the_test_named(tmp_path):
    recs = [make_record("lora", s, c) for s, c in LORA.items()]
    recs += [make_record("finetune", s, c) for s, c in FT.items()]
    recs += [make_record("near", s, c) for s, c in NEAR.items()]
    recs += [make_record("other_seeds", s + 100, c) for s, c in NEAR.items()]  # other seeds: not paired
    rep = write(gather([write_records(tmp_path / "r", recs)]), tmp_path / "out", plots=False, html=False)
    rows = _summary_rows(tmp_path / "out")
    best = [acc(LORA[s]) for s in sorted(LORA)]
    assert rows["lora"]["acc_test"] == "best" and rows["lora"]["acc_tied"] == "True"
    for label, data, test in (("finetune", FT, "paired"), ("near", NEAR, "paired"), ("other_seeds", NEAR, "welch")):
        mine = [acc(data[s]) for s in sorted(data)]
        p = (paired_t_test if test == "paired" else welch_t_test)(mine, best).p
        assert rows[label]["acc_test"] == test and float(rows[label]["acc_p"]) == pytest.approx(p)
        assert rows[label]["acc_tied"] == str(p >= 0.05)
    assert rows["near"]["acc_tied"] == "True" and rows["finetune"]["acc_tied"] == "False"
    md = to_markdown(rep.tables[0])
    near = next(line for line in md.splitlines() if line.startswith("| near |"))
    ft = next(line for line in md.splitlines() if line.startswith(f"| {display_name('finetune')} |"))
    assert near.split(" | ")[1].endswith(" ≈") and "≈" not in ft.split(" | ")[1]
    assert "paired by seed" in md and "Welch" in md and "α = 0.05" in md
    assert r"$\approx$" in (tmp_path / "out" / "tables.tex").read_text()
    # a seed whose class order differs breaks the pairing
    recs[-4]["protocol"]["class_order"] = list(reversed(recs[-4]["protocol"]["class_order"]))
    rows = _summary_rows(write(gather([write_records(tmp_path / "r2", recs)]), tmp_path / "o2", plots=False,
                               html=False).files[0].parent)
    assert rows["near"]["acc_test"] == "welch"


def test_stability_and_plasticity_columns_from_the_per_class_counts(tmp_path):
    root = write_records(tmp_path / "r", [make_record("lora", s, c) for s, c in LORA.items()])
    write(gather([root]), tmp_path / "out", plots=False, html=False)
    row = _summary_rows(tmp_path / "out")["lora"]
    for t in range(3):
        new = statistics.mean(100 * LORA[s][t][t] / SIZES[t] for s in LORA)
        assert float(row[f"acc_new_T{t + 1}"]) == pytest.approx(new)
        if t == 0:
            assert row["acc_old_T1"] == ""
        else:
            old = statistics.mean(100 * sum(LORA[s][t][:t]) / sum(SIZES[:t]) for s in LORA)
            assert float(row[f"acc_old_T{t + 1}"]) == pytest.approx(old)
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "Stability and plasticity" in md
    assert f"{float(row['acc_old_T3']):.2f} / {float(row['acc_new_T3']):.2f}" in md


def test_the_terminal_table_keeps_variant_labels(tmp_path):
    recs = [make_record("lora", 1993, LORA[1993], method_cfg={"rank": 4}),
            make_record("lora", 1993, LORA[1993], method_cfg={"rank": 8})]
    (table,) = gather([write_records(tmp_path / "r", recs)]).tables
    out = io.StringIO()
    Console(file=out, width=300).print(to_rich(table))
    lines = [line for line in out.getvalue().splitlines() if display_name("lora") in line]
    assert len(lines) == 2 and "[method.rank=4]" in lines[0] and "[method.rank=8]" in lines[1]


def test_runs_without_seeds_to_compare_are_not_marked(tmp_path):
    recs = [make_record("lora", 1993, LORA[1993]), make_record("finetune", 1993, FT[1993])]
    write(gather([write_records(tmp_path / "r", recs)]), tmp_path / "out", plots=False, html=False)
    rows = _summary_rows(tmp_path / "out")
    assert rows["finetune"]["acc_tied"] == "False" and rows["finetune"]["acc_p"] == ""  # no p-value
