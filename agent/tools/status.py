"""`hazgate status`: device links, buffer, uplink and active conditions, from the store,
whether or not the agent runs."""

from __future__ import annotations

import sqlite3
import sys
import time

from agent.config.gateway import GatewayConfig
from agent.tools.store_view import age_text, open_store

HEARTBEAT_STALE_MS = 15_000


def status(cfg: GatewayConfig) -> int:
    store = open_store(cfg)
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
    print(f"agent:   {'running' if running else 'not running'}; started {age_text(state.get('started_at'))}; "
          f"last heartbeat {age_text(beat)}")
    synced = state.get("clock_synchronized")
    clock = "unknown" if synced is None else ("synchronized" if synced else
                                                "NOT synchronized: readings are marked uncertain")
    print(f"clock:   {clock} (source {state.get('clock_source', cfg.clock.sync_source)})")
    for spec in cfg.uplinks:
        name, u = spec.name, st["uplinks"].get(spec.name)
        link = state.get(f"uplink:{name}:state", "unknown") if running else "down (agent not running)"
        print(f"uplink:  {name} {link} ({spec.describe}); since {age_text(state.get(f'uplink:{name}:changed'))}")
        if u is None:
            print("         not in the store yet (starts with the agent)")
            continue
        print(f"         last acknowledged publish: seq {u['last_ack_seq']} at {age_text(u['last_ack_at'])}; "
              f"{u['readings_buffered']} readings and {u['messages_unacked']} messages waiting, oldest "
              f"{age_text(u['oldest_unsent_ms'])}; {u['messages_rejected']} set aside, "
              f"{u['evicted_readings']} evicted")
    print(f"buffer:  {st['readings_buffered']} readings buffered, {st['messages_unacked']} messages unacknowledged, "
          f"{st['events_buffered']} events waiting; oldest unsent {age_text(st['oldest_unsent_ms'])}")
    print(f"         store {st['used_bytes'] / 1e6:.1f} MB used of {cfg.store.max_bytes / 1e6:.0f} MB; "
          f"{st['stored_readings']} readings stored and {st['evicted_readings']} evicted in total")
    known = {name: (link, reason, last_good) for name, link, reason, last_good in devices}
    print("devices:")
    for dev in cfg.devices:
        link, reason, last_good = known.get(dev.name, ("unknown", None, None))
        if not running:
            link = f"{link} (when the agent last ran)"
        extra = f" ({reason})" if reason else ""
        print(f"  {dev.name:<20} {link}{extra}; last good read {age_text(last_good)}")
    _print_active(active, running)
    return 0


def _print_active(active: list[tuple[str, str, str, int, dict]], running: bool) -> None:
    """Active alarms, bypasses and interlock conditions (agent/checks), oldest first, with age."""
    note = "" if running else " (when the agent last ran)"
    bypasses = sum(1 for _, kind, *_ in active if kind == "interlock_bypass")
    print(f"active:  {len(active)} alarms and conditions, {bypasses} bypasses{note}")
    for _key, kind, subject, start, data in active:
        detail = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], 0) or k == "overdue")
        print(f"  {kind:<24} {subject:<20} since {age_text(start)}" + (f"  {detail}" if detail else ""))
