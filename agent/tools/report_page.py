"""The page of `hazgate report`: one self-contained HTML file (no script or font from the
network), printable to A4. A timeline strip per interlock and detector (plain SVG rectangles,
each piece's state and times in its hover title), the daily in-service bar chart (pygal), the
completeness heat map (point x day, plain SVG: a row is drawn green and only the days short of
complete are drawn over it, which keeps a 1 000-point month small), then the tables."""

from __future__ import annotations

from html import escape

import pygal
from pygal.style import Style

from agent.common.timefmt import rfc3339
from agent.pipeline.evidence import day_text
from agent.pipeline.evidence_rates import Span
from agent.tools.report_figures import Figures

COLOURS = {
    "in_service": "#2e7d32", "alive": "#2e7d32", "bypassed_undeclared": "#f9a825", "bypassed_declared": "#64b5f6",
    "declared_stop": "#64b5f6", "out_of_service": "#c62828", "fault": "#c62828", "tripped": "#6a1b9a",
    "flatline": "#ef6c00", "out_of_range": "#ad1457", "unknown": "#9e9e9e", "no_data": "#9e9e9e",
}
STRIP_W, STRIP_H, MIN_W = 720, 14, 2.0  # px
BASE = ("in_service", "alive")
CELL_W, CELL_H = 18, 10
CSS = """
body{font:13px/1.35 "DejaVu Sans",Arial,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:4px 0 10px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.strip{display:flex;align-items:center;gap:8px;margin:2px 0}.strip .id{width:170px;font-family:monospace;overflow:hidden}
.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
.low{color:#c62828;font-weight:bold}.note{color:#555}
@page{size:A4;margin:12mm}@media print{body{margin:0}.strip,tr{break-inside:avoid}h2{break-after:avoid}}
"""


def page(fig: Figures) -> str:
    j = fig.json
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hazgate evidence report "
             f"{escape(j['gateway'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Evidence report: gateway {escape(j['gateway'])}</h1>",
             f"<p>{escape(j['from'])} to {escape(j['to'])}. Plant in service: "
             f"{_pct(j['plant_in_service_share'])}. Definitions: docs/operations.md, \"Evidence report\".</p>",
             "<h2>Interlocks</h2>", _legend(("in_service", "bypassed_undeclared", "bypassed_declared",
                                              "out_of_service", "tripped", "unknown")),
             *(_strip("interlock", il["id"], fig.timelines[f"interlock:{il['id']}"]) for il in j["interlocks"]),
             _axis(fig),
             "<h2>Gas detectors</h2>", _legend(("alive", "fault", "flatline", "out_of_range", "declared_stop", "no_data")),
             *(_strip("detector", d["tag"], fig.timelines[f"detector:{d['tag']}"]) for d in j["detectors"]),
             _axis(fig),
             "<h2>Daily in-service rate (plant)</h2>", _daily_chart(j["daily"]),
             "<h2>Completeness (readings acknowledged by every uplink, point x day)</h2>",
             heat_map([day_text(d) for d, _, _ in fig.days], fig.completeness),
             _interlock_table(j), _episode_table(j), _detector_table(j), _uplink_table(j), _point_table(j),
             "</body></html>"]
    return "\n".join(parts)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f} %"


def _legend(states: tuple[str, ...]) -> str:
    return "<p class='legend'>" + "".join(f"<span><i style='background:{COLOURS[s]}'></i>{s.replace('_', ' ')}</span>"
                                          for s in states) + "</p>"


def _strip(kind: str, ident: str, spans: list[Span]) -> str:
    if not spans:
        return ""
    t0, t1 = spans[0].start, spans[-1].end
    scale = STRIP_W / max(1, t1 - t0)
    rects = []
    # a short episode stays visible: at least MIN_W wide (its title tells its times), drawn over the rest
    for s in sorted(spans, key=lambda s: s.state not in BASE):
        x, w = (s.start - t0) * scale, max(MIN_W if s.state not in BASE else 0.5, (s.end - s.start) * scale)
        title = f"{s.state.replace('_', ' ')}: {rfc3339(s.start)} to {rfc3339(s.end)} ({(s.end - s.start) / 1000:g} s)"
        rects.append(f"<rect x='{x:.2f}' y='0' width='{w:.2f}' height='{STRIP_H}' fill='{COLOURS[s.state]}' "
                     f"data-state='{s.state}'><title>{escape(title)}</title></rect>")
    return (f"<div class='strip'><span class='id'>{escape(ident)}</span><svg class='timeline' data-kind='{kind}' "
            f"data-id='{escape(ident, quote=True)}' width='{STRIP_W}' height='{STRIP_H}' "
            f"viewBox='0 0 {STRIP_W} {STRIP_H}'>{''.join(rects)}</svg></div>")


def _axis(fig: Figures) -> str:
    """Under the strips: each local day's start (month-day), or the period's ends within a day."""
    t0, t1 = fig.frm, fig.to
    scale = STRIP_W / max(1, t1 - t0)
    if len(fig.days) > 1:
        marks = [((lo - t0) * scale, f"{day // 100 % 100:02d}-{day % 100:02d}") for day, lo, _ in fig.days if lo >= t0]
    else:
        marks = [(0.0, rfc3339(t0)[11:19]), (STRIP_W - 48.0, rfc3339(t1)[11:19])]
    step = max(1, len(marks) // 15)  # at most about 15 labels
    text = "".join(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='4' stroke='#666'/><text x='{x + 1:.1f}' y='13'>"
                   f"{escape(label)}</text>" for x, label in marks[::step])
    return (f"<div class='strip'><span class='id'></span><svg class='axis' width='{STRIP_W}' height='16' "
            f"font-size='9'>{text}</svg></div>")


def _daily_chart(daily: list[dict]) -> str:
    style = Style(background="white", plot_background="white", colors=("#2e7d32",), font_family="DejaVu Sans",
                  label_font_size=10, major_label_font_size=10, value_font_size=8)
    chart = pygal.Bar(js=[], disable_xml_declaration=True, width=760, height=260, range=(0, 100), show_legend=False,
                      print_values=len(daily) <= 31, style=style, x_label_rotation=-45 if len(daily) > 10 else 0,
                      value_formatter=lambda v: f"{v:.1f}")
    chart.x_labels = [d["day"][5:] for d in daily]
    chart.add("plant", [None if d["plant"] is None else round(d["plant"] * 100, 2) for d in daily])
    return f"<div class='chart' id='daily'>{chart.render(is_unicode=True)}</div>"


def _heat_colour(x: float) -> str:
    return "#2e7d32" if x >= 0.999 else "#9ccc65" if x >= 0.99 else "#f9a825" if x >= 0.9 else "#c62828"


def heat_map(days: list[str], shares: dict[str, list[float | None]]) -> str:
    """Rows of points, a column per day: each row drawn green once and only the days short of
    complete drawn over it (None: no poll expected, grey)."""
    label_w = 140
    width, height = label_w + len(days) * CELL_W, (len(shares) + 1) * CELL_H + 4
    out = [f"<svg class='heatmap' width='{width}' height='{height}' viewBox='0 0 {width} {height}' font-size='8'>"]
    for i, day in enumerate(days):
        out.append(f"<text x='{label_w + i * CELL_W + 1}' y='{CELL_H - 2}'>{escape(day[-2:])}</text>")
    for row, (tag, cells) in enumerate(shares.items()):
        y = (row + 1) * CELL_H + 2
        out.append(f"<text x='0' y='{y + CELL_H - 2}'>{escape(tag)}</text>"
                   f"<rect x='{label_w}' y='{y}' width='{len(days) * CELL_W}' height='{CELL_H - 1}' fill='#2e7d32'/>")
        for col, x in enumerate(cells):
            if x is None or x < 0.999:
                fill = "#e0e0e0" if x is None else _heat_colour(x)
                what = "no poll expected" if x is None else f"{x * 100:.1f} %"
                out.append(f"<rect x='{label_w + col * CELL_W}' y='{y}' width='{CELL_W - 1}' height='{CELL_H - 1}' "
                           f"fill='{fill}'><title>{escape(tag)} {escape(days[col])}: {what}</title></rect>")
    out.append("</svg>")
    return "".join(out)


def table(title: str, head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>{escape(title)}</h2><table><tr>{th}</tr>{body}</table>"


def _rate(x: float | None) -> str:
    return f"<span class='low'>{_pct(x)}</span>" if x is not None and x < 0.999 else _pct(x)


def _interlock_table(j: dict) -> str:
    head = ["interlock", "in service", *(k.replace("_", " ") + " (s)" for k in j["interlocks"][0]["seconds"]),
            "trips", "spurious"] if j["interlocks"] else ["interlock"]
    rows = [[escape(il["id"]), _rate(il["in_service_share"]), *(f"{v:g}" for v in il["seconds"].values()),
             str(il["trips"]), str(il["spurious_trips"])] for il in j["interlocks"]]
    return table("Interlocks in service", head, rows)


def _episode_table(j: dict) -> str:
    rows = [[escape(il["id"]), escape(e["state"].replace("_", " ")), escape(e["start"]), escape(e["end"]),
             f"{e['seconds']:g}", escape(str(e.get("declaration") or "")),
             "yes" if e.get("overdue") else "", escape(e.get("trip", ""))]
            for il in j["interlocks"] for e in il["episodes"]]
    return table("Interlock episodes", ["interlock", "state", "start", "end", "seconds", "declaration",
                                         "beyond bypass_max", "trip"], rows)


def _detector_table(j: dict) -> str:
    head = ["detector", "alive", *(k.replace("_", " ") + " (s)" for k in j["detectors"][0]["seconds"]),
            "alarms (level: peak)"] if j["detectors"] else ["detector"]
    rows = [[escape(d["tag"]), _rate(d["alive_share"]), *(f"{v:g}" for v in d["seconds"].values()),
             escape(", ".join(f"{a['level']}: {a['peak']}" for a in d["alarms"]))] for d in j["detectors"]]
    return table("Gas detectors alive", head, rows)


def _uplink_table(j: dict) -> str:
    rows = [[escape(u["name"]), str(u["on_time"]), str(u["backfilled"]), str(u["evicted"])] for u in j["uplinks"]]
    return table("Uplinks", ["uplink", "on time", "back-filled", "evicted"], rows)


def _point_table(j: dict) -> str:
    names = [u["name"] for u in j["uplinks"]]
    rows = [[escape(p["tag"]), escape(p["device"]), str(p["expected"]), str(p["stored"]),
             *(str(p["delivered"].get(n, 0)) for n in names), f"{p['longest_hole_s']:g}",
             str(p["quality"]["good"]), str(p["quality"]["uncertain"]), str(p["quality"]["bad"])] for p in j["points"]]
    return (table("Points (whole local days)", ["point", "device", "expected", "stored",
                                                 *(f"delivered {n}" for n in names), "longest hole (s)", "good",
                                                 "uncertain", "bad"], rows)
            + "<p class='note'>Stored and delivered count whole local days; expected counts the polls of the "
              "period.</p>")
