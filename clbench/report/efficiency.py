"""The efficiency table in the layout of the SD-LoRA paper's Table 5, beside the accuracy tables.

One table per setting: a row per method variant with what its records measured (see
:mod:`clbench.efficiency`): inference GFLOPs per image, learnable parameters of the last task
and stored features/statistics (millions), which the paper's table has, and the stored bytes,
training seconds per task, training images per second and peak memory, which it lacks. Means
over seeds. A preset that cites published figures adds a ``reported`` row under ours, only for
groups comparable with the preset (:mod:`clbench.comparability`).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.table import Table

from .aggregate import UNVERIFIED
from .collect import EFFICIENCY, PAPER_EFFICIENCY

TITLES = {"gflops": "GFLOPs", "learnable_m": "Learnable params (M)", "stored_m": "Stored features (M)",
          "stored_mb": "Stored (MB)", "train_s_task": "Train s/task", "train_img_s": "Train img/s",
          "peak_mb": "Peak memory (MB)"}
CAPTION = ("inference GFLOPs per image (evaluation forward at the input size), learnable parameters of the last task, "
           "stored features/statistics; training wall-clock per task, training images/s, peak memory (CUDA allocator "
           "peak on GPU runs, process peak RSS on CPU runs); mean over seeds")


@dataclass
class EfficiencyRow:
    label: str
    method: str  # registered name
    kind: str  # 'ours' or 'paper'
    values: dict[str, float] = field(default_factory=dict)
    n: int = 0


@dataclass
class EfficiencyTable:
    benchmark: str
    setting: str
    rows: list[EfficiencyRow]
    metrics: tuple[str, ...] = EFFICIENCY


def _value(v: object) -> float:
    return math.nan if v is None or pd.isna(v) else float(v)


def efficiency_tables(summary: pd.DataFrame) -> list[EfficiencyTable]:
    """One :class:`EfficiencyTable` per setting with measured efficiency."""
    if summary.empty or "gflops_mean" not in summary:
        return []
    tables = []
    for (benchmark, setting), sub in summary.groupby(["benchmark", "setting"], sort=True):
        if sub["gflops_mean"].isna().all():
            continue  # records written before efficiency was measured
        rows = []
        for _, r in sub.sort_values("label").iterrows():
            rows.append(EfficiencyRow(r["label"], r["method"], "ours", {m: _value(r[f"{m}_mean"]) for m in EFFICIENCY},
                                      int(r["n"])))
            paper = {m: _value(r[f"paper_{m}"]) for m in PAPER_EFFICIENCY}
            if any(not math.isnan(v) for v in paper.values()):
                label = f"{r['label']}, reported ({r['paper_efficiency_source']})"
                if r["paper_efficiency_verified"] is False:
                    label += f" [{UNVERIFIED}]"
                rows.append(EfficiencyRow(label, r["method"], "paper", paper))
        tables.append(EfficiencyTable(str(benchmark), str(setting), rows))
    return tables


def fmt(value: float) -> str:
    """Two decimals as the paper prints them; three significant digits below 0.1 (tiny models)."""
    if math.isnan(value):
        return "–"
    if value != 0 and abs(value) < 0.1:
        return f"{value:.3g}"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def _title(table: EfficiencyTable) -> str:
    return f"{table.benchmark} {table.setting}: efficiency"


def to_rich(table: EfficiencyTable) -> Table:
    out = Table(title=_title(table), caption=CAPTION, title_justify="left", caption_justify="left")
    out.add_column("method", max_width=36)
    for m in table.metrics:
        out.add_column(TITLES[m], justify="right")
    out.add_column("n", justify="right")
    for row in table.rows:
        out.add_row(row.label, *(fmt(row.values.get(m, math.nan)) for m in table.metrics),
                    str(row.n) if row.kind == "ours" else "paper", style="italic dim" if row.kind == "paper" else None)
    return out


def to_markdown(table: EfficiencyTable) -> str:
    esc = lambda t: t.replace("|", "\\|")  # noqa: E731
    lines = [f"### {_title(table)}", "", f"{CAPTION}; *reported* rows are the papers' figures.", "",
             "| Method | " + " | ".join(TITLES[m] for m in table.metrics) + " | n |",
             "|---|" + "---:|" * (len(table.metrics) + 1)]
    for row in table.rows:
        label = f"*{esc(row.label)}*" if row.kind == "paper" else esc(row.label)
        cells = [fmt(row.values.get(m, math.nan)) for m in table.metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row.n if row.kind == 'ours' else 'paper'} |")
    return "\n".join(lines) + "\n"


def to_html(table: EfficiencyTable) -> str:
    e = html.escape
    head = "".join(f"<th>{e(TITLES[m])}</th>" for m in table.metrics)
    body = []
    for row in table.rows:
        cells = "".join(f"<td>{e(fmt(row.values.get(m, math.nan)))}</td>" for m in table.metrics)
        n = str(row.n) if row.kind == "ours" else "paper"
        body.append(f'<tr class="{row.kind}"><th scope="row">{e(row.label)}</th>{cells}<td>{n}</td></tr>')
    return (f'<table class="results efficiency" data-benchmark="{e(table.benchmark)}">'
            f"<caption>{e(_title(table))}: {e(CAPTION)}; reported rows (italic) are the papers' figures.</caption>"
            f"<thead><tr><th>Method</th>{head}<th>n</th></tr></thead><tbody>{''.join(body)}</tbody></table>")


def write_csv(tables: list[EfficiencyTable], out_dir: Path) -> Path:
    """``efficiency.csv``: one row per table row (registered method names)."""
    rows = [{"benchmark": t.benchmark, "setting": t.setting, "method": r.method, "label": r.label, "kind": r.kind,
             "n": r.n, **{m: r.values.get(m) for m in t.metrics}} for t in tables for r in t.rows]
    path = out_dir / "efficiency.csv"
    pd.DataFrame(rows, columns=["benchmark", "setting", "method", "label", "kind", "n", *EFFICIENCY]).to_csv(path, index=False)
    return path
