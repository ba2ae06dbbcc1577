"""Durations as written in config files: "500ms", "1s", "2m", "8h", "1d", "1h30m"."""

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
VALID = 'a number with a unit, e.g. "500ms", "1s", "2m", "8h", "1h30m"'


def parse_duration(text: object) -> float:
    """Return seconds; raise ValueError with a technician-readable message."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration string; valid: {VALID}")
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration; valid: {VALID}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"{text!r} is not a duration; valid: {VALID}")
    return total
