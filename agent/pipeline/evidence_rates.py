"""In-service rates from the evidence record: each interlock's and gas detector's states over a
period, and the shares `hazgate report` and the daily `inservice_daily` event give.

States, when several hold at once, count as the first of their list (INTERLOCK_ORDER,
DETECTOR_ORDER); time when the agent did not run counts as `unknown` (interlocks) or
`no_data` (detectors). Definitions in docs/operations.md, "Evidence report".
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.common.timefmt import rfc3339
from agent.model import Point
from agent.pipeline.checks.rules import Rules, gas_class
from agent.pipeline.evidence import day_text, read_intervals, read_runs

INTERLOCK_STATES = ("in_service", "bypassed_declared", "bypassed_undeclared", "out_of_service", "tripped", "unknown")
INTERLOCK_ORDER = ("unknown", "out_of_service", "bypassed_declared", "bypassed_undeclared", "tripped")
DETECTOR_STATES = ("alive", "fault", "flatline", "out_of_range", "declared_stop", "no_data")
DETECTOR_ORDER = ("declared_stop", "no_data", "fault", "out_of_range", "flatline")
DETECTOR_CAUSE = {"fault": "fault", "flatline": "flatline", "under_range": "out_of_range",
                  "over_range": "out_of_range", "no_data": "no_data", "declared_stop": "declared_stop"}
NOT_RUNNING = "not_running"  # internal: the agent was not running


def split_bypass(bypass: Span, declared: list[Span]) -> list[Span]:
    """A bypass cut by the interlock's declared stops: declared where one covers it (its detail
    then names the declaration), undeclared elsewhere."""
    out, at = [], bypass.start
    for d in sorted(declared, key=lambda d: d.start):
        lo, hi = max(d.start, at), min(d.end, bypass.end)
        if lo >= hi:
            continue
        if lo > at:
            out.append(Span("bypassed_undeclared", at, lo, bypass.detail, False))
        out.append(Span("bypassed_declared", lo, hi, {**bypass.detail, **d.detail}, bypass.open and hi == bypass.end))
        at = hi
    if at < bypass.end or not out:
        out.append(Span("bypassed_undeclared", at, bypass.end, bypass.detail, bypass.open))
    return out


@dataclass
class Span:
    state: str
    start: int
    end: int  # clipped to the period
    detail: dict = field(default_factory=dict)
    open: bool = False  # still active at the end of the record


@dataclass
class Subject:
    """One interlock or detector over the period: its recorded intervals and its timeline."""

    kind: str  # interlock | detector
    id: str
    spans: list[Span]  # as recorded (states named as the report names them), clipped to the period
    alarms: list[Span]  # a detector's gas alarm episodes
    line: list[Span]  # the period cut into pieces, one state each

    @property
    def states(self) -> tuple[str, ...]:
        return INTERLOCK_STATES if self.kind == "interlock" else DETECTOR_STATES

    def parts(self, lo: int, hi: int) -> tuple[float, float]:
        """(good seconds, counted seconds) within [lo, hi): interlocks in service over the time
        their unit ran (a tripped interlock has shut it down); detectors alive or under a
        declared stop over the whole time."""
        sec = seconds(self.line, self.states, lo, hi)
        if self.kind == "interlock":
            return sec["in_service"], sum(sec.values()) - sec["tripped"]
        return sec["alive"] + sec["declared_stop"], sum(sec.values())


def detector_points(points: list[Point], rules: Rules) -> list[Point]:
    return [p for p in points if p.type != "bool" and gas_class(p, rules) is not None]


def subjects(db: sqlite3.Connection, rules: Rules, points: list[Point], frm: int, to: int) -> list[Subject]:
    """Every interlock of the rules and every gas detector among the points, over [frm, to)."""
    running = read_runs(db, frm, to)
    recorded: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for kind, subject, state, start, end, detail in read_intervals(db, frm, to):
        recorded[(kind, subject)].append(Span(state, max(start, frm), min(end if end is not None else to, to),
                                              detail, end is None))
    out = []
    for il in rules.interlocks:
        raw = recorded.get(("interlock", il.id), [])
        declared = [s for s in raw if s.state == "declared"]
        spans = [piece for s in raw if s.state != "declared"
                 for piece in (split_bypass(s, declared) if s.state == "bypassed" else [s])]
        out.append(Subject("interlock", il.id, spans, [],
                           resolve(frm, to, spans, running, INTERLOCK_ORDER, "unknown", "in_service")))
    for p in detector_points(points, rules):
        raw = recorded.get(("detector", p.tag), [])
        faults = [Span(DETECTOR_CAUSE[s.state], s.start, s.end, s.detail, s.open) for s in raw
                  if s.state in DETECTOR_CAUSE]
        out.append(Subject("detector", p.tag, faults, [s for s in raw if s.state == "alarm"],
                           resolve(frm, to, faults, running, DETECTOR_ORDER, "no_data", "alive")))
    return out


def resolve(frm: int, to: int, spans: Iterable[Span], running: list[tuple[int, int]], order: tuple[str, ...],
            idle: str, base: str) -> list[Span]:
    """The period cut where any state starts or ends, each piece given the first state of
    `order` that holds in it (`base` when none does, `idle` outside the agent's runs)."""
    edges: list[tuple[int, int, str]] = []
    for s in spans:
        edges += [(s.start, 1, s.state), (s.end, -1, s.state)]
    for a, b in running:
        edges += [(max(a, frm), 1, NOT_RUNNING), (min(b, to), -1, NOT_RUNNING)]
    edges.sort()
    active: Counter[str] = Counter()
    out: list[Span] = []
    at, i = frm, 0
    while at < to:
        while i < len(edges) and edges[i][0] <= at:
            active[edges[i][2]] += edges[i][1]
            i += 1
        nxt = min(edges[i][0] if i < len(edges) else to, to)
        state = idle if active[NOT_RUNNING] <= 0 else next((s for s in order if active[s] > 0), base)
        if out and out[-1].state == state:
            out[-1].end = nxt
        else:
            out.append(Span(state, at, nxt))
        at = nxt
    return out


def seconds(spans: list[Span], states: tuple[str, ...], lo: int, hi: int) -> dict[str, float]:
    out = dict.fromkeys(states, 0.0)
    for s in spans:
        overlap = min(s.end, hi) - max(s.start, lo)
        if overlap > 0:
            out[s.state] += overlap / 1000
    return {k: round(v, 3) for k, v in out.items()}


def share(parts: tuple[float, float]) -> float | None:
    good, total = parts
    return round(good / total, 4) if total > 0 else None


def rates(subs: list[Subject], lo: int, hi: int) -> tuple[float | None, dict[str, dict[str, float | None]]]:
    """The plant's rate over [lo, hi) (every unit's good and counted seconds added up: a unit
    counts by its time, not by its number) and each one's: ({"interlocks": .., "detectors": ..})."""
    good = total = 0.0
    each: dict[str, dict[str, float | None]] = {"interlocks": {}, "detectors": {}}
    for s in subs:
        g, t = s.parts(lo, hi)
        each[f"{s.kind}s"][s.id] = share((g, t))
        good, total = good + g, total + t
    return share((good, total)), each


def daily_event(db: sqlite3.Connection, rules: Rules, points: list[Point], day: int, lo: int, hi: int,
                now: int) -> dict:
    """The `inservice_daily` gateway event: one local day's rates per interlock and detector
    and the plant's (docs/uplink.md, section 6)."""
    plant, each = rates(subjects(db, rules, points, lo, hi), lo, hi)
    return {"id": f"inservice-daily-{day}", "kind": "inservice_daily", "severity": "info", "state": "report",
            "ts": rfc3339(now), "source": "gateway", "day": day_text(day), "from": rfc3339(lo), "to": rfc3339(hi),
            "plant": plant, **each}

