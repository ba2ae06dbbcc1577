"""Durations as written in config files: "500ms", "1s", "2m", "8h", "1d", "1h30m"."""

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
VALID = 'a number with a unit, e.g. "500ms", "1s", "2m", "8h", "1h30m"'
MAX_SECONDS = 3650 * 86400.0  # ten years: longer than any setting needs, and always finite


def quoted(value: object) -> str:
    """A value as a message quotes it: a hostile 10 000-character value is not echoed whole."""
    text = repr(value)
    if len(text) <= 60:
        return text
    if isinstance(value, str):
        return f"{value[:30]!r}... ({len(value)} characters)"
    return f"{text[:40]}... ({len(text)} characters)"


def _seconds(text: object) -> float:
    """Seconds as written; may be infinite (a 400-digit number): the callers bound it."""
    if not isinstance(text, str):
        raise ValueError(f"{quoted(text)} is not a duration string; valid: {VALID}")
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"{quoted(text)} is not a duration; valid: {VALID}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"{quoted(text)} is not a duration; valid: {VALID}")
    return total


def parse_duration(text: object) -> float:
    """Return seconds, finite and at most ten years; raise ValueError with a technician-readable
    message."""
    seconds = _seconds(text)
    if not seconds <= MAX_SECONDS:
        raise ValueError(f"{quoted(text)} is longer than ten years; valid: {VALID}, at most 3650d")
    return seconds


def parse_duration_between(text: object, low: str, high: str) -> float:
    """A duration from `low` to `high` (both written as durations, and shown so when refused)."""
    seconds = _seconds(text)
    if not _seconds(low) <= seconds <= _seconds(high):
        what = "must be longer than zero" if seconds <= 0 else "is out of range"
        raise ValueError(f"{quoted(text)} {what}; valid: {low} to {high}")
    return seconds
