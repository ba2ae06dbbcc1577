"""The benchmark table: each figure beside its baseline from the same run, the ratio, the target."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Row:
    section: str
    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "met", "NOT met" or ""


def fmt_rate(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}/s"


def fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1e3:,.0f} ms"


def fmt_s(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f} s"


def fmt_mb(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x / 1e6:.1f} MB"


def fmt_us(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f} µs"


def fmt_pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.1f} %"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return ""
    return f"{a / b:.2f}×"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "NOT met")


HEAD = ("figure", "hazgate", "baseline", "ratio", "target", "")


def text(rows: list[Row]) -> str:
    cells = [HEAD] + [(r.figure, r.value, r.baseline, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEAD))]
    line = lambda c: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) if i < 4 else s.ljust(w)  # noqa: E731
                               for i, (s, w) in enumerate(zip(c, widths, strict=True))).rstrip()
    out, section = [line(HEAD), "-" * (sum(widths) + 2 * (len(widths) - 1))], None
    for r, c in zip(rows, cells[1:], strict=True):
        if r.section != section:
            section = r.section
            out.append(f"[{section}]")
        out.append(line(c))
    return "\n".join(out)


def markdown(rows: list[Row]) -> str:
    out = ["| | figure | hazgate | baseline | ratio | target | |", "|---|---|--:|--:|--:|---|---|"]
    section = None
    for r in rows:
        s = r.section if r.section != section else ""
        section = r.section
        out.append(f"| {s} | {r.figure} | {r.value} | {r.baseline} | {r.ratio} | {r.target} | {r.verdict} |")
    return "\n".join(out)
