"""A templated body's reading records as JSON bytes, each point's unchanging part serialised once.

A record template's entries either use a reading variable (READING_ORDER: they change from one
reading of a point to the next) or only the point's and the gateway's (they do not). Per point,
the entries of the second kind are serialised once into literals; per reading, only the JSON of
the entries of the first kind is spliced in between. The bytes are those orjson.dumps gives for
the record rendered from all the variables. Only a few bytes are kept per point: the literals
that do not name the point are shared, and the point's variables are kept only for a template
whose reading entries use them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from agent.north.template import Template

# the record variables that change from one reading of a point to the next, in the order a
# reading is handed to `RecordWriter.write`
READING_ORDER = ("value", "unit", "quality", "reason", "ts", "ts_ms", "backfill")
READING_VARIABLES = frozenset(READING_ORDER)

Point = tuple  # a point's literals (one more than the reading entries), then its variables or None
_Write = Callable[[Point, tuple], bytes]


def _spliced(at: list[int]) -> _Write | None:
    """The point's literals joined with the JSON of the reading's values at `at`, for up to
    four values; None beyond."""
    join, dumps = b"".join, orjson.dumps
    if len(at) == 0:
        return lambda p, _r: p[0]
    if len(at) == 1:
        (a,) = at
        return lambda p, r: join((p[0], dumps(r[a]), p[1]))
    if len(at) == 2:
        a, b = at
        return lambda p, r: join((p[0], dumps(r[a]), p[1], dumps(r[b]), p[2]))
    if len(at) == 3:
        a, b, c = at
        return lambda p, r: join((p[0], dumps(r[a]), p[1], dumps(r[b]), p[2], dumps(r[c]), p[3]))
    if len(at) == 4:
        a, b, c, d = at
        return lambda p, r: join((p[0], dumps(r[a]), p[1], dumps(r[b]), p[2], dumps(r[c]), p[3], dumps(r[d]), p[4]))
    return None


class RecordWriter:
    """`point(fixed)` once per point (its variables: tag, name, ... gateway, enterprise), then
    `write(point, reading)` per reading (the READING_ORDER values) gives the record's bytes."""

    def __init__(self, record: Template):
        self.record = record
        reading = [e for e in record.entries if e.used & READING_VARIABLES]
        self._renders = [(e.render, not e.used <= READING_VARIABLES) for e in reading]  # True: needs the point's too
        self._mixed = any(mixed for _render, mixed in self._renders)
        at = [READING_ORDER.index(e.whole) for e in reading if e.whole in READING_VARIABLES]
        spliced = _spliced(at) if len(at) == len(reading) else None
        self.write: _Write = spliced or self._rendered
        self._shared: dict[bytes, bytes] = {}

    def point(self, fixed: dict[str, Any]) -> Point:
        literals: list[bytes] = []
        done = [b"{"]
        for i, entry in enumerate(self.record.entries):
            head = (b"," if i else b"") + orjson.dumps(entry.key) + b":"
            if entry.used & READING_VARIABLES:
                literals.append(b"".join([*done, head]))
                done = []
            else:
                done.append(head + orjson.dumps(entry.render(fixed)))
        literals.append(b"".join([*done, b"}"]))
        shared = self._shared  # the first literal names the point (its tag); the others rarely do
        return (literals[0], *(shared.setdefault(lit, lit) for lit in literals[1:]), fixed if self._mixed else None)

    def _rendered(self, point: Point, reading: tuple) -> bytes:
        """The general case: each reading entry rendered, then serialised."""
        values = dict(zip(READING_ORDER, reading, strict=True))
        fixed = point[-1]
        parts = [point[0]]
        for literal, (render, mixed) in zip(point[1:-1], self._renders, strict=True):
            parts.append(orjson.dumps(render({**fixed, **values} if mixed else values)))
            parts.append(literal)
        return b"".join(parts)
