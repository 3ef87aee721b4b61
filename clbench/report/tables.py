"""Render :class:`~clbench.report.aggregate.PaperTable` objects: rich, Markdown, LaTeX, HTML, CSV.

Cells read ``mean (SE)`` as in the papers (``mean`` alone for a single seed, ``–`` when
absent); the best of our means per column is bold, and ``≈`` marks ours that it is not
significantly better than (the test is stated under each table); reported rows are labelled
with their source and set in italics.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
from rich.markup import escape
from rich.table import Table

from ..records import atomic_write_text
from .aggregate import TITLES, PaperTable, Row
from .significance import significance_note

CAPTION = "Acc and AAA (sample-weighted, %), forgetting (Chaudhry, %): mean (standard error) over n seeds"


def fmt(mean: float, se: float, digits: int = 2) -> str:
    """``mean (se)``, ``mean`` without an SE, ``–`` without a value."""
    if mean is None or math.isnan(mean):
        return "–"
    if se is None or math.isnan(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({se:.{digits}f})"


def _cells(table: PaperTable, row: Row) -> list[tuple[str, bool]]:
    """(text, bold) for every column of ``row``, setting by setting."""
    out = []
    for col in table.columns:
        for metric in table.metrics:
            text = fmt(*table.value(row, col.key, metric))
            out.append((f"{text} ≈" if table.is_tied(row, col.key, metric) else text, table.is_best(row, col.key, metric)))
        n = row.n.get(col.key)
        out.append((str(n) if n else ("paper" if row.kind == "paper" and col.key in row.cells else "–"), False))
    return out


def _headers(table: PaperTable) -> list[str]:
    return [f"{col.label} {TITLES[m]}" for col in table.columns for m in (*table.metrics, "n")]


def to_rich(table: PaperTable) -> Table:
    """A rich table for the terminal."""
    out = Table(title=f"{table.benchmark}: {CAPTION}", title_justify="left", caption=significance_note(),
                caption_justify="left")
    out.add_column("method", max_width=36)
    for col in table.columns:
        for m in (*table.metrics, "n"):
            out.add_column(f"{col.label}\n{TITLES[m]}", justify="right", no_wrap=True)
    for row in table.rows:
        cells = [f"[bold]{t}[/]" if bold else t for t, bold in _cells(table, row)]
        out.add_row(escape(row.label), *cells, style="italic dim" if row.kind == "paper" else None)
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: PaperTable) -> str:
    """A GitHub-flavoured Markdown table with a heading and caption."""
    lines = [f"### {table.benchmark}", "", f"{CAPTION}; best of ours in bold; *reported* rows are the papers' numbers.", ""]
    lines.append("| Method | " + " | ".join(_md_escape(h) for h in _headers(table)) + " |")
    lines.append("|---|" + "---:|" * len(_headers(table)))
    for row in table.rows:
        cells = [f"**{t}**" if bold else t for t, bold in _cells(table, row)]
        label = f"*{_md_escape(row.label)}*" if row.kind == "paper" else _md_escape(row.label)
        lines.append(f"| {label} | " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", significance_note()]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "·": r"$\cdot$", "…": r"\ldots{}", "–": "--", "≈": r"$\approx$",
                  "α": r"$\alpha$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: PaperTable) -> str:
    """A booktabs ``table`` environment with one ``\\multicolumn`` group per setting."""
    width = len(table.metrics) + 1
    spec = "l" + ("c" * width) * len(table.columns)
    group = " & ".join(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(c.label)}}}" for c in table.columns)
    rules = " ".join(rf"\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(table.columns)))
    names = " & ".join(latex_escape(TITLES[m]) if m != "n" else "$n$" for _ in table.columns for m in (*table.metrics, "n"))
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.benchmark)}: {latex_escape(CAPTION)}; best of ours in bold; "
             r"reported rows (italic) are the papers' numbers.}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", rf" & {group} \\", rules, rf"Method & {names} \\", r"\midrule"]
    for row in table.rows:
        cells = [rf"\textbf{{{latex_escape(t)}}}" if bold else latex_escape(t) for t, bold in _cells(table, row)]
        label = latex_escape(row.label)
        if row.kind == "paper":
            label, cells = rf"\textit{{{label}}}", [rf"\textit{{{c}}}" for c in cells]
        lines.append(f"{label} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\par\footnotesize {latex_escape(significance_note())}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: PaperTable) -> str:
    """An HTML ``<table>``: a header row of settings (colspan) above the metric names."""
    e = html.escape
    width = len(table.metrics) + 1
    head1 = "".join(f'<th colspan="{width}" class="group">{e(c.label)}</th>' for c in table.columns)
    head2 = "".join(f"<th>{e(TITLES[m])}</th>" for _ in table.columns for m in (*table.metrics, "n"))
    body = []
    for row in table.rows:
        cells = "".join(f"<td>{'<b>' + e(t) + '</b>' if bold else e(t)}</td>" for t, bold in _cells(table, row))
        body.append(f'<tr class="{row.kind}"><th scope="row">{e(row.label)}</th>{cells}</tr>')
    return (f'<table class="results" data-benchmark="{e(table.benchmark)}">'
            f"<caption>{e(table.benchmark)}: {e(CAPTION)}; best of ours in bold; reported rows (italic) are the "
            f"papers' numbers.</caption>"
            f'<thead><tr><th rowspan="2">Method</th>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table><p class=\"note\">{e(significance_note())}</p>")


def stability_markdown(summary: pd.DataFrame) -> str:
    """Per setting: accuracy on the old classes / on the new task's classes after each task
    (means over seeds), one row per method variant."""
    if summary.empty or "acc_new_T1" not in summary:
        return ""
    lines = ["## Stability and plasticity", "",
             "Accuracy (%) after each task on the classes of the earlier tasks / on the new task's classes "
             "(mean over seeds, from the per-class test counts).", ""]
    for _, sub in summary.groupby("setting_key", sort=False):
        first = sub.iloc[0]
        n = int(first["n_tasks"])
        lines += [f"### {first['benchmark']} {_md_escape(str(first['setting']))}", "",
                  "| Method | " + " | ".join(f"T{t} old / new" for t in range(1, n + 1)) + " |",
                  "|---|" + "---:|" * n]
        for _, r in sub.iterrows():
            cells = [f"{fmt(r[f'acc_old_T{t}'], math.nan)} / {fmt(r[f'acc_new_T{t}'], math.nan)}"
                     for t in range(1, n + 1)]
            lines.append(f"| {_md_escape(str(r['label']))} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_csv(summary: pd.DataFrame, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``summary.csv`` (one row per setting × method variant: n, seeds, mean/SE of every
    metric and cost, paper numbers beside) and ``runs.csv`` (one row per run)."""
    paths = [out_dir / "summary.csv", out_dir / "runs.csv"]
    atomic_write_text(paths[0], summary.to_csv(index=False))
    atomic_write_text(paths[1], runs.to_csv(index=False))
    return paths
