"""Record and envelope templates: TOML tables whose strings hold `{variable}` placeholders.

- A string that is exactly one placeholder (`"{value}"`) takes the variable's value as it is, so
  it stays a JSON number, null, bool, array or object.
- Any other string is text: None renders as "", bools as `true` / `false`, ints in decimal,
  floats as Python's shortest round-trip `repr` (7.25 -> "7.25", 7.0 -> "7.0" as in the JSON
  body and Java's Double.toString, 1e-05 -> "1e-05"), lists and dicts as compact JSON.
- `{{` and `}}` are literal braces. Numbers, bools, dates are copied; nested tables and arrays
  are templated recursively and rebuilt on every render, so a result never shares a mutable
  part with another.

`compile_template` parses once into a tree of small closures; `Template.render` only looks
values up and joins strings. The envelope's `payload` is whatever the caller passes: see
`agent.north.codec.Codec.payload` (the records themselves for a plain ["json"] chain, else the
coded text).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

RECORD_VARIABLES = frozenset({
    "tag", "name", "value", "unit", "quality", "reason", "ts", "ts_ms", "kind", "target_code",
    "hazard_source", "equipment", "backfill", "gateway", "enterprise",
})
ENVELOPE_VARIABLES = frozenset({
    "payload", "data_id", "seq", "count", "sent_at", "gateway", "enterprise",
})

Values = Mapping[str, Any]
_Render = Callable[[Values], Any]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Entry(NamedTuple):
    """One top-level entry of a table template."""

    key: str
    render: _Render
    used: frozenset[str]  # the variables it uses
    whole: str | None  # the variable, when the value is exactly one placeholder ("{value}")


@dataclass(frozen=True)
class Template:
    """A compiled template. `variables` is every name it uses; `render` needs each of them in
    `values` (None for a field a point lacks) and raises KeyError for a missing one."""

    variables: frozenset[str]
    _render: _Render
    # the table's top-level entries in order: the parts of a record that do not change from
    # one reading of a point to the next are serialised once (agent.north.record_writer.RecordWriter)
    entries: tuple[Entry, ...] = ()

    def render(self, values: Values) -> dict:
        return self._render(values)


def _text(value: Any) -> str:
    """A value as it reads inside a text template (see the module docstring)."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict | tuple):
        return orjson.dumps(value).decode("utf-8")
    return str(value)


def _parse(s: str) -> tuple[list[str], list[str]]:
    """Split a template string into literals and variable names: literals has one more item
    than names (text = lit0 + v0 + lit1 + ... + litN). Raises ValueError on a stray brace."""
    literals, names, buf = [], [], []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "{" and s.startswith("{{", i):
            buf.append("{")
            i += 2
        elif c == "}" and s.startswith("}}", i):
            buf.append("}")
            i += 2
        elif c == "{":
            end = s.find("}", i + 1)
            inner = s.find("{", i + 1)
            if end < 0 or 0 <= inner < end:
                raise ValueError(f"'{{' at position {i} is not closed; write {{{{ for a literal "
                                 "brace")
            if end == i + 1:
                raise ValueError(f"empty placeholder {{}} at position {i}")
            literals.append("".join(buf))
            buf = []
            names.append(s[i + 1:end])
            i = end + 1
        elif c == "}":
            raise ValueError(f"'}}' at position {i} closes nothing; write }}}} for a literal brace")
        else:
            buf.append(c)
            i += 1
    literals.append("".join(buf))
    return literals, names


def split_placeholders(s: str) -> tuple[list[str], list[str]]:
    """A template string's literals and variable names (text = lit0 + v0 + lit1 + ... + litN);
    ValueError on a stray brace."""
    return _parse(s)


def _key_path(where: str, key: str) -> str:
    part = key if _BARE_KEY.fullmatch(key) else orjson.dumps(key).decode("utf-8")
    return f"{where}.{part}" if where else part


def _compile_string(s: str, where: str, allowed: frozenset[str], used: set[str],
                    problems: list[str]) -> _Render:
    try:
        literals, names = _parse(s)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return lambda values: s
    unknown = [name for name in names if name not in allowed]
    for name in unknown:
        problems.append(f"{where}: unknown variable {{{name}}}; valid: {', '.join(sorted(allowed))}")
    if unknown:
        return lambda values: s
    used.update(names)
    if not names:
        constant = literals[0]
        return lambda values: constant
    if len(names) == 1 and literals == ["", ""]:
        return itemgetter(names[0])
    fmt = "{}".join(lit.replace("{", "{{").replace("}", "}}") for lit in literals)
    getters = [itemgetter(name) for name in names]
    return lambda values: fmt.format(*[_text(get(values)) for get in getters])


def _compile(node: Any, where: str, allowed: frozenset[str], used: set[str],
             problems: list[str]) -> _Render:
    if isinstance(node, str):
        return _compile_string(node, where, allowed, used, problems)
    if isinstance(node, Mapping):
        items = [(key, _compile(value, _key_path(where, key), allowed, used, problems))
                 for key, value in node.items()]
        return lambda values: {key: render(values) for key, render in items}
    if isinstance(node, list | tuple):
        parts = [_compile(value, f"{where}[{i}]", allowed, used, problems)
                 for i, value in enumerate(node)]
        return lambda values: [render(values) for render in parts]
    return lambda values: node


def compile_template(table: Any, allowed: frozenset[str],
                     where: str = "") -> tuple[Template | None, list[str]]:
    """Compile a TOML table once; `where` names it in problems (e.g. "record" gives
    "record.VALUE: unknown variable {valu}; valid: ..."). Returns (None, problems) on any
    problem."""
    if not isinstance(table, Mapping):
        return None, [f"{where or 'template'}: must be a table, not {type(table).__name__}"]
    used: set[str] = set()
    problems: list[str] = []
    entries = []
    for key, value in table.items():
        own: set[str] = set()
        render = _compile(value, _key_path(where, key), allowed, own, problems)
        whole = None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                literals, names = _parse(value)
                whole = names[0] if len(names) == 1 and literals == ["", ""] else None
        entries.append(Entry(key, render, frozenset(own), whole))
        used |= own
    if problems:
        return None, problems
    return Template(frozenset(used), lambda values: {e.key: e.render(values) for e in entries}, tuple(entries)), []
