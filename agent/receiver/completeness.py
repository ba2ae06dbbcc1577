"""`hazgate receive --report FILE.html`: the completeness part of the evidence report, built on
the platform side from the receiver's own database, so the platform can check the gateway's
claims (`hazgate report`) independently: per gateway and point, the readings received (each
message once: duplicates are dropped by sequence number), back-filled, by quality, the longest
hole between two received readings, and per day (the day in the readings' own time stamps,
the gateway's local day). The page embeds these figures as JSON (`<script id="figures">`)."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from html import escape

import orjson

from agent.common.timefmt import now_ms, rfc3339
from agent.tools.report_page import CSS, heat_map, table


def figures(db: sqlite3.Connection) -> dict:
    """{gateway: {"days": [...], "points": [{tag, received, backfilled, quality, longest_hole_s,
    per_day}]}} from the receiver's readings."""
    per: dict[str, dict[str, dict]] = defaultdict(dict)
    days: dict[str, set[str]] = defaultdict(set)
    for gw, tag, day, n, back, good, unc in db.execute(
            "SELECT gateway, tag, substr(ts, 1, 10), COUNT(*), SUM(backfill), SUM(quality = 'good'), "
            "SUM(quality = 'uncertain') FROM readings GROUP BY gateway, tag, substr(ts, 1, 10)"):
        p = per[gw].setdefault(tag, {"tag": tag, "received": 0, "backfilled": 0, "per_day": {},
                                     "quality": {"good": 0, "uncertain": 0, "bad": 0}, "longest_hole_s": 0.0})
        p["received"] += n
        p["backfilled"] += back
        p["per_day"][day] = n
        p["quality"]["good"] += good
        p["quality"]["uncertain"] += unc
        p["quality"]["bad"] += n - good - unc
        days[gw].add(day)
    for gw, tag, hole in db.execute(
            "SELECT gateway, tag, MAX(gap) FROM (SELECT gateway, tag, (t - LAG(t) OVER (PARTITION BY gateway, tag "
            "ORDER BY t)) * 86400.0 AS gap FROM (SELECT gateway, tag, julianday(ts) AS t FROM readings)) "
            "GROUP BY gateway, tag"):
        if hole is not None:
            per[gw][tag]["longest_hole_s"] = round(hole, 3)
    return {gw: {"days": sorted(days[gw]), "points": [per[gw][t] for t in sorted(per[gw])]} for gw in sorted(per)}


def page(figs: dict) -> str:
    """Per gateway: a heat map (point x day: each day's readings against the point's best day)
    and the table of points."""
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hazgate receive: completeness"
             f"</title><style>{CSS}</style></head><body><h1>Readings received, per gateway and point</h1>",
             f"<p>Built {escape(rfc3339(now_ms()))} from the receiver's database. A day is the gateway's local "
             "day (the readings' own time stamps); a cell compares the day's readings with the point's best "
             "day.</p>"]
    for gw, g in figs.items():
        shares = {}
        for p in g["points"]:
            best = max(p["per_day"].values(), default=0)
            shares[p["tag"]] = [p["per_day"].get(d, 0) / best if best else 0.0 for d in g["days"]]
        parts += [f"<h2>Gateway {escape(gw)}</h2>", heat_map([d[5:] for d in g["days"]], shares),
                  table(f"Points of {gw}", ["point", "received", "back-filled", "longest hole (s)", "good", "uncertain",
                                            "bad"],
                        [[escape(p["tag"]), str(p["received"]), str(p["backfilled"]), f"{p['longest_hole_s']:g}",
                         str(p["quality"]["good"]), str(p["quality"]["uncertain"]), str(p["quality"]["bad"])]
                         for p in g["points"]])]
    data = orjson.dumps(figs).decode().replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='figures'>{data}</script></body></html>")
    return "\n".join(parts)
