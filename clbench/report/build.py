"""``clbench report``: records → tables (Markdown, LaTeX, CSV), figures and an HTML page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..housekeeping import summary as unfinished_summary
from ..housekeeping import unfinished_runs
from ..records import atomic_write_text, ensure_writable
from .aggregate import PaperTable, paper_tables, setting_notes, summarize
from .collect import Collection, collect, find_records
from .efficiency import EfficiencyTable, efficiency_tables
from .efficiency import to_markdown as efficiency_markdown
from .efficiency import write_csv as write_efficiency_csv
from .significance import add_intervals, add_significance, add_stability_plasticity
from .tables import stability_markdown, to_latex, to_markdown, write_csv


@dataclass
class Report:
    """What a report holds and which files it wrote."""

    collection: Collection
    summary: pd.DataFrame
    tables: list[PaperTable]
    notes: list[str]
    figures: list = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    efficiency: list[EfficiencyTable] = field(default_factory=list)


def gather(paths: list[Path]) -> Report:
    """Collect and aggregate (no files written); a clear error when nothing can be reported."""
    coll = collect(paths)
    if coll.runs.empty:
        where = ", ".join(str(p) for p in paths)
        found = len(find_records(paths))
        detail = f" {coll.skipped_summary()}" if coll.skipped else ""
        unfinished = unfinished_summary(unfinished_runs(paths))
        detail += f" {unfinished}: see 'clbench clean'." if unfinished else ""
        raise DataError(
            f"No complete run records under {where} ({found} record file(s) found).{detail} Run "
            f"'clbench run --methods ...' first, or pass the directory that holds the runs "
            f"(e.g. 'clbench report results')."
        )
    summary = add_stability_plasticity(add_significance(add_intervals(summarize(coll), coll), coll), coll)
    return Report(coll, summary, paper_tables(summary), setting_notes(summary), efficiency=efficiency_tables(summary))


def write(report: Report, out_dir: Path, plots: bool = True, html: bool = True, source: str = "") -> Report:
    """Write tables.md, tables.tex, summary.csv, runs.csv, figures/ and index.html."""
    ensure_writable(out_dir)
    coll = report.collection
    md = ["# clbench report", ""]
    md += [to_markdown(t) for t in report.tables]
    md += [stability_markdown(report.summary)]
    md += [efficiency_markdown(t) for t in report.efficiency]
    md += ["Settings:", ""] + [f"- {n}" for n in report.notes]
    if coll.skipped:
        md += ["", coll.skipped_summary(), ""] + [f"- `{s.path}`: {s.reason}" for s in coll.skipped]
    files = [out_dir / "tables.md", out_dir / "tables.tex"]
    atomic_write_text(files[0], "\n".join(md) + "\n")
    atomic_write_text(files[1], "% clbench report; needs \\usepackage{booktabs}\n" + "\n".join(to_latex(t) for t in report.tables))
    files += write_csv(report.summary, coll.runs, out_dir)
    if report.efficiency:
        files.append(write_efficiency_csv(report.efficiency, out_dir))
    if plots or html:
        from .plots import all_figures

        report.figures = all_figures(coll, report.summary, out_dir / "figures")
        files += [p for f in report.figures for p in (f.png, f.pdf)]
    if html:
        from .html import render

        page = render(report.tables, report.notes, report.figures, source=source or "the given records",
                      n_runs=len(coll.runs), skipped=coll.skipped, skipped_summary=coll.skipped_summary(),
                      efficiency=report.efficiency)
        files.append(out_dir / "index.html")
        atomic_write_text(files[-1], page)
    report.files = files
    return report
