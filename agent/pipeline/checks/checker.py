"""Checks at the edge: process alarms, gas alarms, detector health and interlock state, on every
poll of every point, raising events at once (they are stored and published ahead of readings).

What is checked (event kinds are documented in docs/uplink.md, section 6):
- `process_alarm`: LL/L/H/HH from the point table, cleared with a deadband, raised after an
  optional on-delay, so a value hovering at a limit raises one alarm, not a storm.
- `gas_alarm`: gas detectors (kind gas_lel / gas_ppm): level 1 (`h`) and level 2 (`hh`);
  oxygen low (`l`) and high (`h`).
- `detector_fault`: a gas detector that cannot alarm: its fault point is on, it reads outside
  -5 %..105 % of its range, it has flat-lined while other points move, or it gives no good data.
- `declaration` (stopped / restored / expired): `hazgate declare`'s word, see declared.py.
- `interlock_bypass` (on / off / overdue, declared / undeclared), `interlock_out_of_service`, `interlock_trip`
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

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.common.timefmt import now_ms, rfc3339
from agent.model import Point, Reading
from agent.pipeline.checks.declared import DeclarationChecks
from agent.pipeline.checks.detectors import Detector, DetectorChecks
from agent.pipeline.checks.interlocks import InterlockChecks, InterlockState
from agent.pipeline.checks.limits import LEVEL_NUM, LimitAlarm, LimitChecks, alarm_deadband
from agent.pipeline.checks.rules import Rules, fault_points, gas_class
from agent.pipeline.checks.watched import USABLE_UNCERTAIN, Op, Watched
from agent.pipeline.declarations import Declaration

log = logging.getLogger("hazgate.checks")

HELD_MAX = 50_000  # events kept in memory while the store refuses writes
# an event's log level follows its severity, so the journal's priority does (`<2>` crit for a
# critical event: `journalctl -p warning` shows warnings, alarms and critical events)
LOG_LEVELS = {"critical": logging.CRITICAL, "alarm": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


class Checker(LimitChecks, DetectorChecks, InterlockChecks, DeclarationChecks):
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
        same: dict[float, float] = {}  # one object per distinct deadband (10 000 points share a few)

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
            db = alarm_deadband(p, rules)
            deadbands[p.tag] = db = same.setdefault(db, db)
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
        for w in self.watched.values():
            w.linked = bool(w.detectors or w.fault_of or w.interlocks)
        self.events: list[tuple[int, dict]] = []
        self.ops: dict[str, Op] = {}
        self.declared: dict[str, Declaration] = {}  # subject -> its stop in force (`declare`)
        self.expired: set[str] = set()  # subjects whose stop passed its `until` (escalated once)
        self.announced: set[int] = set()  # declaration ids raised by this checker
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
                    il.declared = bool(data.get("declared", False))
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
            elif part[0] == "declaration" and len(part) == 3:
                self.expired.add(subject)  # `declare` drops it when the stop is no longer in force
                ok = True
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
        log.log(LOG_LEVELS.get(severity, logging.INFO), "event",
                extra={"fields": {"kind": kind, "state": state, "subject": subject, "severity": severity}})
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
            a = w.alarm
            if a is not None and good:
                if a.level == 0 and a.quiet_lo < v < a.quiet_hi:  # type: ignore[operator]
                    a.pend = 0  # what _limit does when the level stays
                else:
                    self._limit(a, v, r.ts_ms, now)  # type: ignore[arg-type]
            if not w.linked:
                continue
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
        if self.declared:
            self._declarations_due()
        return bool(self.events or self.ops)
