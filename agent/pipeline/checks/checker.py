"""Checks at the edge: process alarms, gas alarms, detector health and interlock state, on every
poll of every point, raising events at once (they are stored and published ahead of readings).

What is checked (event kinds are documented in docs/uplink.md, section 6):
- `process_alarm`: LL/L/H/HH from the point table, cleared with a deadband, raised after an
  optional on-delay, so a value hovering at a limit raises one alarm, not a storm.
- `gas_alarm`: gas detectors (kind gas_lel / gas_ppm): level 1 (`h`) and level 2 (`hh`);
  oxygen low (`l`) and high (`h`).
- `detector_fault`: a gas detector that cannot alarm: its fault point is on, it reads outside
  -5 %..105 % of its range, it has flat-lined while other points move, or it gives no good data.
- `interlock_bypass` (on / off / overdue), `interlock_out_of_service`, `interlock_trip`
  (tripped / spurious / reset), `unprotected_excursion` (a protected value beyond its trip limit
  while the interlock is bypassed or out of service: critical) and `interlock_unknown` (a state or
  process point of the interlock gives no good data).

Only good readings change a condition: a point that goes bad (or uncertain for any reason but an
unsynchronized gateway clock) freezes what it showed (an alarm never clears on stale data) and
makes its interlock `unknown`. Timers (on-delays, flat-line
windows, bypass ages) run on the monotonic clock; start times are wall-clock ms for reporting.
Active conditions persist in the store (`active` table), written in the same transaction as the
events that start or end them, so a restart neither forgets nor re-announces them.

Cost per poll: one dict lookup per reading, and work only for points that have limits, are gas
detectors or belong to an interlock; nothing is allocated unless a condition changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from agent.common.timefmt import now_ms, rfc3339
from agent.model import Point, Reading
from agent.pipeline.checks.rules import Interlock, Rules, fault_points, gas_class

log = logging.getLogger("hazgate.checks")

LEVELS = {-2: "ll", -1: "l", 1: "h", 2: "hh"}
LEVEL_NUM = {v: k for k, v in LEVELS.items()}
RANGE_MARGIN = 0.05  # a detector reading beyond -5 % / 105 % of its range is out of service
RANGE_HYSTERESIS = 0.005  # back inside by 0.5 % of the range before that clears
DEFAULT_DEADBAND_SHARE = 0.005  # alarm deadband without a configured one: 0.5 % of the range
STORE_WAIT = 10.0  # seconds to wait for the store before checking without the saved state
STORE_RETRY = 1.0
HELD_MAX = 50_000  # events kept in memory while the store refuses writes
# `uncertain` readings whose value is sound: only their time stamp is in doubt (the gateway's
# clock is not synchronized). Checks act on them; on any other uncertain or bad reading they don't.
USABLE_UNCERTAIN = frozenset({"clock_unsynchronized"})

Op = tuple[str, str, str, int, dict] | None  # an upsert into `active`, or None: delete


class Watched:
    """The latest reading of a point some check looks at."""

    __slots__ = ("point", "tag", "value", "good", "ts", "seen", "reason", "alarm", "detectors",
                 "fault_of", "interlocks", "mv", "band", "numeric")

    def __init__(self, point: Point):
        self.point, self.tag = point, point.tag
        self.value: Any = None
        self.good = False
        self.seen = False
        self.ts = 0
        self.reason: str | None = None
        self.alarm: LimitAlarm | None = None
        # tuples, empty for most points: they are set up once, and 10 000 empty lists cost 1.6 MB
        self.detectors: tuple[Detector, ...] = ()  # this point is a gas detector
        self.fault_of: tuple[Detector, ...] = ()  # this point is the fault output of these detectors
        self.interlocks: tuple[InterlockState, ...] = ()
        self.mv: float | None = None  # value at the last movement (flat-line tracking)
        self.band = 0.0
        self.numeric = point.type != "bool"


class LimitAlarm:
    __slots__ = ("w", "kind", "gas", "ll", "l", "h", "hh", "db", "on_delay", "level", "start",
                 "pend", "pend_mono", "pend_ts")

    def __init__(self, w: Watched, kind: str, gas: str | None, db: float, on_delay: float):
        p = w.point
        self.w, self.kind, self.gas, self.db, self.on_delay = w, kind, gas, db, on_delay
        self.ll, self.l, self.h, self.hh = p.ll, p.l, p.h, p.hh
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


class Detector:
    __slots__ = ("w", "gas", "lo", "hi", "hyst", "window", "band", "anchor", "anchor_mono", "anchor_ts", "active")

    def __init__(self, w: Watched, gas: str, window: float, band: float):
        p = w.point
        self.w, self.gas, self.window, self.band = w, gas, window, band
        self.lo = self.hi = None
        self.hyst = 0.0
        if p.eng_min is not None and p.eng_max is not None:
            span = p.eng_max - p.eng_min
            self.lo, self.hi = p.eng_min - RANGE_MARGIN * span, p.eng_max + RANGE_MARGIN * span
            self.hyst = RANGE_HYSTERESIS * span
        self.anchor = 0.0
        self.anchor_mono = 0.0
        self.anchor_ts = 0
        self.active: dict[str, int] = {}  # cause -> start ms


class ProtectState:
    __slots__ = ("w", "above", "below", "limit", "db", "beyond_mono", "excursion", "because")

    def __init__(self, w: Watched, above: float | None, below: float | None, db: float):
        self.w, self.above, self.below, self.db = w, above, below, db
        self.limit = above if above is not None else below
        self.beyond_mono: float | None = None
        self.excursion = 0  # start ms while an unprotected excursion is active
        self.because: list[str] = []

    def beyond(self, v: float, active: bool) -> bool:
        db = self.db if active else 0.0
        if self.above is not None:
            return v >= self.above - db if not active else v > self.above - db
        return v <= self.below + db if not active else v < self.below + db  # type: ignore[operator]


class InterlockState:
    __slots__ = ("rule", "id", "bypass_w", "in_service_w", "tripped_w", "protects", "all_w", "stamp",
                 "bypass", "bypass_mono", "bypass_tag", "overdue", "oos", "trip", "trip_state",
                 "unknown", "unknown_tags", "trip_window", "base")

    def __init__(self, rule: Interlock, watched: dict[str, Watched], deadbands: dict[str, float], trip_window: float):
        self.rule, self.id = rule, rule.id
        self.bypass_w = [watched[t] for t in rule.bypass]
        self.in_service_w = watched[rule.in_service] if rule.in_service else None
        self.tripped_w = watched[rule.tripped] if rule.tripped else None
        self.protects = [ProtectState(watched[p.tag], p.above, p.below, deadbands.get(p.tag, 0.0))
                         for p in rule.protects]
        self.all_w = list(dict.fromkeys([*self.bypass_w, *(w for w in (self.in_service_w, self.tripped_w) if w),
                                         *(p.w for p in self.protects)]))
        self.stamp = -1
        self.bypass = 0  # start ms while bypassed
        self.bypass_mono = 0.0
        self.bypass_tag = ""
        self.overdue = 0
        self.oos = 0  # start ms while out of service
        self.trip = 0  # start ms while tripped
        self.trip_state = ""
        self.unknown = 0  # start ms while unknown
        self.unknown_tags: list[str] = []
        self.trip_window = trip_window
        base = {"interlock": rule.id, "name": rule.name}
        if rule.hazard_source:
            base["hazard_source"] = rule.hazard_source
        self.base = base


def _alarm_deadband(p: Point, rules: Rules) -> float:
    s = rules.alarms.get(p.tag)
    if s is not None and s.deadband is not None:
        return s.deadband
    if p.deadband > 0:
        return p.deadband
    if p.eng_min is not None and p.eng_max is not None:
        return DEFAULT_DEADBAND_SHARE * (p.eng_max - p.eng_min)
    return 0.0


class Checker:
    """Synchronous, in-memory checks; `process` is called with every poll's readings."""

    def __init__(self, rules: Rules, points: list[Point], active: list[tuple[str, str, str, int, dict]] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = now_ms):
        self.clock, self.wall = clock, wall
        self.rules = rules
        d = rules.defaults
        by_tag = {p.tag: p for p in points}
        self.watched: dict[str, Watched] = {}
        self.alarms: dict[str, LimitAlarm] = {}
        self.detectors: dict[str, Detector] = {}
        self.interlocks: dict[str, InterlockState] = {}
        deadbands: dict[str, float] = {}

        def watch(p: Point) -> Watched:
            w = self.watched.get(p.tag)
            if w is None:
                w = self.watched[p.tag] = Watched(p)
            return w

        faults = fault_points(points, rules)
        for p in points:
            if p.type == "bool":
                continue
            gas = gas_class(p, rules)
            deadbands[p.tag] = db = _alarm_deadband(p, rules)
            if gas is not None:
                w = watch(p)
                s = rules.detectors.get(p.tag)
                window = s.flatline if s is not None and s.flatline is not None else d.flatline
                band = s.flatline_band if s is not None and s.flatline_band is not None else d.flatline_band
                det = Detector(w, gas, window, band)
                w.detectors += (det,)
                w.band = band
                self.detectors[p.tag] = det
                if (ft := faults.get(p.tag)) in by_tag:
                    watch(by_tag[ft]).fault_of += (det,)
            if any(v is not None for v in (p.ll, p.l, p.h, p.hh)):
                w = watch(p)
                s = rules.alarms.get(p.tag)
                on_delay = s.on_delay if s is not None and s.on_delay is not None else d.on_delay
                w.alarm = self.alarms[p.tag] = LimitAlarm(w, "gas_alarm" if gas else "process_alarm", gas, db, on_delay)
        for rule in rules.interlocks:
            for t in rule.tags():
                watch(by_tag[t])
            il = InterlockState(rule, self.watched, deadbands, d.trip_window)
            self.interlocks[rule.id] = il
            for w in il.all_w:
                w.interlocks += (il,)
        self.events: list[tuple[int, dict]] = []
        self.ops: dict[str, Op] = {}
        self._poll = 0
        # the two most recent movements by different points: (mono, tag)
        self._m1_t, self._m1_tag, self._m2_t = float("-inf"), "", float("-inf")
        self._restore(active or [])

    # --- restart -----------------------------------------------------------------------
    def _restore(self, rows: list[tuple[str, str, str, int, dict]]) -> None:
        now, wall = self.clock(), self.wall()
        for key, _kind, subject, start, data in rows:
            part = key.split(":")
            ok = False
            if part[0] == "alarm" and (a := self.alarms.get(subject)) is not None:
                level = LEVEL_NUM.get(data.get("level", ""), 0)
                if level and a.limit(level) is not None:
                    a.level, a.start, ok = level, start, True
            elif part[0] == "detector" and (det := self.detectors.get(subject)) is not None and len(part) == 3:
                det.active[part[2]] = start
                ok = True
            elif part[0] == "interlock" and (il := self.interlocks.get(subject)) is not None and len(part) >= 3:
                what = part[2]
                ok = True
                if what == "bypass":
                    il.bypass, il.overdue = start, int(data.get("overdue", 0))
                    il.bypass_tag = data.get("tag", "")
                    il.bypass_mono = now - max(0, wall - start) / 1000.0  # the age counts from the real start
                elif what == "out_of_service":
                    il.oos = start
                elif what == "trip":
                    il.trip, il.trip_state = start, data.get("state", "tripped")
                elif what == "unknown":
                    il.unknown, il.unknown_tags = start, list(data.get("tags", []))
                elif what == "excursion" and len(part) == 4:
                    ps = next((p for p in il.protects if p.w.tag == part[3]), None)
                    if ps is not None:
                        ps.excursion, ps.because = start, list(data.get("because", []))
                    ok = ps is not None
                else:
                    ok = False
            if not ok:  # the rules or point tables changed: the condition is no longer watched
                log.warning("dropping a saved active condition that no longer applies",
                            extra={"fields": {"key": key, "since": rfc3339(start)}})
                self.ops[key] = None
        if rows:
            log.info("active conditions restored", extra={"fields": {"count": len(rows)}})

    # --- output --------------------------------------------------------------------------
    def take(self) -> tuple[list[tuple[int, dict]], list[tuple[str, str, str, int, dict]], list[str]]:
        """What to store: (events, upserts, deletes); clears it here."""
        events, ops = self.events, self.ops
        self.events, self.ops = [], {}
        return events, [v for v in ops.values() if v is not None], [k for k, v in ops.items() if v is None]

    def put_back(self, events: list, upserts: list, deletes: list) -> None:
        """A store write failed: keep it, ahead of anything raised since."""
        ops: dict[str, Op] = {u[0]: u for u in upserts}
        ops.update((k, None) for k in deletes)
        ops.update(self.ops)
        self.events, self.ops = events + self.events, ops
        overflow = len(self.events) - HELD_MAX
        if overflow > 0:
            del self.events[:overflow]
            log.error("store unavailable: dropped the oldest held events", extra={"fields": {"dropped": overflow}})

    @property
    def pending(self) -> bool:
        return bool(self.events or self.ops)

    def _emit(self, ts: int, kind: str, severity: str, state: str, subject: str, fields: dict) -> dict:
        body = {"id": f"{kind}:{subject}:{state}:{ts}", "kind": kind, "severity": severity, "state": state,
                "ts": rfc3339(ts), **fields}
        self.events.append((ts, body))
        log.info("event", extra={"fields": {"kind": kind, "state": state, "subject": subject, "severity": severity}})
        return body

    def _point_fields(self, w: Watched) -> dict:
        p = w.point
        out: dict[str, Any] = {"tag": p.tag}
        if p.unit:
            out["unit"] = p.unit
        if p.hazard_source:
            out["hazard_source"] = p.hazard_source
        if p.equipment:
            out["equipment"] = p.equipment
        return out

    # --- the poll --------------------------------------------------------------------------
    def process(self, every: list[Reading]) -> bool:
        """Check one poll's readings; True when events or state changes wait in `take()`."""
        watched = self.watched
        now = -1.0
        touched: list[InterlockState] | None = None
        self._poll += 1
        stamp = self._poll
        for r in every:
            w = watched.get(r.point.tag)
            if w is None:
                continue
            if now < 0:
                now = self.clock()
            v = r.value
            good = v is not None and (r.quality == "good" or (r.quality == "uncertain" and r.reason in USABLE_UNCERTAIN))
            w.seen, w.good, w.ts = True, good, r.ts_ms
            if good:
                w.value = v
                if w.numeric and (w.mv is None or abs(v - w.mv) > w.band):  # type: ignore[operator]
                    w.mv = v  # type: ignore[assignment]
                    if self._m1_tag != w.tag:
                        self._m2_t = self._m1_t
                    self._m1_t, self._m1_tag = now, w.tag
            else:
                w.reason = r.reason
            if w.alarm is not None and good:
                self._limit(w.alarm, v, r.ts_ms, now)  # type: ignore[arg-type]
            for det in w.detectors:
                self._detector(det, good, v, r.ts_ms, now)
            if good:
                for det in w.fault_of:
                    self._condition(det, "fault", bool(v), r.ts_ms, {"fault_tag": w.tag})
            for il in w.interlocks:
                if il.stamp != stamp:
                    il.stamp = stamp
                    if touched is None:
                        touched = []
                    touched.append(il)
        if touched:
            for il in touched:
                self._interlock(il, now)
        return bool(self.events or self.ops)

    # --- process and gas limits ------------------------------------------------------------
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

    # --- gas detector health -------------------------------------------------------------------
    def _detector(self, det: Detector, good: bool, v: Any, ts: int, now: float) -> None:
        active = det.active
        if not good:
            self._condition(det, "no_data", True, ts, {"reason": det.w.reason or "bad quality"})
            return
        if active:
            self._condition(det, "no_data", False, ts, {})
        if det.lo is not None:
            under = v < (det.lo + det.hyst if "under_range" in active else det.lo)
            over = v > (det.hi - det.hyst if "over_range" in active else det.hi)  # type: ignore[operator]
            if under or "under_range" in active:
                self._condition(det, "under_range", under, ts, {"value": v, "limit": det.lo})
            if over or "over_range" in active:
                self._condition(det, "over_range", over, ts, {"value": v, "limit": det.hi})
        if det.window <= 0:
            return
        if det.anchor_ts == 0 or abs(v - det.anchor) > det.band:
            det.anchor, det.anchor_mono, det.anchor_ts = v, now, ts
            if "flatline" in active:
                self._condition(det, "flatline", False, ts, {"value": v})
        elif "flatline" not in active and now - det.anchor_mono >= det.window and self._others_moved(det.anchor_mono, det.w.tag):
            self._condition(det, "flatline", True, ts, {"value": v, "window_s": det.window, "band": det.band},
                            start=det.anchor_ts)

    def _others_moved(self, since: float, tag: str) -> bool:
        return self._m1_t > since if self._m1_tag != tag else self._m2_t > since

    def _condition(self, det: Detector, cause: str, on: bool, ts: int, fields: dict, start: int | None = None) -> None:
        active = det.active
        if on == (cause in active):
            return
        w = det.w
        key = f"detector:{w.tag}:{cause}"
        body = self._point_fields(w)
        body.update(cause=cause, gas=det.gas)
        body.update(fields)
        if on:
            active[cause] = start if start is not None else ts
            body["start"] = rfc3339(active[cause])
            self._emit(ts, "detector_fault", "warning" if cause == "no_data" else "alarm", "raised", f"{w.tag}/{cause}", body)
            self.ops[key] = (key, "detector_fault", w.tag, active[cause], {"cause": cause})
        else:
            began = active.pop(cause)
            body.update(start=rfc3339(began), duration_s=round(max(0, ts - began) / 1000, 3))
            self._emit(ts, "detector_fault", "info", "cleared", f"{w.tag}/{cause}", body)
            self.ops[key] = None

    # --- interlocks ------------------------------------------------------------------------
    def _il_event(self, il: InterlockState, ts: int, kind: str, severity: str, state: str, key: str,
                  fields: dict, start: int, data: dict | None = None) -> None:
        """One interlock event; `data` given: the condition is (still) active, else it ended."""
        body = dict(il.base)
        body.update(fields)
        body["start"] = rfc3339(start)
        if data is None and state not in ("on", "raised", "tripped", "spurious"):
            body["duration_s"] = round(max(0, ts - start) / 1000, 3)
        subject = f"{il.id}/{key}" if key != "bypass" else il.id
        self._emit(ts, kind, severity, state, subject, body)
        full = f"interlock:{il.id}:{key}"
        self.ops[full] = None if data is None else (full, kind, il.id, start, data)

    def _interlock(self, il: InterlockState, now: float) -> None:
        # 1. unknown: a state or process point without good data
        nbad = nseen = 0
        for w in il.all_w:
            if w.seen:
                nseen += 1
                if not w.good:
                    nbad += 1
        if nbad:
            bad = [w for w in il.all_w if w.seen and not w.good]
            if not il.unknown:
                ts = max(w.ts for w in bad)
                il.unknown, il.unknown_tags = ts, [w.tag for w in bad]
                self._il_event(il, ts, "interlock_unknown", "alarm", "raised", "unknown",
                               {"tags": il.unknown_tags, "reason": bad[0].reason or "bad quality"},
                               ts, {"tags": il.unknown_tags})
        elif il.unknown and nseen == len(il.all_w):
            ts = max(w.ts for w in il.all_w)
            self._il_event(il, ts, "interlock_unknown", "info", "cleared", "unknown",
                           {"tags": il.unknown_tags}, il.unknown)
            il.unknown, il.unknown_tags = 0, []
        rule = il.rule
        # 2. bypass / override
        bw = il.bypass_w
        known, on_w = True, None
        for w in bw:
            if not w.good:
                known = False
            elif on_w is None and w.value:
                on_w = w
        if known:
            if on_w is not None and not il.bypass:
                il.bypass, il.bypass_mono, il.overdue, il.bypass_tag = on_w.ts, now, 0, on_w.tag
                self._il_event(il, on_w.ts, "interlock_bypass", "warning", "on", "bypass",
                               {"tag": on_w.tag, "value": True, "bypass_max_s": rule.bypass_max},
                               on_w.ts, {"tag": on_w.tag, "overdue": 0})
            elif on_w is None and il.bypass:
                ts = max(w.ts for w in bw)
                self._il_event(il, ts, "interlock_bypass", "info", "off", "bypass",
                               {"tag": il.bypass_tag or bw[0].tag, "value": False}, il.bypass)
                il.bypass, il.overdue = 0, 0
        if il.bypass:
            age = now - il.bypass_mono
            if age >= rule.bypass_max + il.overdue * rule.bypass_repeat:
                il.overdue = int((age - rule.bypass_max) // rule.bypass_repeat) + 1  # no burst after a restart
                ts = max(w.ts for w in bw)
                self._il_event(il, ts, "interlock_bypass", "alarm", "overdue", "bypass",
                               {"tag": il.bypass_tag or bw[0].tag, "value": round(age, 3), "limit": rule.bypass_max,
                                "age_s": round(age, 3), "repeat": il.overdue, "bypass_repeat_s": rule.bypass_repeat},
                               il.bypass, {"tag": il.bypass_tag, "overdue": il.overdue})
        # 3. out of service
        sw = il.in_service_w
        if sw is not None and sw.good:
            oos = not sw.value
            if oos and not il.oos:
                il.oos = sw.ts
                self._il_event(il, sw.ts, "interlock_out_of_service", "alarm", "raised", "out_of_service",
                               {"tag": sw.tag, "value": bool(sw.value)}, sw.ts, {"tag": sw.tag})
            elif not oos and il.oos:
                self._il_event(il, sw.ts, "interlock_out_of_service", "info", "cleared", "out_of_service",
                               {"tag": sw.tag, "value": bool(sw.value)}, il.oos)
                il.oos = 0
        # 4. trip: genuine when a protected value is (or was, within trip_window) beyond its limit
        for ps in il.protects:
            pw = ps.w
            if pw.good and ps.beyond(pw.value, False):
                ps.beyond_mono = now
        tw = il.tripped_w
        if tw is not None and tw.good:
            tripped = bool(tw.value)
            if tripped and not il.trip:
                cause = next((ps for ps in il.protects
                              if ps.beyond_mono is not None and now - ps.beyond_mono <= il.trip_window), None)
                undecided = cause is None and any(not ps.w.good for ps in il.protects)
                state = "tripped" if cause is not None or undecided else "spurious"
                shown = cause or il.protects[0]
                fields = {"tag": tw.tag, "process_tag": shown.w.tag,
                          "value": shown.w.value if shown.w.good else None, "limit": shown.limit,
                          "protected": [{"tag": ps.w.tag, "value": ps.w.value if ps.w.good else None,
                                         "limit": ps.limit, "quality": "good" if ps.w.good else "bad"}
                                        for ps in il.protects]}
                if undecided:
                    fields["process"] = "unknown"
                il.trip, il.trip_state = tw.ts, state
                self._il_event(il, tw.ts, "interlock_trip", "alarm", state, "trip", fields, tw.ts, {"state": state})
            elif not tripped and il.trip:
                self._il_event(il, tw.ts, "interlock_trip", "info", "reset", "trip",
                               {"tag": tw.tag, "was": il.trip_state}, il.trip)
                il.trip, il.trip_state = 0, ""
        # 5. a protected value beyond its trip limit while bypassed or out of service: critical
        unprotected = bool(il.bypass or il.oos)
        for ps in il.protects:
            pw = ps.w
            if not pw.good:
                continue  # frozen: neither raised nor cleared on stale data
            beyond = ps.beyond(pw.value, bool(ps.excursion))
            if beyond and unprotected and not ps.excursion:
                because = ["bypassed"] * bool(il.bypass) + ["out_of_service"] * bool(il.oos)
                ts = max([pw.ts, *(w.ts for w in il.all_w if w.good and w is not pw and w.point.type == "bool")])
                ps.excursion, ps.because = ts, because
                fields = self._point_fields(pw)
                fields.update(value=pw.value, limit=ps.limit, because=because,
                              direction="above" if ps.above is not None else "below")
                if il.bypass:
                    fields["bypass_start"] = rfc3339(il.bypass)
                self._il_event(il, ts, "unprotected_excursion", "critical", "raised", f"excursion:{pw.tag}",
                               fields, ts, {"tag": pw.tag, "limit": ps.limit, "because": because})
            elif ps.excursion and (not beyond or not unprotected):
                ts = max(w.ts for w in il.all_w if w.good)
                fields = self._point_fields(pw)
                fields.update(value=pw.value, limit=ps.limit, because=ps.because,
                              why="value back within its trip limit" if not beyond else "interlock back in service")
                self._il_event(il, ts, "unprotected_excursion", "info", "cleared", f"excursion:{pw.tag}",
                               fields, ps.excursion)
                ps.excursion, ps.because = 0, []


class CheckStage:
    """The checks inside `hazgate run`: `feed` (from the poll sink, never waits) and a writer task
    that stores events with the active state in one transaction (an urgent store call), then
    tells the uplink (`on_events`) to publish them."""

    def __init__(self, rules: Rules, points: list[Point], store: Any, on_events: Callable[[], None]):
        self.rules, self.points, self.store, self.on_events = rules, points, store, on_events
        self.checker: Checker | None = None  # built once the saved active state is loaded
        self._ready = asyncio.Event()
        self.errors = 0

    def feed(self, every: list[Reading]) -> None:
        c = self.checker
        if c is None:
            return
        try:
            changed = c.process(every)
        except Exception:  # a bug in a check must never cost the poll its readings
            self.errors += 1
            if self.errors <= 10:
                log.exception("check failed", extra={"fields": {"errors": self.errors}})
            changed = c.pending
        if changed:
            self._ready.set()

    async def _load(self) -> list:
        try:
            await asyncio.wait_for(self.store.ready.wait(), STORE_WAIT)
            return await self.store.call("active")
        except (TimeoutError, sqlite3.Error) as exc:
            log.error("checks start without the saved active alarms and bypasses: the store is not available",
                      extra={"fields": {"error": str(exc) or type(exc).__name__}})
            return []

    async def run(self) -> None:
        self.checker = Checker(self.rules, self.points, await self._load())
        c = self.checker
        log.info("checks running", extra={"fields": {
            "alarms": len(c.alarms), "detectors": len(c.detectors), "interlocks": len(c.interlocks)}})
        if c.pending:
            self._ready.set()
        failed = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch = c.take()
            try:
                await self.store.call_urgent("record_checks", *batch)
            except sqlite3.Error as exc:
                c.put_back(*batch)
                if not failed:
                    log.error("store refuses check events; holding them in memory",
                              extra={"fields": {"error": str(exc), "hold_max": HELD_MAX}})
                failed = True
                await asyncio.sleep(STORE_RETRY)
                self._ready.set()
                continue
            failed = False
            if batch[0]:
                self.on_events()

    async def flush(self) -> None:
        """On stop: what the last polls raised goes to disk (published on the next start)."""
        c = self.checker
        if c is not None and c.pending:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("record_checks", *c.take())
