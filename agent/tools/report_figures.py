"""The figures of `hazgate report`, from the evidence record (agent/pipeline/evidence.py) and
the config: per interlock and detector the seconds in each state and their episodes, the daily
in-service rates, per point, device and uplink what was expected, stored and delivered.

States, when several hold at once, count as the first of their list (INTERLOCK_ORDER,
DETECTOR_ORDER); time when the agent did not run counts as `unknown` (interlocks) or
`no_data` (detectors). Definitions in docs/operations.md, "Evidence report".
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.model import Point
from agent.pipeline.checks.rules import gas_class
from agent.pipeline.evidence import (
    DayClock,
    read_days,
    read_delivered,
    read_intervals,
    read_runs,
    read_uplink_days,
)

INTERLOCK_STATES = ("in_service", "bypassed_declared", "bypassed_undeclared", "out_of_service", "tripped", "unknown")
INTERLOCK_ORDER = ("unknown", "out_of_service", "bypassed_declared", "bypassed_undeclared", "tripped")
DETECTOR_STATES = ("alive", "fault", "flatline", "out_of_range", "declared_stop", "no_data")
DETECTOR_ORDER = ("declared_stop", "no_data", "fault", "out_of_range", "flatline")
DETECTOR_CAUSE = {"fault": "fault", "flatline": "flatline", "under_range": "out_of_range",
                  "over_range": "out_of_range", "no_data": "no_data", "declared_stop": "declared_stop"}
NOT_RUNNING = "not_running"  # internal: the agent was not running


def bypass_state(detail: dict) -> str:
    """A bypass interval is declared when a declaration covered it. Declarations (issue 16) plug
    in here: the interval's detail then names the declaration that covered it."""
    return "bypassed_declared" if detail.get("declaration") else "bypassed_undeclared"


@dataclass
class Span:
    state: str
    start: int
    end: int  # clipped to the period
    detail: dict = field(default_factory=dict)
    open: bool = False  # still active at the end of the record


@dataclass
class Figures:
    """The report: `json` is the machine shape (fixed by issue 18); the rest feeds the page."""

    json: dict
    frm: int  # the period, ms
    to: int
    timelines: dict[str, list[Span]]  # "interlock:ID" / "detector:TAG" -> resolved states over the period
    days: list[tuple[int, int, int]]  # (YYYYMMDD, first ms, end ms) of each day in the period
    completeness: dict[str, list[float | None]]  # tag -> per day delivered share (None: no poll expected)


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


def interlock_parts(sec: dict[str, float]) -> tuple[float, float]:
    """In service, over the time the unit ran: a tripped interlock has shut its unit down."""
    return sec["in_service"], sum(sec.values()) - sec["tripped"]


def detector_parts(sec: dict[str, float]) -> tuple[float, float]:
    """Alive or under a declared stop, over the whole period."""
    return sec["alive"] + sec["declared_stop"], sum(sec.values())


def plant_share(rates: list[tuple[str, list[Span], tuple[str, ...], Callable]], lo: int, hi: int) -> tuple[float | None, dict]:
    """The plant's rate (every interlock's and detector's time added up) and each one's."""
    good = total = 0.0
    each = {}
    for key, line, states, parts in rates:
        g, t = parts(seconds(line, states, lo, hi))
        each[key] = share((g, t))
        good, total = good + g, total + t
    return share((good, total)), each


def episode(s: Span) -> dict:
    out = {"state": s.state, "start": rfc3339(s.start), "end": rfc3339(s.end),
           "seconds": round((s.end - s.start) / 1000, 3)}
    if s.open:
        out["open"] = True
    return out


def detectors_of(cfg: GatewayConfig) -> list[Point]:
    return [p for p in cfg.all_points() if p.type != "bool" and gas_class(p, cfg.rules) is not None]


def period_days(clock: DayClock, frm: int, to: int) -> list[tuple[int, int, int]]:
    out, at = [], frm
    while at < to:
        day, lo, hi = clock.span(at)
        out.append((day, lo, hi))
        at = hi
    return out


def build(cfg: GatewayConfig, db: sqlite3.Connection, frm: int, to: int) -> Figures:
    clock = DayClock(cfg.timezone)
    days = period_days(clock, frm, to)
    running = [(a, b) for a, b in read_runs(db, frm, to)]
    by_subject: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for kind, subject, state, start, end, detail in read_intervals(db, frm, to):
        by_subject[(kind, subject)].append(Span(state, max(start, frm), min(end if end is not None else to, to),
                                                detail, end is None))
    timelines: dict[str, list[Span]] = {}
    interlocks, detectors, rates = [], [], []
    for il in cfg.rules.interlocks:
        raw = by_subject.get(("interlock", il.id), [])
        spans = [Span(bypass_state(s.detail) if s.state == "bypassed" else s.state, s.start, s.end, s.detail, s.open)
                 for s in raw]
        line = timelines[f"interlock:{il.id}"] = resolve(frm, to, spans, running, INTERLOCK_ORDER, "unknown", "in_service")
        sec = seconds(line, INTERLOCK_STATES, frm, to)
        eps = []
        for s in spans:
            e = episode(s)
            if s.state.startswith("bypassed"):
                e.update(declaration=s.detail.get("declaration"), overdue=bool(s.detail.get("overdue")),
                         bypass_max_s=s.detail.get("bypass_max_s", il.bypass_max))
            elif s.state == "tripped":
                e["trip"] = s.detail.get("trip", "tripped")
            eps.append(e)
        trips = Counter(s.detail.get("trip", "tripped") for s in spans if s.state == "tripped")
        interlocks.append({"id": il.id, "name": il.name, "in_service_share": share(interlock_parts(sec)), "seconds": sec,
                           "episodes": eps, "trips": trips["tripped"], "spurious_trips": trips["spurious"]})
        rates.append((f"interlock:{il.id}", line, INTERLOCK_STATES, interlock_parts))
    for p in detectors_of(cfg):
        raw = by_subject.get(("detector", p.tag), [])
        faults = [Span(DETECTOR_CAUSE[s.state], s.start, s.end, s.detail, s.open) for s in raw
                  if s.state in DETECTOR_CAUSE]
        line = timelines[f"detector:{p.tag}"] = resolve(frm, to, faults, running, DETECTOR_ORDER, "no_data", "alive")
        sec = seconds(line, DETECTOR_STATES, frm, to)
        alarms = [{"level": s.detail.get("level", 0), "limit": s.detail.get("limit_name"), "peak": s.detail.get("peak"),
                   **episode(s)} for s in raw if s.state == "alarm"]
        for a in alarms:
            del a["state"]
        detectors.append({"tag": p.tag, "name": p.name, "alive_share": share(detector_parts(sec)), "seconds": sec,
                          "episodes": [episode(s) for s in faults], "alarms": alarms})
        rates.append((f"detector:{p.tag}", line, DETECTOR_STATES, detector_parts))
    points, devices, uplinks, completeness = _delivery(cfg, db, days, frm, to)
    daily = []
    for day, lo, hi in days:
        plant, per = plant_share(rates, max(lo, frm), min(hi, to))
        daily.append({"day": day_text(day), "plant": plant,
                      "interlocks": {k.split(":", 1)[1]: v for k, v in per.items() if k.startswith("interlock:")},
                      "detectors": {k.split(":", 1)[1]: v for k, v in per.items() if k.startswith("detector:")}})
    out = {"gateway": cfg.gateway_id, "from": rfc3339(frm), "to": rfc3339(to),
           "plant_in_service_share": plant_share(rates, frm, to)[0], "interlocks": interlocks, "detectors": detectors, "points": points, "devices": devices,
           "uplinks": uplinks, "daily": daily}
    return Figures(out, frm, to, timelines, days, completeness)


def _delivery(cfg: GatewayConfig, db: sqlite3.Connection, days: list[tuple[int, int, int]], frm: int,
              to: int) -> tuple[list[dict], list[dict], list[dict], dict[str, list[float | None]]]:
    """Points, devices and uplinks: counted per whole local day (the record's resolution)."""
    first, last = days[0][0], days[-1][0]
    names = [u.name for u in cfg.uplinks]
    stored: dict[str, list[tuple]] = defaultdict(list)
    for row in read_days(db, first, last):
        stored[row[1]].append(row)
    delivered: dict[tuple[str, str], int] = Counter()
    per_day: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    up_totals: dict[str, Counter[str]] = {n: Counter() for n in names}
    for day, up, tag, n in read_delivered(db, first, last):
        delivered[(tag, up)] += n
        per_day[(tag, day)][up] += n
    for _day, up, on_time, back, evicted in read_uplink_days(db, first, last):
        if up in up_totals:
            up_totals[up].update(on_time=on_time, backfilled=back, evicted=evicted)
    points, devices, completeness = [], [], {}
    for dev in cfg.devices:
        dev_sum: Counter[str] = Counter()
        dev_up: Counter[str] = Counter()
        for p in dev.points:
            rows = stored.get(p.tag, [])
            q = {"good": sum(r[3] for r in rows), "uncertain": sum(r[4] for r in rows), "bad": sum(r[5] for r in rows)}
            expected = int((to - frm) / 1000 / dev.poll_interval)
            got = {u: delivered[(p.tag, u)] for u in names}
            points.append({"tag": p.tag, "device": dev.name, "expected": expected, "stored": sum(r[2] for r in rows),
                           "delivered": got, "longest_hole_s": _longest_hole(rows, frm, to), "quality": q})
            dev_sum.update(expected=expected, stored=points[-1]["stored"], **q)
            dev_up.update(got)
            completeness[p.tag] = [_day_share(per_day.get((p.tag, day)), names, lo, hi, frm, to, dev.poll_interval)
                                   for day, lo, hi in days]
        devices.append({"name": dev.name, "points": len(dev.points), "expected": dev_sum["expected"],
                        "stored": dev_sum["stored"], "delivered": {u: dev_up[u] for u in names},
                        "quality": {k: dev_sum[k] for k in ("good", "uncertain", "bad")}})
    uplinks = [{"name": n, "on_time": up_totals[n]["on_time"], "backfilled": up_totals[n]["backfilled"],
                "evicted": up_totals[n]["evicted"]} for n in names]
    return points, devices, uplinks, completeness


def _day_share(got: Counter[str] | None, uplinks: list[str], lo: int, hi: int, frm: int, to: int,
               interval: float) -> float | None:
    """Of the polls a day expected, the share every uplink had acknowledged."""
    expected = (min(hi, to) - max(lo, frm)) / 1000 / interval
    if expected < 1:
        return None
    least = min((got or {}).get(u, 0) for u in uplinks) if uplinks else 0
    return min(1.0, least / expected)


def _longest_hole(rows: list[tuple], frm: int, to: int) -> float:
    """Seconds: the longest time without a stored reading, within the period."""
    if not rows:
        return round((to - frm) / 1000, 3)
    hole = max(r[8] for r in rows)
    for a, b in zip(rows, rows[1:], strict=False):
        hole = max(hole, b[6] - a[7])
    hole = max(hole, rows[0][6] - frm, to - rows[-1][7])
    return round(max(0, hole) / 1000, 3)


def day_text(day: int) -> str:
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"


def parse_when(text: str, clock: DayClock, end: bool) -> int:
    """--from/--to: RFC 3339, or a date (local day: its start, or for --to its end)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date or time; valid: 2026-11-01 (a local day) or "
                         "2026-11-01T08:00:00+08:00 (RFC 3339)") from None
    if "T" not in text and " " not in text:
        _, lo, hi = clock.span(int(when.replace(tzinfo=clock.tz).timestamp() * 1000) + 43_200_000)
        return hi if end else lo
    if when.tzinfo is None:
        when = when.replace(tzinfo=clock.tz) if clock.tz else when.astimezone()
    return int(when.timestamp() * 1000)
