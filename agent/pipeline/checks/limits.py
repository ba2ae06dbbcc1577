"""Process and gas alarm limits: LL/L/H/HH with on-delay and clearing deadband."""

from __future__ import annotations

from agent.common.timefmt import rfc3339
from agent.model import Point
from agent.pipeline.checks.rules import Rules
from agent.pipeline.checks.watched import Watched

LEVELS = {-2: "ll", -1: "l", 1: "h", 2: "hh"}
LEVEL_NUM = {v: k for k, v in LEVELS.items()}
DEFAULT_DEADBAND_SHARE = 0.005  # alarm deadband without a configured one: 0.5 % of the range
INF, NEG_INF = float("inf"), float("-inf")  # one object each, shared by every alarm's quiet band


class LimitAlarm:
    __slots__ = ("w", "kind", "gas", "ll", "l", "h", "hh", "db", "on_delay", "level", "start",
                 "pend", "pend_mono", "pend_ts", "quiet_lo", "quiet_hi")

    def __init__(self, w: Watched, kind: str, gas: str | None, db: float, on_delay: float):
        p = w.point
        self.w, self.kind, self.gas, self.db, self.on_delay = w, kind, gas, db, on_delay
        self.ll, self.l, self.h, self.hh = p.ll, p.l, p.h, p.hh
        # strictly between these, an alarm at level 0 stays there (`target` is 0): the checker's
        # fast path for the usual reading
        self.quiet_lo = max(NEG_INF if x is None else x for x in (p.ll, p.l))
        self.quiet_hi = min(INF if x is None else x for x in (p.h, p.hh))
        self.level = 0
        self.start = 0
        self.pend = 0
        self.pend_mono = 0.0
        self.pend_ts = 0

    def target(self, v: float) -> int:
        cur, db = self.level, self.db
        hh, h, lo, ll = self.hh, self.h, self.l, self.ll
        if hh is not None and (v >= hh or (cur == 2 and v > hh - db)):
            return 2
        if h is not None and (v >= h or (cur >= 1 and v > h - db)):
            return 1
        if ll is not None and (v <= ll or (cur == -2 and v < ll + db)):
            return -2
        if lo is not None and (v <= lo or (cur <= -1 and v < lo + db)):
            return -1
        return 0

    def limit(self, level: int) -> float | None:
        return (self.ll, self.l, None, self.h, self.hh)[level + 2]


def alarm_deadband(p: Point, rules: Rules) -> float:
    s = rules.alarms.get(p.tag)
    if s is not None and s.deadband is not None:
        return s.deadband
    if p.deadband > 0:
        return p.deadband
    if p.eng_min is not None and p.eng_max is not None:
        return DEFAULT_DEADBAND_SHARE * (p.eng_max - p.eng_min)
    return 0.0


class LimitChecks:
    """Mixed into Checker, whose state (`ops`, `_emit`, ...) these methods use."""

    def _limit(self, a: LimitAlarm, v: float, ts: int, now: float) -> None:
        cur = a.level
        tgt = a.target(v)
        if tgt == cur:
            a.pend = 0
            return
        if cur != 0 and (tgt == 0 or (tgt > 0) != (cur > 0) or abs(tgt) < abs(cur)):
            # less severe (or the other side): immediately
            if tgt == 0 or (tgt > 0) != (cur > 0):
                self._alarm_event(a, "cleared", cur, v, ts)
                a.level = cur = 0
                if tgt == 0:
                    a.pend = 0
                    return
            else:
                self._alarm_event(a, "deescalated", tgt, v, ts, cur)
                a.level = tgt
                a.pend = 0
                return
        # more severe: raised or escalated, after the on-delay
        if a.on_delay > 0:
            if a.pend == 0 or (a.pend > 0) != (tgt > 0):
                a.pend, a.pend_mono, a.pend_ts = tgt, now, ts
                return
            a.pend = tgt
            if now - a.pend_mono < a.on_delay:
                return
        since = a.pend_ts if a.on_delay > 0 else ts
        a.pend = 0
        if cur == 0:
            a.start = since
            a.level = tgt
            self._alarm_event(a, "raised", tgt, v, ts)
        else:
            a.level = tgt
            self._alarm_event(a, "escalated", tgt, v, ts, cur)

    def _alarm_event(self, a: LimitAlarm, state: str, level: int, v: float, ts: int, before: int = 0) -> None:
        name = LEVELS[level]
        if state == "cleared":
            severity = "info"
        elif a.kind == "gas_alarm":
            severity = "critical" if abs(level) == 2 else "alarm"
        else:
            severity = "alarm" if abs(level) == 2 else "warning"
        fields = self._point_fields(a.w)
        fields.update(level=name, value=v, limit=a.limit(level), start=rfc3339(a.start))
        if a.kind == "gas_alarm":
            fields["gas"] = a.gas
            if a.gas != "oxygen" and level > 0:
                fields["alarm_level"] = level  # 一级 / 二级报警
        if before:
            fields["from_level"] = LEVELS[before]
        if state == "cleared":
            fields["duration_s"] = round(max(0, ts - a.start) / 1000, 3)
        self._emit(ts, a.kind, severity, state, a.w.tag, fields)
        key = f"alarm:{a.w.tag}"
        if state == "cleared":
            self.ops[key] = None
        else:
            self.ops[key] = (key, a.kind, a.w.tag, a.start, {"level": name, "value": v, "limit": a.limit(level)})
