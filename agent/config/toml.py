"""Reading the technician's TOML: which line each key is on, and one table at a time checked
against a schema of key kinds, every problem as `file:line: key: what is wrong; valid: ...`.

Kinds: `str`, `level` (one MQTT topic level), `host` (an IP address or a host name, no port),
`int`, `float`, `duration`, `size`, `path`, `enum:a|b`, `url:a|b` (its host checked as `host`).
`int`, `duration` and `size` take the range the runtime honours after a colon, written as values
of the kind: `int:1..10000`, `duration:1s..65535s`, `size:1MiB..1TiB`;
a `duration` or `size` without one gets DEFAULT_DURATION or DEFAULT_SIZE. Nothing that passes
is infinite, absurdly long or unusable where it goes (a socket, a file name, a topic).
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.common.durations import parse_duration_between, quoted
from agent.common.hosts import HOST_VALID, host_fault
from agent.common.problems import Problems, fullwidth_note

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
DEFAULT_DURATION = "1ms..1d"  # a duration key that names no range of its own (a protocol's)
DEFAULT_SIZE = "1MiB..1TiB"
MAX_TEXT = 1024  # characters of a text value: host names, user names, URIs
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LEVEL = re.compile(r"^[^\s+#/$\x00-\x1f\x7f][^\s+#/\x00-\x1f\x7f]{0,63}$")
LEVEL_VALID = "1-64 characters without '+', '#', '/', spaces or control characters, not starting with '$'"
PATH_MAX, NAME_MAX = 4095, 255  # bytes: Linux limits of a path and of one of its names
MAX_NESTING = 20  # arrays and inline tables inside each other; no config key needs more than 2
_HOST_PORT = re.compile(r"^\[?(?P<host>[^\[\]]*?)\]?:(?P<port>\d+)$")


def load_toml(text: str, shown_file: str, problems: Problems) -> dict[str, Any] | None:
    """Parse TOML text; None (with one `file:line: key: ...` problem) when it cannot be read,
    whether a syntax error, a number too long to convert or nesting too deep for the parser."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        line = int(m.group(1)) if m else 1
        lines = text.splitlines()
        note = fullwidth_note(lines[line - 1]) if line <= len(lines) else None
        problems.add(shown_file, line, "toml", f"{note}; syntax error: {exc}" if note else f"syntax error: {exc}")
        return None
    except ValueError as exc:  # an integer of more digits than Python converts (tomllib lets it through)
        line, digits = _longest_digits(text)
        why = (f"a number of {digits} digits; valid: an integer of at most 19 digits" if "digits" in str(exc)
               else f"{exc}; valid: TOML")
    except RecursionError:
        line = _too_deep(text)
        why = f"arrays or tables nested more than {MAX_NESTING} deep; valid: the nesting its key takes (at most 2)"
    problems.add(shown_file, line, _key_on(text, line), f"cannot be read at line {line}, {why}")
    return None


def _key_on(text: str, line: int) -> str:
    """The dotted key written on `line` (as problems name keys), else `toml`."""
    paths = [path for path, at in LineIndex(text).lines.items() if at == line]
    names = [".".join(x for x in path if isinstance(x, str)) for path in paths]
    return max(names, key=len) if names else "toml"


def _longest_digits(text: str) -> tuple[int, int]:
    """(line, length) of the longest run of digits: where an oversized number is written."""
    best = max(re.finditer(r"\d+", text), key=lambda m: len(m.group()), default=None)
    if best is None:
        return 1, 0
    return text.count("\n", 0, best.start()) + 1, len(best.group())


def _too_deep(text: str) -> int:
    """The line where brackets outside strings and comments first nest deeper than MAX_NESTING."""
    depth, quote, line = 0, "", 1
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            line += 1
            if quote in ('"', "'"):
                quote = ""  # a one-line string ends with its line (TOML: an error anyway)
        elif quote:
            if ch == "\\" and quote in ('"', '"""') and text[i + 1:i + 2] != "\n":
                i += 1  # an escaped character, never a closing quote
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch == "#":
            end = text.find("\n", i)
            i = (end if end >= 0 else len(text)) - 1
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif ch in "]}":
            depth -= 1
        i += 1
    return 1


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
                note = fullwidth_note(data[key]) if isinstance(data[key], str) else None
                self.err((*loc, key), f"{label}.{key}", f"{note}; {exc}" if note else str(exc))
        return out

    def convert(self, kind: str, value: Any) -> Any:
        kind, _, bounds = kind.partition(":")
        if kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{quoted(value)} is not a non-empty string")
            if len(value) > MAX_TEXT or _CONTROL.search(value):
                raise ValueError(f"{quoted(value)}: valid: text of at most {MAX_TEXT} characters without "
                                 "control characters (tabs, line breaks, NUL)")
            return value
        if kind == "level":
            if not isinstance(value, str) or not _LEVEL.match(value):
                raise ValueError(f"{quoted(value)} cannot be one level of an MQTT topic; valid: {LEVEL_VALID}")
            return value
        if kind == "host":
            return check_host(value)
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{quoted(value)} is not a whole number")
            low, _, high = bounds.partition("..")
            if bounds and not int(low) <= value <= int(high):
                raise ValueError(f"{quoted(value)} is out of range; valid: {low}-{high}")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{value!r} is not true or false")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
                raise ValueError(f"{quoted(value)} is not a number; valid: a finite number such as 0.5")
            return float(value)
        if kind == "duration":
            return parse_duration_between(value, *(bounds or DEFAULT_DURATION).split(".."))
        if kind == "size":
            low, high = (bounds or DEFAULT_SIZE).split("..")
            size = _bytes(value)
            if not _bytes(low) <= size <= _bytes(high):  # inf (400 digits) too
                raise ValueError(f"{quoted(value)} is out of range; valid: {low} to {high}")
            return int(size)
        if kind == "path":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{quoted(value)} is not a path string")
            path = Path(value) if Path(value).is_absolute() else self.base / value
            if _CONTROL.search(value) or len(bytes(path)) > PATH_MAX or \
                    any(len(part.encode()) > NAME_MAX for part in path.parts):
                raise ValueError(f"{quoted(value)} cannot be a file name here; valid: a path of at most "
                                 f"{PATH_MAX} bytes, {NAME_MAX} per name, without control characters")
            return path.resolve() if not Path(value).is_absolute() else path
        if kind == "enum":
            choices = bounds.split("|")
            if value not in choices:
                raise ValueError(f"{quoted(value)} is not valid; valid: {', '.join(choices)}")
            return value
        if kind == "url":
            schemes = bounds.split("|")
            examples = ", ".join(f"{s}://host:port" for s in schemes)
            try:
                parsed = urlparse(value) if isinstance(value, str) and not _CONTROL.search(value) else None
                if parsed is None or parsed.scheme not in schemes or not parsed.hostname:
                    raise ValueError("no scheme or host")
                parsed.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                why = "" if str(exc) == "no scheme or host" else f" ({exc})"
                raise ValueError(f"{quoted(value)} is not a valid address{why}; valid: {examples}") from None
            if fault := host_fault(parsed.hostname):
                raise ValueError(f"{quoted(value)}: host {parsed.hostname!r} is {fault}; valid: {examples}, where "
                                 f"host is {HOST_VALID}")
            return value
        raise AssertionError(kind)


def check_host(value: Any) -> str:
    """`value` when it is an IP address or a host name; ValueError naming what is wrong: a port
    or a scheme written into it, an impossible IPv4 address, a character no host name has."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{quoted(value)} is not a host; valid: {HOST_VALID}")
    try:  # first: an IPv6 address ends in ':' and digits, like a port
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if "://" in value:
        parsed = urlparse(value)
        try:
            port = parsed.port
        except ValueError:
            port = None
        where = f"host = \"{parsed.hostname}\"" + (f" and port = {port}" if port else "")
        raise ValueError(f"{quoted(value)} is a URL ({parsed.scheme}://); valid: {where}, the host alone")
    if (m := _HOST_PORT.match(value)) and m["host"]:
        raise ValueError(f"{quoted(value)} holds port {m['port']}, which belongs in the port key; valid: "
                         f"host = \"{m['host']}\" and port = {m['port']}")
    if fault := host_fault(value):
        raise ValueError(f"{quoted(value)} is {fault}; valid: {HOST_VALID}")
    return value


def finite(value: int | float) -> bool:
    """A number that is not NaN, not infinite and not an int beyond any float."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def _bytes(value: Any) -> float:
    """Bytes a size stands for, as written (may be infinite: the caller bounds it)."""
    m = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{quoted(value)} is not a size; valid: a number with a unit, e.g. \"500MB\", \"2GiB\"")
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]
