"""`hazgate buffer`: the local store's figures, and what it holds exported as CSV or JSON lines."""

from __future__ import annotations

import csv
import sqlite3
import sys

import orjson

from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.store import Store
from agent.tools.store_view import age_text, open_store


def buffer(cfg: GatewayConfig, action: str, fmt: str, output: str | None) -> int:
    store = open_store(cfg)
    if store is None:
        return 1
    try:
        if action == "stats":
            for key, value in store.stats().items():
                shown = age_text(value) if key.endswith(("_ms", "_at")) and value else value
                print(f"{key:<20} {shown}")
            return 0
        out = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
        try:
            count = _export(store, fmt, out)
        finally:
            if output:
                out.close()
        print(f"exported {count} buffered readings", file=sys.stderr)
        return 0
    except sqlite3.Error as exc:
        print(f"cannot read store {store.path}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


FIELDS = ("state", "seq", "tag", "ts", "value", "unit", "quality", "reason")


def _export(store: Store, fmt: str, out) -> int:  # noqa: ANN001 - text stream
    """Readings in unacknowledged messages (state `sent`) then not yet sent (`queued`)."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(FIELDS)
    count = 0

    def emit(row: tuple) -> None:
        nonlocal count
        count += 1
        if writer:
            writer.writerow(row)
        else:
            out.write(orjson.dumps(dict(zip(FIELDS, row, strict=True))).decode() + "\n")

    for seq, payload in store.db.execute("SELECT seq, payload FROM outbox WHERE kind='readings' ORDER BY seq"):
        for r in orjson.loads(payload)["readings"]:
            emit(("sent", seq, r["tag"], r["ts"], r["value"], r["unit"], r["quality"], r.get("reason")))
    for ts, tag, unit, ptype, value, quality, reason in store.queued():
        if ptype == "bool" and value is not None:
            value = bool(value)
        emit(("queued", None, tag, rfc3339(ts), value, unit, quality, reason))
    return count
