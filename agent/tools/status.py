"""`hazgate status` and `hazgate buffer`: read the store, whether or not the agent runs."""

from __future__ import annotations

import csv
import sqlite3
import sys
import time
from pathlib import Path

import orjson

from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.store import DB_NAME, Store

HEARTBEAT_STALE_MS = 15_000


def _open(cfg: GatewayConfig) -> Store | None:
    path = cfg.data_dir / DB_NAME
    if not path.exists():
        print(f"no store at {path}: the agent has not run with this config yet", file=sys.stderr)
        return None
    return Store(cfg.data_dir, readonly=True)


def _age(ms: int | None) -> str:
    if ms is None:
        return "never"
    secs = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{rfc3339(ms)} ({secs / size:.1f}{unit} ago)"
    return f"{rfc3339(ms)} ({secs:.1f}s ago)"


def status(cfg: GatewayConfig) -> int:
    store = _open(cfg)
    if store is None:
        return 1
    try:
        st = store.stats()
        state = dict(store.db.execute("SELECT key, value FROM state").fetchall())
        devices = store.db.execute("SELECT name, link, reason, last_good FROM devices ORDER BY name").fetchall()
        active = store.active()
    except sqlite3.Error as exc:
        print(f"cannot read store {store.path}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    beat = state.get("heartbeat")
    running = beat is not None and time.time() * 1000 - beat < HEARTBEAT_STALE_MS
    print(f"gateway {cfg.gateway_id} ({cfg.path})")
    print(f"agent:   {'running' if running else 'not running'}; started {_age(state.get('started_at'))}; "
          f"last heartbeat {_age(beat)}")
    synced = state.get("clock_synchronized")
    clock = "unknown" if synced is None else ("synchronized" if synced else
                                                "NOT synchronized: readings are marked uncertain")
    print(f"clock:   {clock} (source {state.get('clock_source', cfg.clock.sync_source)})")
    uplink = state.get("uplink_state", "unknown") if running else "down (agent not running)"
    print(f"uplink:  {uplink} ({cfg.uplink.broker}); since {_age(state.get('uplink_changed'))}")
    print(f"         last acknowledged publish: seq {st['last_ack_seq']} at {_age(st['last_ack_at'])}")
    print(f"buffer:  {st['readings_buffered']} readings buffered, {st['messages_unacked']} messages unacknowledged, "
          f"{st['events_buffered']} events waiting; oldest unsent {_age(st['oldest_unsent_ms'])}")
    print(f"         store {st['used_bytes'] / 1e6:.1f} MB used of {cfg.store.max_bytes / 1e6:.0f} MB; "
          f"{st['stored_readings']} readings stored and {st['evicted_readings']} evicted in total")
    known = {name: (link, reason, last_good) for name, link, reason, last_good in devices}
    print("devices:")
    for dev in cfg.devices:
        link, reason, last_good = known.get(dev.name, ("unknown", None, None))
        if not running:
            link = f"{link} (when the agent last ran)"
        extra = f" ({reason})" if reason else ""
        print(f"  {dev.name:<20} {link}{extra}; last good read {_age(last_good)}")
    _print_active(active, running)
    return 0


def _print_active(active: list[tuple[str, str, str, int, dict]], running: bool) -> None:
    """Active alarms, bypasses and interlock conditions (agent/checks), oldest first, with age."""
    note = "" if running else " (when the agent last ran)"
    bypasses = sum(1 for _, kind, *_ in active if kind == "interlock_bypass")
    print(f"active:  {len(active)} alarms and conditions, {bypasses} bypasses{note}")
    for _key, kind, subject, start, data in active:
        detail = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], 0) or k == "overdue")
        print(f"  {kind:<24} {subject:<20} since {_age(start)}" + (f"  {detail}" if detail else ""))


def buffer(cfg: GatewayConfig, action: str, fmt: str, output: str | None) -> int:
    store = _open(cfg)
    if store is None:
        return 1
    try:
        if action == "stats":
            for key, value in store.stats().items():
                shown = _age(value) if key.endswith(("_ms", "_at")) and value else value
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


__all__ = ["status", "buffer", "Path"]
