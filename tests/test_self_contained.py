"""The README, docs and package sources cite nothing users do not have: no notes outside the
repository (the project's own research notes), only papers, official repositories and docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = r"(?:methods|sdlora|protocols|pilot_methods|engineering_models|frameworks)"
CITATION = re.compile(
    rf"shared/spec|{NOTES}(?:\.md)?`{{0,2}},? ?§|\bspec\b[ `]*{NOTES}\b|\bsee the spec\b|\bthe spec's choice\b")


def sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", *sorted((ROOT / "docs").glob("**/*.md"))]
    for package in ("clbench", "methods", "benchmarks", "tests"):
        files += sorted((ROOT / package).glob("**/*.py"))
    return [f for f in files if f != Path(__file__).resolve()]


def test_no_citation_of_notes_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in sources()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if CITATION.search(line)]
    assert not found, "cite papers, official repositories or docs/ instead:\n" + "\n".join(found)


def test_the_pattern_catches_the_forms_in_use():
    for text in ("see shared/spec/sdlora.md", "(spec methods.md §4.4)", "``protocols.md`` §1.2", "sdlora.md §5",
                 "spec ``methods.md`` §2", "(see the spec, protocols §5)", "(the spec's choice)"):
        assert CITATION.search(text), text
    for text in ("docs/methods.md", "SweepSpec", "the spec's executor", "BackboneSpec(timm_name)", "timespec"):
        assert not CITATION.search(text), text
