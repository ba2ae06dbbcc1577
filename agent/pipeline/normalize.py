"""Normalization: driver samples become readings in engineering units with quality.

Report by exception: a numeric point with a deadband is reported only when it moved by at
least the deadband or its quality changed; every `integrity_interval` all points are
reported anyway, so the platform always holds a recent value of each.

A point under a declared stop (`hazgate declare`, agent/pipeline/declarations.py) reads on: its
good readings become `uncertain`, reason `declared_stop`, so no check acts on them and the
platform sees why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection

from agent.model import BAD, GOOD, UNCERTAIN, Point, Reading, Sample


def engineering(point: Point, raw: float | int | bool) -> float | bool | None:
    """Scaled value; NaN and infinities (a float register holding garbage) become None."""
    value = point.to_engineering(raw)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# how a point's raw value becomes its engineering value, decided once per point (`_conversion`)
AS_IS, LINEAR, OTHER = 0, 1, 2


def _conversion(p: Point) -> int:
    if p.type == "bool" or (p.raw_min is not None and p.raw_max is not None):
        return OTHER
    return AS_IS if p.scale == 1.0 and p.offset == 0.0 else LINEAR


class Normalizer:
    def __init__(self, integrity_interval: float, declared: Collection[str] = frozenset()):
        self.integrity_interval = integrity_interval
        self.declared = declared  # tags under a declared stop now (the check stage keeps it current)
        # last reported (value, quality, reason), kept only for points with a deadband: the
        # others are reported on every poll
        self._last: dict[str, tuple[float | bool | None, str, str | None]] = {}
        self._conv: dict[str, int] = {}  # tag -> AS_IS, LINEAR or OTHER
        self._next_integrity = 0.0

    def process(self, samples: list[Sample], ts_ms: int, clock_ok: bool = True) -> tuple[list[Reading], list[Reading]]:
        """Return (all readings of this poll, the ones to report).

        With `clock_ok` false (the system clock is not synchronized) good readings become
        `uncertain`, reason `clock_unsynchronized`: they flow on, flagged.
        """
        now = time.monotonic()
        full = now >= self._next_integrity
        if full:
            self._next_integrity = now + self.integrity_interval
        every: list[Reading] = []
        report: list[Reading] = []
        keep, send, last, stopped, conv = every.append, report.append, self._last, self.declared, self._conv
        for s in samples:
            p, raw, quality, reason = s.point, s.raw, s.quality, s.reason
            if raw is None or quality == BAD:
                value = None
            else:
                how = conv.get(p.tag)
                if how is None:
                    how = conv[p.tag] = _conversion(p)
                value = raw if how == AS_IS else raw * p.scale + p.offset if how == LINEAR else p.to_engineering(raw)
                if value - value:  # NaN or an infinity (a float register holding garbage); 0 for any other
                    value, quality, reason = None, BAD, "decode error: not a finite number"
            if quality == GOOD and not clock_ok:
                quality, reason = UNCERTAIN, "clock_unsynchronized"
            if stopped and quality == GOOD and p.tag in stopped:
                quality, reason = UNCERTAIN, "declared_stop"
            r = Reading(p, int(s.ts * 1000) if s.ts else ts_ms, value, quality, reason)
            keep(r)
            if p.deadband <= 0:
                send(r)
                continue
            prev = last.get(p.tag)
            if (
                full or prev is None or quality == BAD
                or prev[1] != quality or prev[2] != reason
                or value is None or prev[0] is None
                or abs(value - prev[0]) >= p.deadband  # type: ignore[operator]
            ):
                last[p.tag] = (value, quality, reason)
                send(r)
        return every, report
