"""One self-contained HTML page: tables, setting notes, figures (PNG embedded as data URIs).

The page loads nothing from anywhere (a Content-Security-Policy forbids every external
resource), so it reads the same offline, from an e-mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path

import jinja2

from .aggregate import PaperTable
from .plots import Figure
from .tables import to_html

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table.results { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
table.results caption { caption-side: top; text-align: left; color: #555; padding-bottom: 0.4rem; }
table.results th, table.results td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #eee; text-align: right; }
table.results th[scope=row], table.results thead th:first-child { text-align: left; }
table.results th.group { text-align: center; border-bottom: 1px solid #999; }
table.results tr.paper { font-style: italic; color: #666; }
ul.notes { font-size: 0.85rem; color: #444; }
figure { display: inline-block; margin: 1rem 1rem 1rem 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #444; max-width: 640px; }
.meta { color: #666; font-size: 0.85rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Generated {{ generated }} from {{ source }}: {{ n_runs }} complete run(s) in {{ n_settings }} setting(s).
Every number is recomputed from the stored accuracy matrices.</p>
{% if skipped %}<details class="meta"><summary>{{ skipped_summary }}</summary><ul>
{% for s in skipped %}<li><code>{{ s.path }}</code>: {{ s.reason }}</li>{% endfor %}
</ul></details>{% endif %}
<h2 id="tables">Tables</h2>
{% for table in tables %}{{ table | safe }}{% endfor %}
{% if efficiency %}<h2 id="efficiency">Efficiency</h2>
{% for table in efficiency %}{{ table | safe }}{% endfor %}{% endif %}
<ul class="notes">{% for note in notes %}<li>{{ note }}</li>{% endfor %}</ul>
<h2 id="figures">Figures</h2>
{% for fig in figures %}<figure data-kind="{{ fig.kind }}"><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.title }}">
<figcaption><b>{{ fig.title }}.</b> {{ fig.caption }}</figcaption></figure>
{% endfor %}
</body>
</html>
"""


def render(tables: list[PaperTable], notes: list[str], figures: list[Figure], *, source: str, n_runs: int,
           skipped: list, skipped_summary: str, title: str = "clbench report", efficiency: list | None = None) -> str:
    """The page as a string (figures read from their PNG files and embedded); ``efficiency``:
    the :class:`~clbench.report.efficiency.EfficiencyTable` objects, beside the accuracy tables."""
    from .efficiency import to_html as efficiency_html

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    figs = [{"kind": f.kind, "title": f.title, "caption": f.caption,
             "data": base64.b64encode(Path(f.png).read_bytes()).decode("ascii")} for f in figures]
    return env.from_string(TEMPLATE).render(
        title=title, generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), source=source, n_runs=n_runs,
        n_settings=sum(len(t.columns) for t in tables), skipped=skipped, skipped_summary=skipped_summary,
        tables=[to_html(t) for t in tables], notes=notes, figures=figs,
        efficiency=[efficiency_html(t) for t in efficiency or []],
    )
