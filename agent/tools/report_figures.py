"""The figures of `hazgate report`, from the evidence record (agent/pipeline/evidence.py) and
the config: per interlock and detector the seconds in each state and their episodes
(agent/pipeline/evidence_rates.py), the daily in-service rates, per point, device and uplink
what was expected, stored and delivered. Definitions in docs/operations.md, "Evidence report".
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.checks.rules import Interlock
from agent.pipeline.evidence import DayClock, day_text, read_days, read_delivered, read_uplink_days
from agent.pipeline.evidence_rates import Span, Subject, rates, seconds, share, subjects


@dataclass
class Figures:
    """The report: `json` is the machine shape (fixed by issue 18); the rest feeds the page."""

    json: dict
    frm: int  # the period, ms
    to: int
    timelines: dict[str, list[Span]]  # "interlock:ID" / "detector:TAG" -> resolved states over the period
    days: list[tuple[int, int, int]]  # (YYYYMMDD, first ms, end ms) of each day in the period
    completeness: dict[str, list[float | None]]  # tag -> per day delivered share (None: no poll expected)


def episode(s: Span) -> dict:
    out = {"state": s.state, "start": rfc3339(s.start), "end": rfc3339(s.end),
           "seconds": round((s.end - s.start) / 1000, 3)}
    if s.open:
        out["open"] = True
    return out


def period_days(clock: DayClock, frm: int, to: int) -> list[tuple[int, int, int]]:
    out, at = [], frm
    while at < to:
        day, lo, hi = clock.span(at)
        out.append((day, lo, hi))
        at = hi
    return out


def build(cfg: GatewayConfig, db: sqlite3.Connection, frm: int, to: int) -> Figures:
    days = period_days(DayClock(cfg.timezone), frm, to)
    subs = subjects(db, cfg.rules, cfg.all_points(), frm, to)
    rules = {il.id: il for il in cfg.rules.interlocks}
    names = {p.tag: p.name for p in cfg.all_points()}
    interlocks = [_interlock(s, rules[s.id], frm, to) for s in subs if s.kind == "interlock"]
    detectors = [_detector(s, names.get(s.id, ""), frm, to) for s in subs if s.kind == "detector"]
    points, devices, uplinks, completeness = _delivery(cfg, db, days, frm, to)
    daily = []
    for day, lo, hi in days:
        plant, per = rates(subs, max(lo, frm), min(hi, to))
        daily.append({"day": day_text(day), "plant": plant, **per})
    out = {"gateway": cfg.gateway_id, "from": rfc3339(frm), "to": rfc3339(to),
           "plant_in_service_share": rates(subs, frm, to)[0], "interlocks": interlocks, "detectors": detectors,
           "points": points, "devices": devices, "uplinks": uplinks, "daily": daily}
    return Figures(out, frm, to, {f"{s.kind}:{s.id}": s.line for s in subs}, days, completeness)


def _interlock(s: Subject, rule: Interlock, frm: int, to: int) -> dict:
    eps = []
    for span in s.spans:
        e = episode(span)
        if span.state.startswith("bypassed"):
            e.update(declaration=span.detail.get("declaration"), overdue=bool(span.detail.get("overdue")),
                     bypass_max_s=span.detail.get("bypass_max_s", rule.bypass_max))
        elif span.state == "tripped":
            e["trip"] = span.detail.get("trip", "tripped")
        eps.append(e)
    trips = Counter(span.detail.get("trip", "tripped") for span in s.spans if span.state == "tripped")
    return {"id": s.id, "name": rule.name, "in_service_share": share(s.parts(frm, to)),
            "seconds": seconds(s.line, s.states, frm, to), "episodes": eps, "trips": trips["tripped"],
            "spurious_trips": trips["spurious"]}


def _detector(s: Subject, name: str, frm: int, to: int) -> dict:
    alarms = []
    for span in s.alarms:
        a = {"level": span.detail.get("level", 0), "limit": span.detail.get("limit_name"),
             "peak": span.detail.get("peak"), **episode(span)}
        del a["state"]
        alarms.append(a)
    return {"tag": s.id, "name": name, "alive_share": share(s.parts(frm, to)),
            "seconds": seconds(s.line, s.states, frm, to), "episodes": [episode(span) for span in s.spans],
            "alarms": alarms}


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
