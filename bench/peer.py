"""The peer: hazgate beside the ThingsBoard IoT Gateway, same plant, same broker, same windows.

The ThingsBoard IoT Gateway (PyPI `thingsboard-gateway`, pinned) is installed on demand into a
virtual environment of its own, kept in a cache (HAZGATE_BENCH_CACHE, default
~/.cache/hazgate-bench; empty: the bench's temp folder) so later runs reuse it; it is never a
dependency of hazgate. When it cannot be installed the phase is skipped with the reason.

Both gateways run at once, polling the same simulated units every second through one Mosquitto
of this phase (persistent, so a broker restart loses nothing it accepted) and one counting
subscriber, for 1 000 then 10 000 points. Each size: a measured window (each process's CPU from
/proc, RSS, readings delivered), then the broker stopped for 20 s and started again (readings lost
and duplicated, time to deliver the backlog, fastest delivered rate), then the broker stopped
again and both gateways SIGKILLed during the outage, broker and gateways started again (readings
stamped before the kill that never arrive, duplicates, age of the newest reading kept).

Counting is the same for both: every reading is counted per (device, point, poll stamp); a poll
missing from a device's one-second series, or a point missing from a delivered poll, is lost; a
point of a poll arriving twice is a duplicate. The peer sends nothing until a ThingsBoard server
answers its session-limits request: the subscriber answers as a self-hosted ThingsBoard does by
default (no rate limits, 64 KB messages, 100 in flight). Its update check is pointed at a closed
loopback port, so nothing leaves the machine.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from bench.common import (
    Procs,
    Stamps,
    Unit,
    cpu_seconds,
    free_port,
    gateway_toml,
    rss_bytes,
    start_agent,
    start_broker,
    wait_until,
)
from bench.live import Ctx
from bench.report import Row, fmt_mb, fmt_pct, fmt_rate, fmt_s, fmt_us, ratio, text, verdict

TB_VERSION = "3.8.5"
# its Modbus connector pip-installs these (pymodbus pinned to 3.9.2) at first start if absent
TB_PACKAGES = (f"thingsboard-gateway=={TB_VERSION}", "pymodbus==3.9.2", "pyserial==3.5", "pyserial-asyncio==0.6")
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 90.0  # start to first delivered reading, each gateway
OUTAGE_S = 20.0  # the broker stays away this long (quick and full mode alike)
KILL_AFTER = 5.0  # seconds into the second outage the gateways are SIGKILLed
# what a self-hosted ThingsBoard answers getSessionLimits by default: tenant profile without
# rate limits (null), MQTT max payload 65 536 B, 100 messages in flight per device
SESSION_LIMITS = {"maxPayloadSize": 65536, "maxInflightMessages": 100,
                  "rateLimits": {"messages": None, "telemetryMessages": None, "telemetryDataPoints": None},
                  "gatewayRateLimits": {"messages": None, "telemetryMessages": None, "telemetryDataPoints": None}}
RPC_REQUEST, RPC_RESPONSE = "v1/devices/me/rpc/request/", "v1/devices/me/rpc/response/"
TELEMETRY = "v1/gateway/telemetry"
HAZGATE_GW = "GW-PEER"
PEER_TOKEN = "bench-peer"  # its access token: its MQTT user name
COUNTER_USER = "bench-counter"
# a ThingsBoard server does not echo a device's own RPC requests back to it; Mosquitto would (the
# peer subscribes to v1/devices/me/rpc/request/+ for server-side calls, would take its own
# getSessionLimits for one and answer it with an error that races the bench's answer). The
# subscriber has a user name: Mosquitto 2.0 denies an anonymous session restored from its
# persistence file what it queues while the client is away. hazgate connects anonymously.
ACL = f"""topic readwrite #
user {COUNTER_USER}
topic readwrite #
user {PEER_TOKEN}
topic write #
topic read {RPC_RESPONSE}#
topic read v1/devices/me/attributes/#
topic read v1/gateway/#
topic read v2/#
"""
# the peer's own entry point would look for updates at https://updates.thingsboard.io (no config
# key turns it off): this one points it at a closed loopback port, then starts the gateway as
# thingsboard_gateway.tb_gateway.main does
LAUNCHER = """\
import os, sys
os.chdir(sys.argv[1])
os.makedirs("logs", exist_ok=True)
from thingsboard_gateway.tb_utility import tb_updater
tb_updater.UPDATE_SERVICE_BASE_URL = sys.argv[2]
from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService
TBGatewayService(os.path.join(sys.argv[1], "tb_gateway.json"))
"""


# --- installing the peer ---------------------------------------------------------------------
def cache_dir(work: Path) -> Path:
    env = os.environ.get("HAZGATE_BENCH_CACHE")
    if env is not None:
        return Path(env) if env else work
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hazgate-bench"


def install(work: Path) -> tuple[Path | None, str]:
    """(python of the peer's venv, how it was found) or (None, why it cannot be had)."""
    base = cache_dir(work)
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = open(base / f"tb-{TB_VERSION}.lock", "w")  # noqa: SIM115 - held until installed
    except OSError:
        base = work
        lock = open(base / f"tb-{TB_VERSION}.lock", "w")  # noqa: SIM115
    venv, done = base / f"tb-{TB_VERSION}", base / f"tb-{TB_VERSION}" / ".complete"
    py = venv / "bin" / "python"
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another bench run installing the same venv
        if done.exists() and done.read_text() == "\n".join(TB_PACKAGES) and _imports(py):
            return py, f"cached in {venv}"
        shutil.rmtree(venv, ignore_errors=True)
        base_py = getattr(sys, "_base_executable", sys.executable)
        steps = [[base_py, "-m", "venv", str(venv)],
                 [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *TB_PACKAGES]]
        t0 = time.monotonic()
        for argv in steps:
            left = INSTALL_TIMEOUT - (time.monotonic() - t0)
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=max(1.0, left), check=False)
            except subprocess.TimeoutExpired:
                return None, f"{' '.join(argv[1:4])} took over {INSTALL_TIMEOUT:.0f} s"
            if r.returncode:
                lines = [x for x in r.stderr.splitlines() if x.strip() and "is ignored" not in x]
                return None, f"{' '.join(argv[1:4])} failed: {lines[-1] if lines else r.returncode}"
        done.write_text("\n".join(TB_PACKAGES))
        return py, f"installed in {venv} ({time.monotonic() - t0:.0f} s)"
    finally:
        lock.close()


def _imports(py: Path) -> bool:
    """The cached venv still works (its base interpreter may have gone)."""
    try:
        return subprocess.run([str(py), "-c", "import thingsboard_gateway"], capture_output=True,
                              timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --- configuring and starting it --------------------------------------------------------------
def peer_keys(u: Unit) -> list[str]:
    """The peer's key of every point of `u`, in the order of u.tags(): its wide-range reads name a
    value by a template on its address."""
    return [("F" if role == "f" else "I") + str(addr) for _tag, addr, _t, _s, role in u.tags()]


def _slave(u: Unit) -> dict:
    ints = 2 * u.n_float
    series = [{"tag": "F${address}", "type": "32float", "functionCode": 3, "objectsCount": 2,
               "address": f"0-{ints - 1}", "maxRegistersPerRequest": 124}]
    if u.n_int:
        series.append({"tag": "I${address}", "type": "16int", "functionCode": 3, "objectsCount": 1,
                       "address": f"{ints}-{ints + u.n_int - 1}", "divider": 10, "maxRegistersPerRequest": 125})
    return {"host": "127.0.0.1", "port": u.port, "type": "tcp", "method": "socket", "unitId": u.unit,
            "deviceName": u.name, "deviceType": "plc", "timeout": 1, "byteOrder": "BIG", "wordOrder": "BIG",
            "retries": 1, "pollPeriod": 1000, "connectAttemptTimeMs": 5000, "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 30000, "attributes": [], "timeseries": series,
            "attributeUpdates": [], "rpc": []}


def peer_config(folder: Path, broker_port: int, units: list[Unit]) -> Path:
    """tb_gateway.json, logs.json and modbus.json for `units`, every second, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    main = {
        "thingsboard": {
            "host": "127.0.0.1", "port": broker_port, "qos": 1,
            "security": {"type": "accessToken", "accessToken": PEER_TOKEN},
            "remoteShell": False, "remoteConfiguration": False, "latencyDebugMode": False,
            "statistics": {"enable": False, "enableCustom": False, "statsSendPeriodInSeconds": 3600,
                           "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 65536, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": False,
            "syncDevicesSharedAttributesOnConnect": False,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False, "inactivityTimeoutSeconds": 300,
                                       "inactivityCheckPeriodSeconds": 10},
        },
        # its durable storage (its default is "memory"); the rest are its defaults
        "storage": {"type": "sqlite", "data_file_path": f"{folder}/data/", "messages_ttl_check_in_hours": 1,
                    "messages_ttl_in_days": 7, "max_read_records_count": 1000, "writing_batch_size": 1000,
                    "size_limit": 1024, "max_db_amount": 10},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    names = ("database", "service", "connector", "converter", "tb_connection", "storage", "extension")
    logs = {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                                     "stream": "ext://sys.stderr"}},
            "loggers": {n: {"handlers": ["console"], "level": "WARNING", "propagate": False} for n in names},
            "root": {"level": "ERROR", "handlers": ["console"]}}  # as shipped: pymodbus warns at every decode
    modbus = {"name": "Modbus", "logLevel": "WARNING", "master": {"slaves": [_slave(u) for u in units]}}
    (folder / "logs.json").write_text(json.dumps(logs, indent=1))
    (folder / "modbus.json").write_text(json.dumps(modbus, indent=1))
    (folder / "launch.py").write_text(LAUNCHER)
    path = folder / "tb_gateway.json"
    path.write_text(json.dumps(main, indent=1))
    return path


def start_peer(procs: Procs, py: Path, config: Path, update_url: str, name: str) -> subprocess.Popen:
    return procs.start(name, [str(py), "-I", str(config.parent / "launch.py"), str(config.parent), update_url])


# --- counting -------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What one gateway delivered, per poll (device, stamp): how often each point arrived, when."""

    index: dict[str, dict[str, int]]  # device -> point key -> position
    polls: dict[tuple[str, float], list] = field(default_factory=dict)  # -> [counts, first, last arrival]
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (arrival, readings) per message
    readings: int = 0
    first: float = 0.0  # arrival of the first reading

    def add(self, now: float, device: str, ts: float, keys) -> int:  # noqa: ANN001
        idx = self.index[device]
        p = self.polls.get((device, ts))
        if p is None:
            p = self.polls[(device, ts)] = [bytearray(len(idx)), now, now]
        counts, n = p[0], 0
        for k in keys:
            i = idx[k]
            if counts[i] < 255:
                counts[i] += 1
            n += 1
        p[2] = now
        return n


class Counter:
    """The platform both gateways talk to: counts hazgate's readings (hazchem/+/+/readings) and the
    peer's (v1/gateway/telemetry) and answers the peer's getSessionLimits. A persistent session,
    reconnecting within 0.2 s, so a broker restart loses nothing addressed to it."""

    def __init__(self, port: int, units: list[Unit]):
        self.lock = threading.Lock()
        self.limits_answered = 0
        self.errors, self.error = 0, ""  # messages it could not count, the first one's error
        self._stamp = Stamps()
        self._unit = {tag: u.name for u in units for tag, *_r in u.tags()}
        self.hazgate = Tally({u.name: {t: i for i, (t, *_r) in enumerate(u.tags())} for u in units})
        self.peer = Tally({u.name: {k: i for i, k in enumerate(peer_keys(u))} for u in units})
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-peer-counter-{port}", clean_session=False)
        c.on_message = self._on_message
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(
            [("hazchem/+/+/readings", 1), (TELEMETRY, 1), (RPC_REQUEST + "+", 1)])
        c.reconnect_delay_set(0.1, 0.2)
        c.username_pw_set(COUNTER_USER)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not wait_until(c.is_connected, 10, 0.02):
            raise RuntimeError("peer: the counting subscriber could not connect")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, _u, msg) -> None:  # noqa: ANN001
        try:
            self._count(client, msg)
        except Exception as exc:  # noqa: BLE001 - a message it cannot count is reported, not fatal
            self.errors += 1
            self.error = self.error or f"{msg.topic}: {exc!r}"

    def _count(self, client, msg) -> None:  # noqa: ANN001
        now = time.time()
        topic = msg.topic
        if topic.startswith(RPC_REQUEST):
            body = orjson.loads(msg.payload)
            if body.get("method") == "getSessionLimits":
                client.publish(RPC_RESPONSE + topic[len(RPC_REQUEST):], orjson.dumps(SESSION_LIMITS), qos=1)
                self.limits_answered += 1
            return
        body = orjson.loads(msg.payload)
        with self.lock:
            if topic == TELEMETRY:
                t, n = self.peer, 0
                for device, series in body.items():
                    if device in t.index:
                        for item in series:
                            n += t.add(now, device, item["ts"] / 1000, item["values"])
            else:
                t, n, groups = self.hazgate, 0, {}
                for r in body["readings"]:
                    groups.setdefault((self._unit[r["tag"]], r["ts"]), []).append(r["tag"])
                for (dev, ts), tags in groups.items():
                    n += t.add(now, dev, self._stamp(ts), tags)
            t.readings += n
            t.arrivals.append((now, n))
            t.first = t.first or now

    def count(self, t: Tally) -> int:
        with self.lock:
            return t.readings


@dataclass
class Audit:
    """Readings of polls stamped in [lo, hi): lost and duplicated; at a kill, the newest kept."""

    lost: int = 0
    duplicates: int = 0
    polls: int = 0
    newest_age: float = math.nan  # at a kill: age of the newest reading kept, worst device
    gaps: list[tuple[str, float, float]] = field(default_factory=list)  # (device, from, to): polls missing


def audit(c: Counter, t: Tally, lo: float, hi: float, kill: bool = False) -> Audit:
    """Lost: points missing from delivered polls, and whole polls missing from each device's 1 s
    series (a gap of n s between stamps, or to `lo` or `hi`: n - 1 polls). With `kill` (hi is
    the kill), the polls due after the last one kept and more than 0.1 s before the kill are
    lost too. Duplicates: arrivals of a point of a poll beyond the first."""
    a, ages = Audit(), []
    by_dev: dict[str, list[float]] = {d: [] for d in t.index}
    with c.lock:
        for (dev, ts), (counts, _first, _last) in t.polls.items():
            if lo <= ts < hi:
                by_dev[dev].append(ts)
                zeros = counts.count(0)
                a.lost += zeros
                a.duplicates += sum(counts) - (len(counts) - zeros)
                a.polls += 1
    for dev, stamps in by_dev.items():
        size, series = len(t.index[dev]), [lo, *sorted(stamps)]
        missing = [(x, y, round(y - x) - 1) for x, y in zip(series, series[1:], strict=False)]
        last = series[-1]
        missing.append((last, hi, math.floor(hi - last - 0.1) if kill else round(hi - last) - 1))
        for x, y, k in missing:
            if k > 0:
                a.lost += k * size
                a.gaps.append((dev, x, y))
        if kill:
            ages.append(hi - last)
    a.newest_age = max(ages) if ages else math.nan
    return a


def settled(c: Counter, t: Tally, before: float, after: float, quiet: float = 5.0) -> bool:
    """Every device has delivered a poll stamped after `after`, and no reading stamped before
    `before` has arrived for `quiet` seconds: what is still missing will not come."""
    now = time.time()
    with c.lock:
        live = {dev for (dev, ts) in t.polls if ts > after}
        last = max((p[2] for (_d, ts), p in t.polls.items() if ts < before), default=0.0)
    return live == set(t.index) and now - last > quiet


def backlog(c: Counter, t: Tally, since: float, back: float) -> tuple[float, float, float]:
    """After the broker is back at `back`: (seconds to the first reading delivered, seconds to the
    last reading stamped in [since, back), fastest delivered rate in any whole second until then)."""
    with c.lock:
        done = max((last for (_d, ts), (_c, _f, last) in t.polls.items() if since <= ts < back), default=math.nan)
        arrivals = [(at, n) for at, n in t.arrivals if at >= back]
    if math.isnan(done) or not arrivals:
        return math.nan, math.nan, math.nan
    bins: dict[int, int] = {}
    for at, n in arrivals:
        if at <= done + 1:
            bins[int(at - back)] = bins.get(int(at - back), 0) + n
    return arrivals[0][0] - back, done - back, max(bins.values(), default=0)


def gap_note(who: str, points: int, what: str, a: Audit, ref: float) -> str:
    """Where the polls counted lost are missing, in seconds from the broker's stop, for the notes."""
    spans = ", ".join(f"{dev} {x - ref:+.1f}→{y - ref:+.1f} s" for dev, x, y in a.gaps[:4])
    more = f" and {len(a.gaps) - 4} more" if len(a.gaps) > 4 else ""
    return (f"peer phase, {who} at {points:,} points, {what}: {a.lost:,} readings lost; stamps on either side of "
            f"the polls missing, from the broker's stop: {spans}{more}")


# --- one size ---------------------------------------------------------------------------------------
@dataclass
class Side:
    """One gateway's figures at one size."""

    startup: float = math.nan  # start to first reading delivered
    cpu_s: float = 0.0
    delivered: int = 0
    seconds: float = math.nan
    rss: int = 0
    polls_per_s: float = math.nan  # per device, in the window
    outage: Audit = field(default_factory=Audit)
    first_s: float = math.nan  # broker back to the first reading delivered
    drain_s: float = math.nan
    peak_rate: float = math.nan
    kill: Audit = field(default_factory=Audit)
    exit_code: int | None = None

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.delivered * 1e6 if self.delivered else math.nan

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds


@dataclass
class Size:
    points: int
    hazgate: Side
    peer: Side
    limits_answered: int = 0
    notes: list[str] = field(default_factory=list)


def _polls_in(c: Counter, t: Tally, lo: float, hi: float) -> int:
    with c.lock:
        return sum(1 for (_d, ts) in t.polls if lo <= ts < hi)


def run_size(ctx: Ctx, py: Path, units: list[Unit], warm: float, window: float, drain_timeout: float) -> Size:
    procs, work = ctx.procs, ctx.work
    n = sum(u.n_points for u in units)
    port, persist = free_port(), work / f"peer-broker-{n}"
    persist.mkdir()
    broker = start_broker(procs, port, name="mosquitto-peer", persist=persist, acl=ACL)
    c = Counter(port, units)
    update_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the update check fails at once
    hg_cfg = gateway_toml(work, f"peer-hazgate-{n}", HAZGATE_GW, port, units, "1s")
    tb_cfg = peer_config(work / f"peer-tb-{n}", port, units)
    size = Size(n, Side(), Side())
    sides = ((size.hazgate, c.hazgate), (size.peer, c.peer))
    hg = tb = None
    stops: list[float] = []  # when the broker was stopped

    def start() -> None:
        nonlocal hg, tb
        hg = start_agent(procs, hg_cfg, f"peer-hazgate-{n}")
        tb = start_peer(procs, py, tb_cfg, update_url, f"peer-tb-{n}")

    try:
        t_start = time.time()
        start()
        for side, t in sides:
            if not wait_until(lambda t=t: c.count(t) > 0, START_TIMEOUT):
                who = "hazgate" if t is c.hazgate else "peer"
                log = procs.log_tail(f"peer-{'hazgate' if t is c.hazgate else 'tb'}-{n}", 5)
                raise RuntimeError(f"peer: {who} delivered nothing within {START_TIMEOUT:g} s: {log}")
            side.startup = t.first - t_start
        time.sleep(warm)
        pids = (hg.pid, tb.pid)
        r0, c0, t0 = [c.count(t) for _s, t in sides], [cpu_seconds(p) for p in pids], time.time()
        time.sleep(window)
        r1, c1, t1 = [c.count(t) for _s, t in sides], [cpu_seconds(p) for p in pids], time.time()
        for k, (side, _t) in enumerate(sides):
            side.cpu_s, side.delivered, side.seconds = c1[k] - c0[k], r1[k] - r0[k], t1 - t0
            side.rss = rss_bytes(pids[k])

        # the broker goes for 20 s (SIGTERM: it saves what it accepted), then comes back
        t_stop = time.time()
        stops.append(t_stop)
        procs.stop(broker)
        time.sleep(OUTAGE_S)
        broker = start_broker(procs, port, name="mosquitto-peer", persist=persist, acl=ACL)
        t_back = time.time()
        lo, hi = t_stop - 3, t_back + 3
        wait_until(lambda: all(audit(c, t, lo, hi).lost == 0 or settled(c, t, hi, hi) for _s, t in sides),
                   drain_timeout, 0.5)
        time.sleep(3)  # late duplicates
        for side, t in sides:
            side.polls_per_s = _polls_in(c, t, t0, t1) / len(units) / (t1 - t0)  # all of them arrived by now
            side.outage = audit(c, t, lo, hi)
            side.first_s, side.drain_s, side.peak_rate = backlog(c, t, t_stop, t_back)

        # the broker goes again, both gateways are SIGKILLed during the outage, all come back
        time.sleep(3)
        t_stop = time.time()
        stops.append(t_stop)
        procs.stop(broker)
        time.sleep(KILL_AFTER)
        t_kill = time.time()
        for p in (hg, tb):
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            procs.stop(p)
        broker = start_broker(procs, port, name="mosquitto-peer", persist=persist, acl=ACL)
        t_back = time.time()
        start()
        lo = t_stop - 3
        wait_until(lambda: all(audit(c, t, lo, t_kill, kill=True).lost == 0 and settled(c, t, t_kill, t_back, 1)
                               or settled(c, t, t_kill, t_back) for _s, t in sides), drain_timeout, 0.5)
        time.sleep(3)
        for side, t in sides:
            side.kill = audit(c, t, lo, t_kill, kill=True)
    finally:
        for side, p in zip((size.hazgate, size.peer), (hg, tb), strict=True):
            if p is not None:
                side.exit_code = procs.stop(p)
        for who, side in (("hazgate", size.hazgate), ("the peer", size.peer)):
            for what, a, ref in ((f"broker gone {OUTAGE_S:g} s", side.outage, stops[0]),
                                 ("SIGKILL during an outage", side.kill, stops[-1])):
                if a.gaps:
                    size.notes.append(gap_note(who, n, what, a, ref))
        if size.hazgate.exit_code:
            size.notes.append(f"peer phase: hazgate ({n:,} points) exited with {size.hazgate.exit_code}: "
                              f"{procs.log_tail(f'peer-hazgate-{n}', 3)}")
        size.limits_answered = c.limits_answered
        size.notes.append(f"peer phase, {n:,} points: getSessionLimits answered {c.limits_answered} times "
                          "(once per connection of the peer)")
        if c.errors:
            size.notes.append(f"peer phase, {n:,} points: {c.errors} messages could not be counted ({c.error})")
        c.close()
        procs.stop(broker)
    return size


# --- the phase --------------------------------------------------------------------------------------
def run(ctx: Ctx, units: list[Unit], P: dict) -> tuple[list[Row], dict]:
    """Install the peer (or skip), measure both sizes; rows and figures for the report."""
    print(f"peer: ThingsBoard IoT Gateway {TB_VERSION} beside hazgate, same plant, broker and windows "
          f"({P['peer']} s windows, {OUTAGE_S:g} s broker outage, SIGKILL during an outage)", flush=True)
    py, how = install(ctx.work)
    if py is None:
        msg = f"peer: skipped, the ThingsBoard IoT Gateway {TB_VERSION} could not be installed: {how}"
        print(msg, flush=True)
        ctx.notes.append(msg)
        return [], {"skipped": how}
    print(f"peer: thingsboard-gateway {TB_VERSION} {how}", flush=True)
    rows: list[Row] = []
    results: dict = {"version": TB_VERSION, "sizes": []}
    for group in (units[:1], units):
        try:
            s = run_size(ctx, py, group, P["peer_warm"], P["peer"], P["peer_drain_timeout"])
        except RuntimeError as exc:  # the peer is third-party code: what it does not do ends the phase only
            print(f"{exc}; the rest of the peer phase is skipped", flush=True)
            ctx.notes.append(str(exc))
            break
        results["sizes"].append({"points": s.points, "hazgate": _side(s.hazgate), "peer": _side(s.peer),
                                 "limits_answered": s.limits_answered})
        part = _rows(s)
        print(text(part), flush=True)
        rows += part
        ctx.notes.extend(s.notes)
    return rows, results


def _side(s: Side) -> dict:
    d = {k: v for k, v in s.__dict__.items() if k not in ("outage", "kill")}
    d.update(cpu_us=s.cpu_us, cpu_share=s.cpu_share, rate=s.rate, outage=s.outage.__dict__, kill=s.kill.__dict__)
    return d


def _rows(s: Size) -> list[Row]:
    h, p = s.hazgate, s.peer
    sec = f"peer, {s.points:,} points at 1 s (baseline: ThingsBoard IoT Gateway {TB_VERSION}, same run)"
    ten = s.points >= 10_000
    share = h.cpu_us / p.cpu_us if p.cpu_us else math.nan
    return [
        Row(sec, "CPU per reading delivered", fmt_us(h.cpu_us), fmt_us(p.cpu_us), ratio(h.cpu_us, p.cpu_us),
            "≤ 0.10× (≥ 10× cheaper)" if ten else "", verdict(share <= 0.10) if ten else ""),
        Row(sec, "CPU share of one core", fmt_pct(h.cpu_share), fmt_pct(p.cpu_share), ratio(h.cpu_share, p.cpu_share)),
        Row(sec, "RSS at end of window", fmt_mb(h.rss), fmt_mb(p.rss), ratio(h.rss, p.rss)),
        Row(sec, "readings/s delivered", fmt_rate(h.rate), fmt_rate(p.rate), ratio(h.rate, p.rate)),
        Row(sec, "polls delivered per unit per second", f"{h.polls_per_s:.2f}", f"{p.polls_per_s:.2f}"),
        Row(sec, "start → first reading delivered", fmt_s(h.startup), fmt_s(p.startup)),
        Row(sec, f"broker gone {OUTAGE_S:g} s: readings lost / duplicated",
            f"{h.outage.lost:,} / {h.outage.duplicates:,}", f"{p.outage.lost:,} / {p.outage.duplicates:,}"),
        Row(sec, "broker back → first reading delivered", fmt_s(h.first_s), fmt_s(p.first_s),
            ratio(h.first_s, p.first_s)),
        Row(sec, "broker back → backlog delivered", fmt_s(h.drain_s), fmt_s(p.drain_s), ratio(h.drain_s, p.drain_s)),
        Row(sec, "fastest delivered rate after it (1 s bins)", fmt_rate(h.peak_rate), fmt_rate(p.peak_rate),
            ratio(h.peak_rate, p.peak_rate)),
        Row(sec, "SIGKILL during an outage: readings stamped before it lost / duplicated",
            f"{h.kill.lost:,} / {h.kill.duplicates:,}", f"{p.kill.lost:,} / {p.kill.duplicates:,}"),
        Row(sec, "SIGKILL: age of the newest reading kept at the kill", fmt_s(h.kill.newest_age),
            fmt_s(p.kill.newest_age)),
    ]

