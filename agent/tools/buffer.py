"""`hazgate buffer`: the local store's figures, and what it holds exported as CSV or JSON lines."""

from __future__ import annotations

import csv
import sqlite3
import sys
from pathlib import Path

import orjson

from agent.common.running import AppliedConfig
from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.store import Store
from agent.tools.store_view import age_text, applied_note, open_store


def buffer(config: GatewayConfig | AppliedConfig, action: str, fmt: str, output: str | None,
           uplink: str | None = None, rejected: bool = False) -> int:
    """Given the applied config's view (the file on disk is broken), it says so first, on stderr."""
    cfg = config if isinstance(config, AppliedConfig) else AppliedConfig.of(config)
    if isinstance(config, AppliedConfig):
        print(applied_note(config), file=sys.stderr)
    names = [name for name, _ in cfg.uplinks]
    if uplink is not None and uplink not in names:
        print(f"hazgate buffer: --uplink {uplink!r}: no such uplink in {cfg.path}; valid: {', '.join(names)}",
              file=sys.stderr)
        return 2
    if action == "retry":
        return _retry(cfg.data_dir, uplink or names[0])
    store = open_store(cfg.data_dir)
    if store is None:
        return 1
    try:
        if action == "stats":
            _print_stats(store.stats())
            return 0
        out = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
        try:
            if rejected:
                count = _export_rejected(store, uplink or names[0], fmt, out)
                what = "set-aside messages"
            else:
                count = _export(store, uplink or names[0], fmt, out)
                what = "buffered readings"
        finally:
            if output:
                out.close()
        print(f"exported {count} {what}", file=sys.stderr)
        return 0
    except sqlite3.Error as exc:
        print(f"cannot read store {store.path}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _print_stats(stats: dict) -> None:
    def show(figures: dict, indent: str) -> None:
        for key, value in figures.items():
            if isinstance(value, dict):
                continue
            shown = age_text(value) if key.endswith(("_ms", "_at")) and value else value
            print(f"{indent}{key:<20} {shown}")

    show(stats, "")
    for name, figures in stats.get("uplinks", {}).items():
        print(f"uplink {name}:")
        show(figures, "  ")


def _retry(data_dir: Path, uplink: str) -> int:
    """Set-aside messages back in line; a running agent sends them on the uplink's next connection."""
    try:
        store = Store(data_dir)
    except (sqlite3.Error, OSError) as exc:
        print(f"hazgate buffer retry: cannot open the store in {data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        count = store.retry(uplink)
    except sqlite3.Error as exc:
        print(f"hazgate buffer retry: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{count} set-aside messages of uplink {uplink} back in line (sent on its next connection)")
    return 0


REJECTED_FIELDS = ("seq", "kind", "rejects", "reason", "payload")


def _export_rejected(store: Store, uplink: str, fmt: str, out) -> int:  # noqa: ANN001 - text stream
    """The uplink's set-aside messages, their bodies as sent (text)."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(REJECTED_FIELDS)
    rows = store.rejected(uplink)
    for seq, kind, rejects, reason, payload in rows:
        row = (seq, kind, rejects, reason, bytes(payload).decode("utf-8", "replace"))
        if writer:
            writer.writerow(row)
        else:
            out.write(orjson.dumps(dict(zip(REJECTED_FIELDS, row, strict=True))).decode() + "\n")
    return len(rows)


FIELDS = ("state", "seq", "tag", "ts", "value", "unit", "quality", "reason")


def _export(store: Store, uplink: str, fmt: str, out) -> int:  # noqa: ANN001 - text stream
    """The uplink's readings in unacknowledged `hazgate.uplink/1` messages (state `sent`), then
    those not yet in a message (`queued`)."""
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

    for seq, _kind, _retain, payload in store.unacked(0, 1 << 30, uplink):
        if _kind != "readings" or not payload.startswith(b'{"schema"'):
            continue  # another body than hazgate.uplink/1: its readings are not read back here
        for r in orjson.loads(payload)["readings"]:
            emit(("sent", seq, r["tag"], r["ts"], r["value"], r["unit"], r["quality"], r.get("reason")))
    for ts, tag, unit, ptype, value, quality, reason in store.queued(uplink):
        if ptype == "bool" and value is not None:
            value = bool(value)
        emit(("queued", None, tag, rfc3339(ts), value, unit, quality, reason))
    return count
