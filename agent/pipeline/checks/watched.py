"""The latest reading of each point some check looks at, and what all checks share."""

from __future__ import annotations

from typing import Any

from agent.model import Point

# `uncertain` readings whose value is sound: only their time stamp is in doubt (the gateway's
# clock is not synchronized). Checks act on them; on any other uncertain or bad reading they don't.
USABLE_UNCERTAIN = frozenset({"clock_unsynchronized"})
Op = tuple[str, str, str, int, dict] | None  # an upsert into `active`, or None: delete


class Watched:
    """The latest reading of a point some check looks at."""

    __slots__ = ("point", "tag", "value", "good", "ts", "seen", "reason", "alarm", "detectors",
                 "fault_of", "interlocks", "linked", "mv", "band", "numeric")

    def __init__(self, point: Point):
        self.point, self.tag = point, point.tag
        self.value: Any = None
        self.good = False
        self.seen = False
        self.ts = 0
        self.reason: str | None = None
        self.alarm: Any = None  # limits.LimitAlarm of this point, if it has limits
        # tuples, empty for most points: they are set up once, and 10 000 empty lists cost 1.6 MB
        self.detectors: tuple[Any, ...] = ()  # detectors.Detector: this point is a gas detector
        self.fault_of: tuple[Any, ...] = ()  # the detectors whose fault output this point is
        self.interlocks: tuple[Any, ...] = ()  # interlocks.InterlockState this point belongs to
        self.linked = False  # any of the three above is set (Checker.__init__ says, once they are)
        self.mv: float | None = None  # value at the last movement (flat-line tracking)
        self.band = 0.0
        self.numeric = point.type != "bool"
