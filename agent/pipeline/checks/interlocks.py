"""Interlock state: unknown, bypassed (and overdue), out of service, tripped or spurious, and a
protected value beyond its limit while unprotected."""

from __future__ import annotations

from agent.common.timefmt import rfc3339
from agent.pipeline.checks.rules import Interlock
from agent.pipeline.checks.watched import Watched


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
                 "bypass", "bypass_mono", "bypass_tag", "overdue", "declared", "oos", "trip", "trip_state",
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
        self.declared = False  # the bypass is covered by a declared stop of the interlock
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


class InterlockChecks:
    """Mixed into Checker, whose state (`ops`, `_emit`, ...) these methods use."""

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
        self._il_unknown(il)
        self._il_bypass(il, now)
        self._il_service(il)
        self._il_trip(il, now)
        self._il_excursions(il)

    def _il_unknown(self, il: InterlockState) -> None:
        """Unknown: a state or process point without good data."""
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

    def _il_bypass(self, il: InterlockState, now: float) -> None:
        """Bypass or override on and off, and escalated once older than bypass_max."""
        rule = il.rule
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
                il.declared = il.id in self.declared
                self._il_event(il, on_w.ts, "interlock_bypass", "warning" if il.declared else "critical", "on",
                               "bypass", {"tag": on_w.tag, "value": True, "bypass_max_s": rule.bypass_max,
                                          **self._il_declaration(il)},
                               on_w.ts, {"tag": on_w.tag, "overdue": 0, "declared": il.declared})
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
                               il.bypass, {"tag": il.bypass_tag, "overdue": il.overdue, "declared": il.declared})

    def _il_declaration(self, il: InterlockState) -> dict:
        """A bypass event's `declared` and, when declared, who declared it, why and until when."""
        d = self.declared.get(il.id)
        if d is None:
            return {"declared": False}
        return {"declared": True, "declaration": d.id, "by": d.by, "reason": d.reason,
                "until": rfc3339(d.until_ms) if d.until_ms else None}

    def _il_declared(self, il: InterlockState, ts: int) -> None:
        """A declared stop began or ended while the interlock is bypassed: the bypass is declared
        now (a warning), or undeclared (critical)."""
        il.declared = il.id in self.declared
        self._il_event(il, ts, "interlock_bypass", "warning" if il.declared else "critical",
                       "declared" if il.declared else "undeclared", "bypass",
                       {"tag": il.bypass_tag, "value": True, **self._il_declaration(il)}, il.bypass,
                       {"tag": il.bypass_tag, "overdue": il.overdue, "declared": il.declared})

    def _il_service(self, il: InterlockState) -> None:
        """Out of service (the in_service point says false)."""
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

    def _il_trip(self, il: InterlockState, now: float) -> None:
        """A trip is genuine when a protected value is (or was, within trip_window) beyond its limit."""
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

    def _il_excursions(self, il: InterlockState) -> None:
        """A protected value beyond its trip limit while bypassed or out of service: critical."""
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
