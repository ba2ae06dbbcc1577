"""Declarations in the checks: each new one is a `declaration` event; a detector under a
declared stop raises no detector fault (those active end with the stop); a bypass of an
interlock under a declared stop is declared (a warning), any other bypass undeclared (critical);
a stop past its `until` without a restore is escalated once (`expired`, an alarm)."""

from __future__ import annotations

from agent.common.timefmt import rfc3339
from agent.pipeline.declarations import Declaration


class DeclarationChecks:
    """Mixed into Checker, whose state (`ops`, `_emit`, detectors, interlocks) these methods use."""

    def declare(self, rows: list[Declaration], active: dict[str, Declaration]) -> list[int]:
        """The ledger as it is now: announce the rows not yet announced, apply the stops in force.
        Returns the ids announced (to be marked once the events are stored)."""
        announced = []
        for d in rows:
            if not d.announced and d.id not in self.announced:
                self._emit_declaration(d, d.state, "info", d.at_ms)
                announced.append(d.id)
        self.announced.update(announced)
        before, self.declared = self.declared, active
        now = self.wall()
        for subject in self.expired - active.keys():
            self.ops[f"declaration:{subject}:expired"] = None
            self.expired.discard(subject)
        for subject in before.keys() - active.keys():
            if (det := self.detectors.get(subject)) is not None:
                det.anchor_ts = 0  # a flat line is timed afresh from the restore
        for subject in active.keys() - before.keys():
            if (det := self.detectors.get(subject)) is not None:
                for cause in list(det.active):
                    self._condition(det, cause, False, now, {"declared_stop": True})
        for il in self.interlocks.values():
            if il.bypass and il.declared != (il.id in active):
                self._il_declared(il, now)
        return announced

    def _declarations_due(self) -> None:
        """Escalate each stop past its `until` once (a restart remembers it)."""
        now = self.wall()
        for subject, d in self.declared.items():
            if d.until_ms is not None and now >= d.until_ms and subject not in self.expired:
                self.expired.add(subject)
                self._emit_declaration(d, "expired", "alarm", d.until_ms)
                key = f"declaration:{subject}:expired"
                self.ops[key] = (key, "declaration", subject, d.until_ms, {"id": d.id})

    def _emit_declaration(self, d: Declaration, state: str, severity: str, ts: int) -> None:
        target = "interlock" if d.subject in self.interlocks else "tag"
        body = {target: d.subject, "subject": d.subject, "reason": d.reason, "by": d.by,
                "since": rfc3339(d.since_ms), "until": rfc3339(d.until_ms) if d.until_ms else None,
                "note": d.note, "declaration": d.id}
        self._emit(ts, "declaration", severity, state, d.subject, body)
