"""`hazgate status`: device links, buffer, uplink and active conditions, from the store,
whether or not the agent runs. Running means a heartbeat in the store from the last 15 s, or,
when the store cannot take one (a full disk), the agent's pid file (agent/common/running.py)
naming a live process, and never after a clean stop (PID 0 in the pid file). Given the applied
config's view (the file on disk is broken), it says so first."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from agent.common.running import AppliedConfig, running_pid, stopped_cleanly
from agent.common.timefmt import rfc3339
from agent.config.gateway import GatewayConfig
from agent.pipeline.declarations import Ledger
from agent.tools.store_view import age_text, applied_note, open_store

HEARTBEAT_STALE_MS = 15_000
FULL_BYTES = 1 << 20  # less free space than this for the agent's user: the disk is full


def status(config: GatewayConfig | AppliedConfig) -> int:
    cfg = config if isinstance(config, AppliedConfig) else AppliedConfig.of(config)
    store = open_store(cfg.data_dir)
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
    stopped = stopped_cleanly(cfg.data_dir)
    fresh = not stopped and beat is not None and time.time() * 1000 - beat < HEARTBEAT_STALE_MS
    pid = None if fresh or stopped else running_pid(cfg.data_dir)
    running = fresh or pid is not None
    agent = "running" if fresh else "not running" if pid is None else f"running ({_no_heartbeat(cfg.data_dir)}; pid {pid})"
    as_of = "" if fresh else " (at its last heartbeat)" if running else " (when the agent last ran)"
    if isinstance(config, AppliedConfig):
        print(applied_note(config))
    print(f"gateway {cfg.gateway_id} ({cfg.path})")
    print(f"agent:   {agent}; started {age_text(state.get('started_at'))}; last heartbeat {age_text(beat)}")
    synced = state.get("clock_synchronized")
    clock = "unknown" if synced is None else ("synchronized" if synced else
                                                "NOT synchronized: readings are marked uncertain")
    print(f"clock:   {clock} (source {state.get('clock_source', cfg.clock_source)})")
    for name, where in cfg.uplinks:
        u = st["uplinks"].get(name)
        link = state.get(f"uplink:{name}:state", "unknown") if running else "down (agent not running)"
        if running and link == "down" and (reason := state.get(f"uplink:{name}:reason")):
            link = f"down: {reason}"
        print(f"uplink:  {name} {link} ({where}); since {age_text(state.get(f'uplink:{name}:changed'))}")
        if u is None:
            print("         not in the store yet (starts with the agent)")
            continue
        print(f"         last acknowledged publish: seq {u['last_ack_seq']} at {age_text(u['last_ack_at'])}; "
              f"{u['readings_buffered']} readings and {u['messages_unacked']} messages waiting, oldest "
              f"{age_text(u['oldest_unsent_ms'])}; {u['messages_rejected']} set aside, "
              f"{u['evicted_readings']} evicted")
    print(f"buffer:  {st['readings_buffered']} readings buffered, {st['messages_unacked']} messages unacknowledged, "
          f"{st['events_buffered']} events waiting; oldest unsent {age_text(st['oldest_unsent_ms'])}")
    print(f"         store {st['used_bytes'] / 1e6:.1f} MB used of {cfg.max_bytes / 1e6:.0f} MB; "
          f"{st['stored_readings']} readings stored and {st['evicted_readings']} evicted in total")
    known = {name: (link, reason, last_good) for name, link, reason, last_good in devices}
    print("devices:")
    for dev in cfg.devices:
        link, reason, last_good = known.get(dev, ("unknown", None, None))
        extra = f" ({reason})" if reason else ""
        print(f"  {dev:<20} {link}{as_of}{extra}; last good read {age_text(last_good)}")
    _print_active(active, as_of)
    _print_declared(cfg.data_dir)
    return 0


def _print_declared(data_dir: Path) -> None:
    """The declared stops in force (`hazgate declare`), oldest first."""
    try:
        ledger = Ledger(data_dir, create=False)
        try:
            stops = sorted(ledger.active().values(), key=lambda d: d.at_ms)
        finally:
            ledger.close()
    except (sqlite3.Error, OSError) as exc:
        print(f"declared: cannot read the declarations in {data_dir}: {exc}")
        return
    print(f"declared: {len(stops)} stops in force")
    now = time.time() * 1000
    for d in stops:
        until = "" if d.until_ms is None else f"; until {rfc3339(d.until_ms)}" + (
            " EXPIRED" if now >= d.until_ms else "")
        print(f"  {d.subject:<20} by {d.by} since {age_text(d.at_ms)}: {d.reason}{until}")


def _no_heartbeat(data_dir: Path) -> str:
    """Why a running agent writes no heartbeat, as far as the file system tells."""
    try:
        fs = os.statvfs(data_dir)
    except OSError as exc:
        return f"store not writable: {data_dir}: {exc.strerror}"
    if fs.f_flag & os.ST_RDONLY:
        return f"store not writable: the file system of {data_dir} is read-only"
    free = fs.f_bavail * fs.f_frsize
    if free < FULL_BYTES:
        return f"store not writable: the disk of {data_dir} is full ({free} bytes free)"
    return "no heartbeat in the store: it is starting, or its store refuses writes (see the journal)"


def _print_active(active: list[tuple[str, str, str, int, dict]], note: str) -> None:
    """Active alarms, bypasses and interlock conditions (agent/checks), oldest first, with age."""
    bypasses = sum(1 for _, kind, *_ in active if kind == "interlock_bypass")
    print(f"active:  {len(active)} alarms and conditions, {bypasses} bypasses{note}")
    for _key, kind, subject, start, data in active:
        detail = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], 0) or k == "overdue")
        print(f"  {kind:<24} {subject:<20} since {age_text(start)}" + (f"  {detail}" if detail else ""))
