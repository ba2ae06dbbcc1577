"""Reading the technician's TOML: which line each key is on, and one table at a time checked
against a schema of key kinds, every problem as `file:line: key: what is wrong; valid: ...`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.common.durations import parse_duration
from agent.common.problems import Problems

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
MIN_STORE_BYTES = 1 << 20


class LineIndex:
    """Maps TOML key paths such as ("devices", 1, "port") to the line they are written on."""

    _ARRAY = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        counts: dict[tuple, int] = {}  # array of tables (its path, indices resolved) -> entries
        current: tuple = ()

        def resolve(names: list[str]) -> tuple:
            """A dotted header's path, each array of tables in it at its latest entry:
            [uplinks.envelope] after a second [[uplinks]] is ("uplinks", 1, "envelope")."""
            path: tuple = ()
            for name in names:
                path = (*path, name)
                if path in counts:
                    path = (*path, counts[path] - 1)
            return path

        for n, line in enumerate(text.splitlines(), start=1):
            if m := self._ARRAY.match(line):
                *parents, name = m.group(1).split(".")
                array = (*resolve(parents), name)
                idx = counts.get(array, 0)
                counts[array] = idx + 1
                current = (*array, idx)
                self.lines.setdefault(current, n)
            elif m := self._TABLE.match(line):
                current = resolve(m.group(1).split("."))
                self.lines.setdefault(current, n)
            elif m := self._KEY.match(line):
                self.lines.setdefault((*current, m.group(1)), n)

    def line(self, *path: Any) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1


class TomlReader:
    """Walks one TOML file, checking keys against schemas and collecting problems."""

    def __init__(self, path: Path, text: str, problems: Problems):
        self.path, self.problems, self.index = path, problems, LineIndex(text)
        self.base = path.parent

    def err(self, loc: tuple, key: str, msg: str) -> None:
        self.problems.add(self.path, self.index.line(*loc), key, msg)

    def section(self, data: Any, loc: tuple, schema: dict, extra: tuple = ()) -> dict[str, Any]:
        """Check one table against its schema; return converted values of the good keys."""
        out: dict[str, Any] = {}
        label = ".".join(str(x) for x in loc if isinstance(x, str))
        if not isinstance(data, dict):
            self.err(loc, label, "must be a table")
            return out
        for key in data:
            if key not in schema and key not in extra:
                self.err((*loc, key), f"{label}.{key}", f"unknown key; valid keys here: {', '.join(sorted({*schema, *extra}))}")
        for key, (kind, required) in schema.items():
            if key not in data:
                if required:
                    self.err(loc, f"{label}.{key}", "required key is missing")
                continue
            try:
                out[key] = self.convert(kind, data[key])
            except ValueError as exc:
                self.err((*loc, key), f"{label}.{key}", str(exc))
        return out

    def convert(self, kind: str, value: Any) -> Any:
        if kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{value!r} is not a non-empty string")
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{value!r} is not a whole number")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{value!r} is not true or false")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise ValueError(f"{value!r} is not a number; valid: a number such as 0.5")
            return float(value)
        if kind == "duration":
            seconds = parse_duration(value)
            if seconds <= 0:
                raise ValueError(f"{value!r} must be longer than zero")
            return seconds
        if kind == "size":
            m = _SIZE.match(value.strip()) if isinstance(value, str) else None
            if not m:
                raise ValueError(f"{value!r} is not a size; valid: a number with a unit, e.g. \"500MB\", \"2GiB\"")
            size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
            if size < MIN_STORE_BYTES:
                raise ValueError(f"{value!r} is too small; valid: at least 1MiB")
            return size
        if kind == "path":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{value!r} is not a path string")
            return (self.base / value).resolve() if not Path(value).is_absolute() else Path(value)
        if kind.startswith("enum:"):
            choices = kind[5:].split("|")
            if value not in choices:
                raise ValueError(f"{value!r} is not valid; valid: {', '.join(choices)}")
            return value
        if kind.startswith("url:"):
            schemes = kind[4:].split("|")
            parsed = urlparse(value) if isinstance(value, str) else None
            if parsed is None or parsed.scheme not in schemes or not parsed.hostname:
                examples = ", ".join(f"{s}://host:port" for s in schemes)
                raise ValueError(f"{value!r} is not a valid address; valid: {examples}")
            try:
                parsed.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                raise ValueError(f"{value!r}: {exc}") from None
            return value
        raise AssertionError(kind)
