"""The package's module-level imports form no cycle (a cycle makes import order matter and
breaks partial imports); functions may import lazily, ``if TYPE_CHECKING`` imports are free."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (pyproject.toml: package-dir)
PACKAGES = {"clbench": ROOT / "clbench", "clbench.methods": ROOT / "methods", "clbench.benchmarks": ROOT / "benchmarks"}

# Cycles that need a change in files being rewritten elsewhere; each entry is the sorted
# list of the cycle's modules. Empty: there is none.
EXPECTED_TO_FIX_LATER: list[list[str]] = []


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_init = parts[-1] == "__init__"
            found[".".join((package, *(parts[:-1] if is_init else parts)))] = (path, is_init)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: not those in functions or
    ``if TYPE_CHECKING:`` blocks (class bodies, ``try`` and other ``if`` blocks count)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from module_level_imports(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            blocks = [getattr(node, name, None) or [] for name in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(node, "handlers", [])] + [c.body for c in getattr(node, "cases", [])]
            for block in blocks:
                yield from module_level_imports(block)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level. Importing ``a.b.c`` runs
    ``a``, ``a.b`` and ``a.b.c``; the importer's own enclosing packages are left out (they
    are initialised already when it runs)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_init) in mods.items():
        package = name if is_init else name.rpartition(".")[0]
        targets: list[str] = []
        for node in module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        deps = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in mods and not (name == dep or name.startswith(dep + ".")):
                    deps.add(dep)
        graph[name] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles as chains a -> ... -> a: one through each module not on an earlier one."""
    cycles, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        path = _path_back(graph, start)
        if path:
            cycles.append(path)
            done.update(path)
    return cycles


def _path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import chain from ``start`` back to itself, if any (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for dep in sorted(graph.get(node, ())):
                if dep == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [start, *reversed(chain[:-1]), start]
                if dep not in previous:
                    previous[dep] = node
                    nxt.append(dep)
        frontier = nxt
    return None


def test_the_graph_sees_the_packages_and_relative_imports():
    graph = import_graph()
    assert {"clbench.cli", "clbench.methods.l2p", "clbench.benchmarks.shapes", "clbench.engine.trainer"} <= set(graph)
    assert "clbench.methods.base" in graph["clbench.methods.l2p"]  # 'from .base import ...'
    assert "clbench.config" in graph["clbench.benchmarks.base"]  # 'from clbench.config import ...'


def test_the_cycle_finder_reports_the_chain():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_records_and_resolution_never_import_the_engine():
    for module in ("clbench.records", "clbench.resolve", "clbench.config", "clbench.statefile"):
        path, _ = modules()[module]
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.lstrip(".").startswith("engine") or m.startswith("clbench.engine")], module


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    unexpected = [c for c in cycles if sorted(set(c)) not in EXPECTED_TO_FIX_LATER]
    assert not unexpected, "import cycles: " + "; ".join(" -> ".join(c) for c in unexpected)
