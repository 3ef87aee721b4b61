"""Checking a record against ``record_schema.json`` without a JSON-Schema library.

The record schema uses a small part of JSON Schema (``type``, ``const``, ``enum``,
``required``, ``properties``, ``additionalProperties``, ``items``, ``minItems``/``maxItems``,
``minimum``/``maximum``, ``pattern``); :func:`schema_problem` checks exactly those, so a
hand-edited or damaged record is reported before any field of it is used. (The test suite
checks records with the ``jsonschema`` package as well.)
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parent / "record_schema.json"
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


@lru_cache(maxsize=1)
def record_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def schema_problem(value: Any, schema: dict[str, Any] | None = None, where: str = "the record") -> str | None:
    """The first place where ``value`` breaks ``schema`` (default: the record schema), in
    words (e.g. "tasks[1].correct_per_class is a string, not an array"), or None."""
    schema = record_schema() if schema is None else schema
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{where} is {_kind_of(value)}, not {' or '.join(_article(k) for k in kinds)}"
    if "const" in schema and value != schema["const"]:
        return f"{where} is {value!r}, not {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} is {value!r}, not one of {', '.join(map(repr, schema['enum']))}"
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                return f"{where} lacks '{key}'"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is None and extra is False:
                return f"{where} has an unknown field '{key}'"
            if isinstance(sub, dict):
                problem = schema_problem(item, sub, f"{key}" if where == "the record" else f"{where}.{key}")
                if problem:
                    return problem
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return f"{where} has {len(value)} entries"
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                problem = schema_problem(item, items, f"{where}[{i}]")
                if problem:
                    return problem
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
            return f"{where} is {value}, out of its range"
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return f"{where} is {value!r}, which is not of the form {schema['pattern']}"
    return None


def _kind_of(value: Any) -> str:
    for kind in ("null", "boolean", "string", "object", "array"):
        if _is(value, kind):
            return "null" if kind == "null" else _article(kind)
    return "a number" if _is(value, "number") else type(value).__name__


def _article(kind: str) -> str:
    return "null" if kind == "null" else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
