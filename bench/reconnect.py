"""Back on air (issue 20): "platform back → first live delivery", per uplink kind, over repeated
outages.

One agent polls one 1 000-point unit every second and feeds three platforms at once: a
Mosquitto of its own (the MQTT uplink), the HTTP platform `mem` and the TCP platform `jiangsu`
of bench/uplinks.py (their records also carry `BACKFILL`, and the TCP one rfc3339 times). Each
outage stops all three (by PID) for `seconds`, long enough for any back-off to reach its cap,
then starts them again on the same ports. "Back" is the first moment each port accepts a
connection again (probed every few milliseconds); "first live delivery" is, for MQTT, the
`sent_at` of the first live `readings` message built after it (a subscriber with a persistent
session on a broker that keeps sessions gets every message, whenever it is back itself), and
for the platforms the arrival of the first message of live records collected after it.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from bench.common import (
    TOPIC_PREFIX,
    Unit,
    free_port,
    mosquitto_binary,
    quantile,
    start_agent,
    wait_port,
    wait_until,
)
from bench.live import Ctx
from bench.uplinks import (
    HTTP,
    MQTT,
    ORDER,
    TCP,
    Setup,
    setup,
    start_platform,
    stop_agent,
    stop_platforms,
)

PROBE = 0.005  # seconds between connection probes of a port coming back
LIVE_WAIT = 20.0  # seconds an uplink may take to deliver live readings after its platform is back


@dataclass
class Reconnect:
    outages: int
    seconds: float  # each outage's length
    delays: dict[str, list[float]] = field(default_factory=dict)  # uplink -> back → first live, s
    missed: dict[str, int] = field(default_factory=dict)  # outages with no live delivery within LIVE_WAIT

    def p(self, uplink: str, q: float) -> float:
        return quantile(self.delays.get(uplink, []), q)


class LiveWatch:
    """`sent_at` of every live readings message, from a persistent session (QoS 1)."""

    def __init__(self, port: int, gw: str):
        self.lock = threading.Lock()
        self.sent: list[float] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-live-{port}", clean_session=False)
        c.reconnect_delay_set(0.05, 0.2)
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(f"{TOPIC_PREFIX}/+/{gw}/readings", qos=1)
        c.on_message = self._message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _message(self, _c, _u, msg) -> None:  # noqa: ANN001
        body = orjson.loads(msg.payload)
        if body["readings"] and not any(r["backfill"] for r in body["readings"]):
            with self.lock:
                self.sent.append(datetime.fromisoformat(body["sent_at"]).timestamp())

    def first_after(self, t: float) -> float | None:
        with self.lock:
            return min((s for s in self.sent if s >= t), default=None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_broker_keeping_sessions(ctx: Ctx, port: int):  # noqa: ANN201
    """A Mosquitto that saves its sessions on SIGTERM and loads them at start."""
    conf = ctx.work / f"mosquitto-reconnect-{port}.conf"
    store = ctx.work / f"mosquitto-reconnect-{port}"
    store.mkdir(exist_ok=True)
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    f"persistence true\npersistence_location {store}/\nautosave_interval 3600\n")
    return ctx.procs.start("mosquitto-reconnect", [mosquitto_binary(), "-c", str(conf)])


def platform_first_live(db: Path, since: float) -> float | None:
    """Arrival of the first message of live records collected at or after `since`."""
    if not db.exists():
        return None
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        rows = c.execute("SELECT m.received_at, r.ts, r.body FROM platform_messages m JOIN platform_records r "
                         "ON r.data_id = m.data_id AND r.idx = 0 WHERE m.kind = 'readings'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        c.close()
    arrivals = [datetime.fromisoformat(at).timestamp() for at, ts, body in rows
                if isinstance(ts, str) and datetime.fromisoformat(ts).timestamp() >= since
                and str(orjson.loads(body).get("BACKFILL")).lower() == "false"]
    return min(arrivals, default=None)


def accepting(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def back_at(ports: dict[str, int], timeout: float = 60.0) -> dict[str, float]:
    """When each port first accepts a connection again (probed every PROBE s)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(ports) and time.monotonic() < deadline:
        for u, port in ports.items():
            if u not in seen and accepting(port):
                seen[u] = time.time()
        time.sleep(PROBE)
    if len(seen) < len(ports):
        raise RuntimeError(f"reconnect: {', '.join(u for u in ports if u not in seen)} did not come back")
    return seen


def platform_config(s: Setup) -> None:
    """Records carry BACKFILL; the TCP platform's times are rfc3339 (millisecond stamps)."""
    text = s.config.read_text().replace('time_format = "%Y-%m-%d %H:%M:%S"\n', "")
    s.config.write_text(text.replace("[uplinks.record]\n", '[uplinks.record]\nBACKFILL = "{backfill}"\n'))


def run(ctx: Ctx, unit: Unit, outages: int, seconds: float) -> Reconnect:
    port = free_port()
    ctx = replace(ctx, broker_port=port)
    broker = start_broker_keeping_sessions(ctx, port)
    wait_port(port, 30)
    s = setup(ctx, "reconnect", [unit], ORDER)
    platform_config(s)
    watch = LiveWatch(port, s.gw)
    for u in s.ports:
        start_platform(ctx, s, u)
    agent = start_agent(ctx.procs, s.config, s.name)
    result = Reconnect(outages, seconds, {u: [] for u in ORDER}, {u: 0 for u in ORDER})
    firsts = {MQTT: watch.first_after, HTTP: lambda t: platform_first_live(s.dbs[HTTP], t),
              TCP: lambda t: platform_first_live(s.dbs[TCP], t)}
    try:
        if not wait_until(lambda: all(f(0.0) for f in firsts.values()), 60, 0.25):
            raise RuntimeError(f"reconnect: not every uplink delivered live readings:\n{ctx.procs.log_tail(s.name)}")
        for _ in range(outages):
            ctx.procs.stop(broker)
            stop_platforms(ctx, s)
            time.sleep(seconds)
            broker = start_broker_keeping_sessions(ctx, port)
            for u in s.ports:
                start_platform(ctx, s, u, wait=False)
            back = back_at({MQTT: port, **s.ports})
            for u, t in back.items():
                first = None
                deadline = time.monotonic() + LIVE_WAIT
                while first is None and time.monotonic() < deadline:
                    first = firsts[u](t)
                    time.sleep(0.05)
                if first is None:
                    result.missed[u] += 1
                else:
                    result.delays[u].append(first - t)
            time.sleep(1.0)
    finally:
        stop_agent(ctx, agent, s.name)
        stop_platforms(ctx, s)
        ctx.procs.stop(broker)
        watch.close()
    return result
