"""`hazgate report`: the evidence report (interlocks and detectors in service, readings stored
and delivered) for a period, as a self-contained HTML page and optionally JSON, from the
evidence record beside the store (read-only: it runs beside the agent or on a copy of its
data dir). A period reaching past now ends now."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import orjson

from agent.common.timefmt import now_ms
from agent.config.gateway import GatewayConfig
from agent.pipeline.evidence import EVIDENCE_NAME, DayClock
from agent.tools.report_figures import build, parse_when
from agent.tools.report_page import page
from agent.tools.store_view import open_store


def report(cfg: GatewayConfig, frm_text: str, to_text: str, html_out: Path, json_out: Path | None) -> int:
    clock = DayClock(cfg.timezone)
    try:
        frm = parse_when(frm_text, clock, end=False)
    except ValueError as exc:
        print(f"hazgate report: --from: {exc}", file=sys.stderr)
        return 2
    try:
        to = min(parse_when(to_text, clock, end=True), now_ms())
    except ValueError as exc:
        print(f"hazgate report: --to: {exc}", file=sys.stderr)
        return 2
    if to <= frm:
        print(f"hazgate report: --to {to_text!r} is not after --from {frm_text!r} (nor is now); valid: a later "
              "date or time", file=sys.stderr)
        return 2
    store = open_store(cfg.data_dir)
    if store is None:
        return 1
    try:
        if not store.has_evidence:
            print(f"hazgate report: no evidence record at {cfg.data_dir / EVIDENCE_NAME}: the agent has not run "
                  "with this release on this data dir", file=sys.stderr)
            return 1
        fig = build(cfg, store.db, frm, to)
    except sqlite3.Error as exc:
        print(f"hazgate report: cannot read {cfg.data_dir / EVIDENCE_NAME}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    try:
        html_out.write_text(page(fig), encoding="utf-8")
        if json_out is not None:
            json_out.write_bytes(orjson.dumps(fig.json, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        print(f"hazgate report: cannot write the report: {exc}", file=sys.stderr)
        return 1
    j = fig.json
    rate = j["plant_in_service_share"]
    print(f"{html_out}: {len(j['interlocks'])} interlocks, {len(j['detectors'])} detectors, {len(j['points'])} points, "
          f"{j['from']} to {j['to']}; plant in service "
          f"{'n/a' if rate is None else f'{rate * 100:.2f} %'}; {html_out.stat().st_size:,} bytes")
    return 0
