"""A live terminal view of what a gateway publishes, fed by its own MQTT subscription.

Shows the latest reading of every point, grouped by device as the gateway config maps them
(value, unit, quality, reason, age), the uplink sequence counter and the last events. On a
terminal it redraws in place (rich Live); without one (a pipe, a file) it prints a plain
snapshot every few seconds, so `hazgate demo --duration 10 > out.txt` leaves a readable log.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from agent.config.gateway import GatewayConfig
from agent.north.mqtt.client import Events, MQTTMessage, MqttOptions, MqttSession
from agent.north.mqtt.schema import topic

QUALITY_STYLE = {"good": "green", "uncertain": "yellow", "bad": "bold red"}
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "alarm": "bold red", "critical": "bold white on red"}
EVENTS_SHOWN = 8
ACTIVE_SHOWN = 10
ENDS = ("cleared", "off", "reset")  # event states that end an active alarm, bypass or trip
SEQUENCED = ("readings", "events", "meta")


@dataclass
class ProcessRow:
    """One child process as the view shows it (the demo supplies these)."""

    name: str
    pid: int | None
    running: bool
    note: str = ""  # e.g. the exit code and the last line it printed


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(value)


class LiveState:
    """What the subscription has seen so far; fed from paho's thread, read by the renderer."""

    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.devices = [(d.name, d.endpoint, d.poll_interval, [(p.tag, p.unit) for p in d.points])
                        for d in cfg.devices]
        self.lock = threading.Lock()
        self.latest: dict[str, dict] = {}
        self.events: deque[dict] = deque(maxlen=EVENTS_SHOWN)
        self.active: dict[tuple, dict] = {}  # alarms, bypasses, trips now on (from the events)
        self.status: dict | None = None
        self.counts = {k: 0 for k in (*SEQUENCED, "status")}
        self.last_seq: int | None = None
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.invalid = 0
        self.readings = 0

    def feed(self, kind: str, payload: bytes, retain: bool) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        with self.lock:
            if not isinstance(body, dict):
                self.invalid += 1
                return
            if kind in self.counts:
                self.counts[kind] += 1
            seq = body.get("seq")
            if kind in SEQUENCED and isinstance(seq, int) and not retain:
                if seq in self.seqs:
                    self.duplicates += 1
                self.seqs.add(seq)
                self.last_seq = max(seq, self.last_seq or 0)
            if kind == "status":
                self.status = body
            elif kind == "readings":
                for r in body.get("readings", []):
                    tag = r.get("tag")
                    if not isinstance(tag, str):
                        continue
                    self.readings += 1
                    old = self.latest.get(tag)
                    if old is None or (_ts(r.get("ts")) or 0) >= (_ts(old.get("ts")) or 0):
                        self.latest[tag] = r
            elif kind == "events":
                for ev in body.get("events", []):
                    if isinstance(ev, dict):
                        self.events.append(ev)
                        self._track(ev)

    def _track(self, ev: dict) -> None:
        if ev.get("source") == "gateway":
            return
        key = (ev.get("kind"), ev.get("interlock"), ev.get("tag") if ev.get("kind") != "interlock_bypass" else None,
               ev.get("cause"))
        if ev.get("state") in ENDS:
            self.active.pop(key, None)
        else:
            self.active[key] = ev

    def gaps(self) -> int:
        """Sequence numbers missing between the first and the last one seen live."""
        if not self.seqs:
            return 0
        return max(self.seqs) - min(self.seqs) + 1 - len(self.seqs)


def _console() -> Console:
    """A console for stdout; 120 columns when it is not a terminal and COLUMNS is not set."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


class LiveView(Events):
    def __init__(self, cfg: GatewayConfig, *, title: str = "hazgate",
                 processes: Callable[[], list[ProcessRow]] | None = None, console: Console | None = None):
        self.cfg, self.title, self.processes = cfg, title, processes
        self.state = LiveState(cfg)
        self.console = console or _console()
        self.started = time.monotonic()
        self.connected_now = False
        self.connect_error = ""
        up = cfg.mqtt
        self.filter = topic(up.topic_prefix, cfg.enterprise_code, cfg.gateway_id, "#")
        self.session = MqttSession(MqttOptions(
            host=up.host, port=up.port, client_id=f"hazgate-liveview-{uuid.uuid4().hex[:8]}",
            reconnect=(0.2, 2.0)), self)

    # --- subscription (MqttSession events, on paho's thread) ---------------------------------
    def connected(self, session_present: bool) -> None:
        self.connected_now, self.connect_error = True, ""
        self.session.subscribe([(self.filter, 1)])

    def refused(self, reason: str) -> None:
        self.connect_error = reason

    def lost(self, reason: str) -> None:
        self.connected_now = False
        self.connect_error = reason

    def message(self, msg: MQTTMessage) -> None:
        self.state.feed(msg.topic.rsplit("/", 1)[-1], msg.payload, bool(msg.retain))

    def start(self) -> None:
        """Connect in the background (paho retries until the broker answers)."""
        self.session.start()

    def stop(self) -> None:
        self.session.close()

    # --- rendering -----------------------------------------------------------------------
    def _header(self, now: float) -> Text:
        s = self.state
        t = Text()
        t.append(f"{self.title}", style="bold")
        t.append(f"  gateway {self.cfg.gateway_id}  enterprise {self.cfg.enterprise_code}"
                 f"  t+{time.monotonic() - self.started:.0f}s\n")
        t.append(f"broker {self.cfg.mqtt.broker}  uplink ")
        st = (s.status or {}).get("state")
        if st == "online":
            t.append("online", style="green")
            t.append(f" (v{s.status.get('version', '?')}, started {s.status.get('started_at', '?')})")
        elif st:
            t.append(st, style="bold red")
        else:
            t.append("no status yet", style="dim")
        if not self.connected_now:
            t.append(f"  view not connected {self.connect_error}".rstrip(), style="yellow")
        uplinks = (s.status or {}).get("uplinks") if st == "online" else None
        if isinstance(uplinks, dict) and uplinks:  # every uplink of the gateway, from its status
            t.append("\nuplinks:")
            for name, u in uplinks.items():
                state = u.get("state", "?") if isinstance(u, dict) else "?"
                t.append(f" {name} ")
                t.append(state, style="green" if state == "up" else "bold red")
                if isinstance(u, dict):
                    t.append(f" ({u.get('acked', 0)} acked" + (f", {u['rejected']} refused" if u.get("rejected") else "")
                             + (f", {u['last_error']}" if state != "up" and u.get("last_error") else "") + ")")
        c = s.counts
        t.append(f"\nseq {s.last_seq if s.last_seq is not None else '—'}  messages: readings {c['readings']},"
                 f" events {c['events']}, meta {c['meta']}  readings received {s.readings}  gaps ")
        gaps = s.gaps()
        t.append(str(gaps), style="bold red" if gaps else "green")
        if s.duplicates:
            t.append(f"  duplicates {s.duplicates}", style="yellow")
        if s.invalid:
            t.append(f"  not JSON {s.invalid}", style="red")
        return t

    def _processes(self) -> Text | None:
        if not self.processes:
            return None
        t = Text("processes: ")
        for i, p in enumerate(self.processes()):
            if i:
                t.append("  |  ")
            t.append(f"{p.name}" + (f" {p.pid} " if p.pid else " "))
            t.append("up" if p.running else "stopped", style="green" if p.running else "bold red")
            if p.note:
                t.append(f" ({p.note})", style="dim" if p.running else "red")
        return t

    def _readings(self, now: float) -> Table:
        table = Table(title="latest readings", title_justify="left", expand=False, pad_edge=False)
        table.add_column("device", no_wrap=True)
        table.add_column("tag", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        table.add_column("unit", no_wrap=True)
        table.add_column("quality", no_wrap=True)
        table.add_column("reason", max_width=40, no_wrap=True, overflow="ellipsis")
        table.add_column("age s", justify="right", no_wrap=True)
        with self.state.lock:
            latest = dict(self.state.latest)
        for i, (name, endpoint, interval, points) in enumerate(self.state.devices):
            if i:
                table.add_section()
            for j, (tag, unit) in enumerate(points):
                sub = {1: f"  {endpoint}", 2: f"  every {interval:g}s"}.get(j, "")
                device = Text(name, style="bold") if j == 0 else Text(sub, style="dim")
                r = latest.get(tag)
                if r is None:
                    table.add_row(device, tag, "—", unit, Text("waiting", style="dim"), "", "")
                    continue
                quality = str(r.get("quality", "?"))
                ts = _ts(r.get("ts"))
                age = f"{max(0.0, now - ts):.1f}" if ts else "?"
                table.add_row(device, tag, format_value(r.get("value")), str(r.get("unit", unit)),
                              Text(quality, style=QUALITY_STYLE.get(quality, "")), str(r.get("reason") or ""), age)
        return table

    def _events(self) -> Table:
        table = Table(title=f"last events (up to {EVENTS_SHOWN})", title_justify="left", pad_edge=False)
        for col in ("ts", "severity", "kind", "about", "state", "value", "limit"):
            table.add_column(col, no_wrap=True)
        with self.state.lock:
            events = list(self.state.events)
        for ev in reversed(events):
            sev = str(ev.get("severity", ""))
            about = "/".join(x for x in (ev.get("interlock"), ev.get("tag")) if x) or ev.get("device") or ""
            ts = str(ev.get("ts", ""))
            table.add_row(ts[11:23] if len(ts) >= 23 else ts, Text(sev, style=SEVERITY_STYLE.get(sev, "")),
                          str(ev.get("kind", "")), str(about), str(ev.get("state", "")),
                          format_value(ev.get("value")), format_value(ev.get("limit")))
        if not events:
            table.add_row(Text("(none yet)", style="dim"), "", "", "", "", "", "")
        return table

    def _active(self, now: float) -> Table:
        table = Table(title="active alarms, bypasses and interlock conditions", title_justify="left", pad_edge=False)
        for col in ("severity", "kind", "about", "state", "value", "limit", "for s"):
            table.add_column(col, no_wrap=True)
        with self.state.lock:
            active = sorted(self.state.active.values(), key=lambda e: str(e.get("start", e.get("ts", ""))))
        for ev in active[:ACTIVE_SHOWN]:
            sev = str(ev.get("severity", ""))
            about = "/".join(x for x in (ev.get("interlock"), ev.get("tag")) if x)
            state = str(ev.get("state", "")) + (f" ({ev['cause']})" if ev.get("cause") else "")
            start = _ts(ev.get("start") or ev.get("ts"))
            table.add_row(Text(sev, style=SEVERITY_STYLE.get(sev, "")), str(ev.get("kind", "")), about, state,
                          format_value(ev.get("value")), format_value(ev.get("limit")),
                          f"{max(0.0, now - start):.0f}" if start else "?")
        if not active:
            table.add_row(Text("(none)", style="dim"), "", "", "", "", "", "")
        return table

    def render(self) -> Group:
        now = time.time()
        parts = [self._header(now)]
        if (procs := self._processes()) is not None:
            parts.append(procs)
        parts += [self._readings(now), self._active(now), self._events()]
        return Group(*parts)

    # --- running -------------------------------------------------------------------------
    def run(self, until: Callable[[], bool], snapshot_every: float = 2.0) -> None:
        """Show the view until `until()` is true (KeyboardInterrupt passes through)."""
        console = self.console
        if console.is_terminal and not console.is_dumb_terminal:
            from rich.live import Live

            with Live(get_renderable=self.render, console=console, refresh_per_second=2,
                      screen=False, redirect_stderr=False):
                while not until():
                    time.sleep(0.1)
            return
        next_snapshot = time.monotonic() + snapshot_every
        try:
            while not until():
                time.sleep(0.1)
                if time.monotonic() >= next_snapshot:
                    self.snapshot()
                    next_snapshot += snapshot_every
        finally:
            self.snapshot("final")

    def snapshot(self, label: str = "snapshot") -> None:
        """Print the view once, plainly (no cursor movement): for logs and pipes."""
        self.console.rule(f"{label} t+{time.monotonic() - self.started:.1f}s", align="left")
        self.console.print(self.render())
        self.console.file.flush()
