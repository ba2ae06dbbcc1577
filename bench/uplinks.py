"""Several uplinks at once (issue 15): what the second and third platform cost, how fast each
uplink drains a backlog, and memory while one platform is gone.

The uplinks are the bench's MQTT broker (`[uplink]`, the uplink named `mqtt`) and the two
platforms of tests/platformkit.py, each a reference platform process (`hazgate receive
--listen`, given the same uplink table): a ministry-style HTTP platform `mem` (SM4-CBC,
upper-case hex, an `appsecret` header) and a Jiangsu-style TCP platform `jiangsu` (`@@` frames,
AES-128-CBC with IV = key, Base64, one persistent connection), both at 200 records per message
and a 1 s publish interval. Example keys only, in owner-only files.

Three parts, each with a fresh agent and fresh platform databases (on a tmpfs when there is
one: see platform_db_dir):
1. Steady load with 1 (mqtt), 2 (+ mem) and 3 (+ jiangsu) uplinks, on the steady phase's
   10 000 points at 1 s, then 1 and 3 uplinks on 2 000 points at 1 s (a load every uplink
   keeps up with): the agent's CPU per polled reading (each reading goes to every uplink) and
   its share of a core, RSS, readings delivered per uplink (the bench subscriber for MQTT,
   counting only what the agent saw acknowledged; each platform's `platform_records` for the
   others: a platform stores a message before it accepts it, and never stores a duplicate
   `data_id`) and what each uplink still had to send at the end of the window (the store's
   pending chunks). Beside them, on 10 000 points, three uplinks of one kind: `mqtt` and two
   more hazgate.uplink/1 uplinks, `mqtt-b` and `mqtt-c`, each to a broker of its own with a
   counting subscriber (what arrived there); the issue's target is the three different ones.
2. Back-fill: a backlog written into the store before the agent starts (bench/backfill.py's
   fill_store: pending for `mqtt` only; the platform uplinks, new to the store, get everything
   it holds), then each uplink's drain rate, backlog records delivered per second from the
   first to the last, all three draining at once beside 100 live points.
3. One uplink down, 2 000 points at 1 s: the HTTP platform ended (by its PID) for the window
   while MQTT and TCP deliver: RSS at the start and end of the window, the other uplinks'
   delivery against what was polled, MQTT latency against the same run just before.

    .venv/bin/python -m bench --only uplinks [--full]
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from bench.backfill import fill_store
from bench.common import (
    HAZGATE,
    TOPIC_PREFIX,
    Subscriber,
    Unit,
    acked_readings,
    cpu_seconds,
    free_port,
    gateway_toml,
    hwm_bytes,
    rss_bytes,
    snapshot,
    start_agent,
    start_broker,
    store_bytes,
    wait_port,
    wait_until,
    weighted_quantile,
)
from bench.live import STOP_WAIT, Ctx
from bench.report import Row, fmt_mb, fmt_pct, fmt_rate, fmt_s, fmt_us, ratio, text, verdict

MQTT, HTTP, TCP = "mqtt", "mem", "jiangsu"
ORDER = (MQTT, HTTP, TCP)
# three uplinks of one kind: the bench's broker and two more, each hazgate.uplink/1
MQTT_B, MQTT_C = "mqtt-b", "mqtt-c"
SAME = (MQTT, MQTT_B, MQTT_C)
PROTOCOL = {MQTT: "mqtt", HTTP: "http", TCP: "tcp", MQTT_B: "mqtt", MQTT_C: "mqtt"}
BATCH, INTERVAL, TIMEOUT = 200, "1s", "5s"
BACKLOG_TAGS = "B[0-9]*"  # fill_store's tags: B0000..B0999

# example keys, made up for the tests (tests/platformkit.py), never issued ones
SECRETS = {
    "secrets/js.key": "JsExampleKey0001\n",  # AES-128-CBC, IV = key (Jiangsu style)
    "secrets/mem.key": "MemExampleKey016\n",  # SM4-CBC key and IV (ministry style)
    "secrets/mem.iv": "MemExampleIV0016\n",
    "secrets/mem.appsecret": "example-appsecret-0001\n",
}

MEM_HTTP = """
[[uplinks]]
name = "mem"
protocol = "http"
url = "http://127.0.0.1:{port}/api/realtime"
headers = {{ appsecret = "secret:secrets/mem.appsecret" }}
codec = ["json", "sm4-cbc", "hex"]
key_file = "secrets/mem.key"
iv_file = "secrets/mem.iv"
interval = "{interval}"
batch = {batch}
timeout = "{timeout}"
ack = {{ status = [200], field = "code", equals = "0" }}
[uplinks.envelope]
appid = "APP-320200-0001"
dataId = "{{data_id}}"
seq = "{{seq}}"
gateway = "{{gateway}}"
data = "{{payload}}"
[uplinks.record]
BIT_NO = "{{tag}}"
VALUE = "{{value}}"
QUALITY = "{{quality}}"
COLLECT_TIME = "{{ts}}"
"""

JIANGSU_TCP = """
[[uplinks]]
name = "jiangsu"
protocol = "tcp"
host = "127.0.0.1"
port = {port}
delimiter = "@@"
connection = "persistent"
codec = ["json", "aes-128-cbc", "base64"]
key_file = "secrets/js.key"
iv = "key"
interval = "{interval}"
batch = {batch}
timeout = "{timeout}"
time_format = "%Y-%m-%d %H:%M:%S"
ack = {{ field = "code", equals = "0" }}
[uplinks.envelope]
appId = "APP-EXAMPLE-0001"
serviceId = "REALTIME"
dataId = "{{data_id}}"
seq = "{{seq}}"
districtCode = "3202"
data = "{{payload}}"
[uplinks.record]
BIT_NO = "{{tag}}"
TARGET_CODE = "{{target_code}}"
VALUE = "{{value}}"
COLLECT_TIME = "{{ts}}"
"""

MQTT_MORE = """
[[uplinks]]
name = "{name}"
protocol = "mqtt"
broker = "mqtt://127.0.0.1:{port}"
topic_prefix = "{prefix}"
"""


# --- the gateway and its platforms ----------------------------------------------------------
@dataclass
class Setup:
    """One agent's config with `uplinks` (names from ORDER) and the platform processes for it."""

    name: str
    gw: str
    config: Path
    data: Path
    uplinks: tuple[str, ...]
    ports: dict[str, int]
    dbs: dict[str, Path]
    platforms: dict[str, subprocess.Popen] = field(default_factory=dict)
    brokers: dict[str, int] = field(default_factory=dict)  # the more MQTT uplinks' broker ports
    subs: dict[str, Subscriber] = field(default_factory=dict)  # and a counting subscriber at each

    @property
    def listen(self) -> dict[str, str]:
        return {HTTP: f"http://127.0.0.1:{self.ports.get(HTTP)}/api/realtime",
                TCP: f"tcp://127.0.0.1:{self.ports.get(TCP)}"}


def write_secrets(work: Path) -> None:
    for name, content in SECRETS.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o600)


def setup(ctx: Ctx, name: str, units: list[Unit], uplinks: tuple[str, ...], db_dir: Path | None = None,
          poll: str = "1s") -> Setup:
    """The gateway config: gateway_toml (the `[uplink]` table is `mqtt`) plus the platform
    tables, last (a TOML table ends at the next header)."""
    write_secrets(ctx.work)
    gw = f"GW-{name.upper()}"
    cfg = gateway_toml(ctx.work, name, gw, ctx.broker_port, units, poll)
    ports = {u: free_port() for u in uplinks if u in (HTTP, TCP)}
    brokers = {u: free_port() for u in uplinks if u in (MQTT_B, MQTT_C)}
    tables = "".join(MQTT_MORE.format(name=u, port=port, prefix=TOPIC_PREFIX) for u, port in brokers.items())
    if HTTP in ports:
        tables += MEM_HTTP.format(port=ports[HTTP], interval=INTERVAL, batch=BATCH, timeout=TIMEOUT)
    if TCP in ports:
        tables += JIANGSU_TCP.format(port=ports[TCP], interval=INTERVAL, batch=BATCH, timeout=TIMEOUT)
    cfg.write_text(cfg.read_text() + tables)
    dbs = {u: (db_dir or ctx.work) / f"{name}-{u}.db" for u in ports}
    return Setup(name, gw, cfg, ctx.work / f"data-{name}", uplinks, ports, dbs, brokers=brokers)


def start_brokers(ctx: Ctx, s: Setup) -> None:
    """The more MQTT uplinks' brokers, each with a counting subscriber."""
    for u, port in s.brokers.items():
        s.platforms[u] = start_broker(ctx.procs, port, f"{s.name}-{u}")
        s.subs[u] = Subscriber(port)


def start_platform(ctx: Ctx, s: Setup, uplink: str, wait: bool = True) -> subprocess.Popen:
    """The uplink's reference platform; returns once its port accepts connections (`wait`)."""
    p = ctx.procs.start(f"{s.name}-{uplink}", [*HAZGATE, "--log-level", "warning", "receive", "--listen",
                                                s.listen[uplink], "--uplink-config", str(s.config),
                                                "--uplink", uplink, "--db", str(s.dbs[uplink])])
    if wait:
        wait_port(s.ports[uplink], 30)
    s.platforms[uplink] = p
    return p


def stop_platforms(ctx: Ctx, s: Setup) -> None:
    for sub in s.subs.values():
        sub.close()
    s.subs.clear()
    for uplink, p in list(s.platforms.items()):
        ctx.procs.stop(p)
        del s.platforms[uplink]


def drop_dbs(s: Setup) -> None:
    """The platforms' databases, once read (they may be on a tmpfs: memory)."""
    for db in s.dbs.values():
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def platform_records(db: Path) -> int:
    """Records the platform stored so far (platform_records only grows: its newest rowid)."""
    if not db.exists():
        return 0
    try:
        c = _ro(db)
    except sqlite3.Error:
        return 0
    try:
        return int(c.execute("SELECT COALESCE(MAX(rowid), 0) FROM platform_records").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        c.close()


def platform_marks(db: Path) -> tuple[int, int]:
    """(newest message rowid, newest record rowid): where a window starts."""
    if not db.exists():
        return 0, 0
    c = _ro(db)
    try:
        return (int(c.execute("SELECT COALESCE(MAX(rowid), 0) FROM platform_messages").fetchone()[0]),
                int(c.execute("SELECT COALESCE(MAX(rowid), 0) FROM platform_records").fetchone()[0]))
    finally:
        c.close()


def _received(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def platform_latency(db: Path, since: tuple[int, int], until: tuple[int, int]) -> tuple[float, float]:
    """p50/p99 of arrival minus collection time, weighted by records, of the messages stored
    between two marks: each message's first record (records of one message come from one poll
    or two). Needs rfc3339 record times (the HTTP platform's)."""
    c = _ro(db)
    try:
        firsts = dict(c.execute("SELECT data_id, ts FROM platform_records WHERE rowid > ? AND rowid <= ? AND idx = 0",
                                (since[1], until[1])))
        msgs = c.execute("SELECT data_id, received_at, count FROM platform_messages WHERE rowid > ? AND rowid <= ? "
                         "AND kind = 'readings'", (since[0], until[0])).fetchall()
    finally:
        c.close()
    pairs = []
    for data_id, received_at, count in msgs:
        ts = firsts.get(data_id)
        if isinstance(ts, str):
            with contextlib.suppress(ValueError):
                pairs.append((_received(received_at) - datetime.fromisoformat(ts).timestamp(), count))
    return weighted_quantile(pairs, 0.50), weighted_quantile(pairs, 0.99)


def store_figures(data: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """The agent's store, read-only: readings stored so far, each uplink's last acknowledged seq,
    and each uplink's unsent readings (its pending chunks, less what already left in messages)."""
    c = _ro(data / "hazgate.db")
    try:
        stored = c.execute("SELECT value FROM state WHERE key = 'stored_readings'").fetchone()
        acked = {n: int(s or 0) for n, s in c.execute("SELECT name, last_ack_seq FROM uplinks")}
        unsent = {n: int(k or 0) for n, k in c.execute(
            "SELECT p.uplink, SUM(c.count - p.taken) FROM pending p JOIN chunks c ON c.id = p.chunk GROUP BY p.uplink")}
        return int((stored or [0])[0]), acked, {n: unsent.get(n, 0) for n in acked}
    except sqlite3.Error:
        return 0, {}, {}
    finally:
        c.close()


def delivered(ctx: Ctx, s: Setup) -> dict[str, int]:
    """Readings each uplink has delivered so far (MQTT: live readings at the subscriber)."""
    out = {u: platform_records(db) for u, db in s.dbs.items() if u in s.platforms}
    if MQTT in s.uplinks:
        out[MQTT] = snapshot(ctx.sub, s.gw)[0]
    for u, sub in s.subs.items():
        out[u] = snapshot(sub, s.gw)[0]
    return out


def helpers_cpu(ctx: Ctx, s: Setup) -> dict[str, float]:
    out = ctx.machine_cpu()
    for u, p in s.platforms.items():
        with contextlib.suppress(FileNotFoundError):
            out[f"{u} {'broker' if u in s.brokers else 'platform'}"] = cpu_seconds(p.pid)
    return out


def stop_agent(ctx: Ctx, agent: subprocess.Popen, name: str) -> int | None:
    """SIGTERM, then SIGKILL after STOP_WAIT; a non-zero exit goes into the notes."""
    code = ctx.procs.stop(agent, STOP_WAIT)
    if code:
        ctx.notes.append(f"agent ({name}) exited with {code}: {ctx.procs.log_tail(name, 3)}")
    return code


# --- 1. steady load with 1, 2, 3 uplinks -----------------------------------------------------
@dataclass
class Steady:
    uplinks: tuple[str, ...]
    seconds: float
    polled: int
    cpu_s: float
    rss: int
    hwm: int
    delivered: dict[str, int]  # readings per uplink in the window (MQTT: acknowledged ones)
    unsent: dict[str, int]  # readings per uplink not yet sent at the end of the window
    latency: dict[str, tuple[float, float]]  # p50, p99 of live readings (MQTT, HTTP)
    helpers: dict[str, float]  # CPU share of one core of the processes sharing the machine
    exit_code: int | None = None

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.polled * 1e6 if self.polled else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds

    @property
    def polled_rate(self) -> float:
        return self.polled / self.seconds

    def rate(self, uplink: str) -> float:
        return self.delivered.get(uplink, 0) / self.seconds


def _flowing(ctx: Ctx, s: Setup, timeout: float = 60.0) -> None:
    """Every uplink has delivered something."""
    def every() -> bool:
        got = delivered(ctx, s)
        return len(got) == len(s.uplinks) and all(got.values())

    if not wait_until(every, timeout, 0.25):
        late = [u for u, v in delivered(ctx, s).items() if not v]
        raise RuntimeError(f"{s.name}: no readings at {', '.join(late) or 'an uplink'} within {timeout:.0f} s:\n"
                           + ctx.procs.log_tail(s.name))


def _acked_through(ctx: Ctx, s: Setup, t0: float, t1: float, timeout: float = 10.0) -> tuple[int, int]:
    """(the MQTT uplink's last acknowledged seq, the newest seq that arrived in the window),
    once the first covers the second (the agent records acknowledgements on its next round) or
    after `timeout`."""
    st = ctx.sub.stats(s.gw)
    with ctx.sub.lock:
        top = max((seq for at, seq, _n in st.msgs if t0 <= at < t1), default=0)
    acked = 0

    def through() -> bool:
        nonlocal acked
        acked = store_figures(s.data)[1].get(MQTT, 0)
        return acked >= top

    wait_until(through, timeout, 0.1)
    return acked, top


def _between_bursts(ctx: Ctx, gw: str, timeout: float = 3.0) -> None:
    """Return half a second after the MQTT uplink's next burst of messages (it publishes once a
    second): a window that starts there holds whole bursts, not one more or one less."""
    def count() -> int:
        st = ctx.sub.stats(gw)
        with ctx.sub.lock:
            return len(st.msgs)

    n = count()
    wait_until(lambda: count() > n, timeout, 0.01)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the burst's end: no new message for 0.1 s
        n = count()
        time.sleep(0.1)
        if count() == n:
            break
    time.sleep(0.4)


def run_steady(ctx: Ctx, units: list[Unit], uplinks: tuple[str, ...], warm: float, window: float,
               db_dir: Path | None = None) -> Steady:
    kind = "same" if set(uplinks) <= set(SAME) and len(uplinks) > 1 else ""
    s = setup(ctx, f"up{len(uplinks)}{kind}-{sum(u.n_points for u in units)}", units, uplinks, db_dir)
    for u in s.ports:
        start_platform(ctx, s, u)
    start_brokers(ctx, s)
    agent = start_agent(ctx.procs, s.config, s.name)
    try:
        _flowing(ctx, s)
        time.sleep(warm)
        _between_bursts(ctx, s.gw)
        st = ctx.sub.stats(s.gw)
        with ctx.sub.lock:
            n_lat = len(st.live_lat)
        marks0 = {u: platform_marks(db) for u, db in s.dbs.items()}
        d0, c0, h0 = delivered(ctx, s), cpu_seconds(agent.pid), helpers_cpu(ctx, s)
        p0 = store_figures(s.data)[0]
        t0 = time.time()
        time.sleep(window)
        d1, c1, h1 = delivered(ctx, s), cpu_seconds(agent.pid), helpers_cpu(ctx, s)
        p1, _acked, unsent = store_figures(s.data)
        t1 = time.time()
        marks1 = {u: platform_marks(db) for u, db in s.dbs.items()}
        rss, hwm = rss_bytes(agent.pid), hwm_bytes(agent.pid)
        acked_seq, top_seq = _acked_through(ctx, s, t0, t1)
    except Exception:
        print(ctx.procs.log_tail(s.name))
        raise
    finally:
        code = stop_agent(ctx, agent, s.name)
        stop_platforms(ctx, s)
    seconds = t1 - t0
    got = {u: d1[u] - d0.get(u, 0) for u in uplinks}
    got_seen = acked_readings(ctx.sub, s.gw, t0, t1, 1 << 62)  # every message that arrived in the window
    got[MQTT] = acked_readings(ctx.sub, s.gw, t0, t1, acked_seq)
    if got[MQTT] < got_seen:
        ctx.notes.append(f"uplinks, {s.name}: {got_seen - got[MQTT]:,} readings reached the MQTT subscriber in the "
                         f"window in messages the agent had not recorded as acknowledged (seq {acked_seq} < {top_seq})")
    with ctx.sub.lock:
        lat = {MQTT: (weighted_quantile([(x, n) for at, x, n in st.live_lat[n_lat:] if t0 <= at < t1], 0.50),
                      weighted_quantile([(x, n) for at, x, n in st.live_lat[n_lat:] if t0 <= at < t1], 0.99))}
    if HTTP in s.dbs:
        lat[HTTP] = platform_latency(s.dbs[HTTP], marks0[HTTP], marks1[HTTP])
    drop_dbs(s)
    helpers = {k: (h1[k] - h0.get(k, 0.0)) / seconds for k in h1}
    return Steady(uplinks, seconds, p1 - p0, c1 - c0, rss, hwm, got, unsent, lat, helpers, code)


# --- 2. back-fill per uplink -----------------------------------------------------------------
@dataclass
class Drain:
    uplink: str
    records: int  # backlog records delivered
    first: float  # wall clock of the first and the last backlog record's arrival
    last: float

    @property
    def seconds(self) -> float:
        return self.last - self.first

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Backfill:
    readings: int
    store_bytes: int
    started: float  # wall clock when the agent was started
    drains: dict[str, Drain]
    cpu_s: float  # agent CPU from its start until the slowest drain was seen through
    seconds: float  # from the agent's start until then
    rss_max: int
    helpers: dict[str, float]
    duplicates: dict[str, int]
    complete: bool
    exit_code: int | None = None


class BacklogCounter:
    """Backlog records a platform stored, counted incrementally (rowids only grow)."""

    def __init__(self, db: Path):
        self.db, self.upto, self.count = db, 0, 0

    def poll(self) -> int:
        if not self.db.exists():
            return self.count
        with contextlib.suppress(sqlite3.Error):
            c = _ro(self.db)
            try:
                top = int(c.execute("SELECT COALESCE(MAX(rowid), 0) FROM platform_records").fetchone()[0])
                self.count += c.execute("SELECT COUNT(*) FROM platform_records WHERE rowid > ? AND rowid <= ? "
                                        "AND tag GLOB ?", (self.upto, top, BACKLOG_TAGS)).fetchone()[0]
                self.upto = top
            finally:
                c.close()
        return self.count


def platform_drain(uplink: str, db: Path) -> Drain:
    """First and last arrival of the messages that carried backlog records, and their count."""
    c = _ro(db)
    try:
        per_msg = dict(c.execute("SELECT data_id, COUNT(*) FROM platform_records WHERE tag GLOB ? GROUP BY data_id",
                                 (BACKLOG_TAGS,)))
        arrivals = [(_received(at), per_msg[d]) for d, at in
                    c.execute("SELECT data_id, received_at FROM platform_messages WHERE kind = 'readings'")
                    if d in per_msg]
    finally:
        c.close()
    if not arrivals:
        return Drain(uplink, 0, float("nan"), float("nan"))
    arrivals.sort()  # as bench/backfill.py: every record over first to last arrival
    return Drain(uplink, sum(n for _at, n in arrivals), arrivals[0][0], arrivals[-1][0])


def duplicates(db: Path) -> int:
    c = _ro(db)
    try:
        return int(c.execute("SELECT COALESCE(SUM(duplicates), 0) FROM platform_gateways").fetchone()[0])
    finally:
        c.close()


def run_backfill(ctx: Ctx, live: Unit, readings: int, timeout: float, db_dir: Path | None = None) -> Backfill:
    s = setup(ctx, "upbf", [live], ORDER, db_dir)
    size, _fill_s = fill_store(s.data, s.config, readings)
    for u in s.ports:
        start_platform(ctx, s, u)
    counters = {u: BacklogCounter(db) for u, db in s.dbs.items()}
    h0 = helpers_cpu(ctx, s)
    started = time.time()
    agent = start_agent(ctx.procs, s.config, s.name)
    rss_max, complete = 0, False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rss_max = max(rss_max, rss_bytes(agent.pid))
            st = ctx.sub.stats(s.gw)
            with ctx.sub.lock:
                mqtt_done = st.backfill >= readings
            if mqtt_done and all(c.poll() >= readings for c in counters.values()):
                complete = True
                break
            time.sleep(0.25)
        end = time.time()
        cpu = cpu_seconds(agent.pid)
        h1 = helpers_cpu(ctx, s)
    except Exception:
        print(ctx.procs.log_tail(s.name))
        raise
    finally:
        code = stop_agent(ctx, agent, s.name)
        stop_platforms(ctx, s)
    st = ctx.sub.stats(s.gw)
    with ctx.sub.lock:
        drains = {MQTT: Drain(MQTT, st.backfill, st.first_backfill, st.last_backfill)}
    for u, db in s.dbs.items():
        drains[u] = platform_drain(u, db)
    dups = {u: duplicates(db) for u, db in s.dbs.items()}
    drop_dbs(s)
    seconds = end - started
    helpers = {k: (h1[k] - h0.get(k, 0.0)) / seconds for k in h1}
    return Backfill(readings, size, started, drains, cpu, seconds, rss_max, helpers, dups, complete, code)


# --- 3. one uplink down ----------------------------------------------------------------------
@dataclass
class Down:
    seconds: float
    rss_start: int
    rss_end: int
    rss_max: int
    before: dict[str, float]  # readings/s per uplink just before the platform went
    during: dict[str, float]  # and while it was gone
    lat_before: tuple[float, float]  # MQTT live latency p50, p99
    lat_during: tuple[float, float]
    cpu_before: float  # agent CPU share of one core
    cpu_during: float
    polled_before: float  # readings/s the agent stored
    polled_during: float
    unsent_end: dict[str, int]
    store_growth: int  # bytes
    samples: list[tuple[float, int]] = field(default_factory=list)
    helpers: dict[str, float] = field(default_factory=dict)
    # MQTT live latency through the outage: (seconds into it, p50, p99)
    latency_series: list[tuple[float, float, float]] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def rss_ratio(self) -> float:
        return self.rss_end / self.rss_start


def _mqtt_latency(ctx: Ctx, gw: str, t0: float, t1: float) -> tuple[float, float]:
    st = ctx.sub.stats(gw)
    with ctx.sub.lock:
        pairs = [(x, n) for at, x, n in st.live_lat if t0 <= at < t1]
    return weighted_quantile(pairs, 0.50), weighted_quantile(pairs, 0.99)


def run_down(ctx: Ctx, units: list[Unit], warm: float, before_s: float, seconds: float,
             db_dir: Path | None = None) -> Down:
    s = setup(ctx, "updown", units, ORDER, db_dir)
    for u in s.ports:
        start_platform(ctx, s, u)
    agent = start_agent(ctx.procs, s.config, s.name)
    try:
        _flowing(ctx, s)
        time.sleep(warm)
        # before: all three up
        d0, c0, p0, t0 = delivered(ctx, s), cpu_seconds(agent.pid), store_figures(s.data)[0], time.time()
        time.sleep(before_s)
        d1, c1, p1, t1 = delivered(ctx, s), cpu_seconds(agent.pid), store_figures(s.data)[0], time.time()
        before = {u: (d1[u] - d0[u]) / (t1 - t0) for u in ORDER}
        cpu_before = (c1 - c0) / (t1 - t0)
        lat_before = _mqtt_latency(ctx, s.gw, t0, t1)
        ctx.procs.stop(s.platforms.pop(HTTP))  # the HTTP platform goes: connections refused
        time.sleep(2)  # the agent notices; what it had in flight settles
        rest = {u: s.dbs[u] for u in s.platforms}
        d2 = {MQTT: snapshot(ctx.sub, s.gw)[0], **{u: platform_records(db) for u, db in rest.items()}}
        h0 = helpers_cpu(ctx, s)
        p2 = store_figures(s.data)[0]
        rss0, c2, b0, t2 = rss_bytes(agent.pid), cpu_seconds(agent.pid), store_bytes(s.data), time.monotonic()
        w0 = time.time()
        samples = [(0.0, rss0)]
        end = t2 + seconds
        while time.monotonic() < end:
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - t2, rss_bytes(agent.pid)))
        elapsed = time.monotonic() - t2
        w1 = time.time()
        d3 = {MQTT: snapshot(ctx.sub, s.gw)[0], **{u: platform_records(db) for u, db in rest.items()}}
        c3, b1, h1 = cpu_seconds(agent.pid), store_bytes(s.data), helpers_cpu(ctx, s)
        p3, _acked, unsent = store_figures(s.data)
    except Exception:
        print(ctx.procs.log_tail(s.name))
        raise
    finally:
        code = stop_agent(ctx, agent, s.name)
        stop_platforms(ctx, s)
    drop_dbs(s)
    during = {u: (d3[u] - d2[u]) / elapsed for u in d3}
    helpers = {k: (h1[k] - h0.get(k, 0.0)) / elapsed for k in h1}
    step = max(10.0, (w1 - w0) / 12)
    series = [(k * step, *_mqtt_latency(ctx, s.gw, w0 + k * step, w0 + (k + 1) * step))
              for k in range(round((w1 - w0) / step))]
    return Down(
        seconds=elapsed, rss_start=rss0, rss_end=samples[-1][1], rss_max=max(r for _, r in samples),
        before=before, during=during, lat_before=lat_before, lat_during=_mqtt_latency(ctx, s.gw, w0, w1),
        cpu_before=cpu_before,
        cpu_during=(c3 - c2) / elapsed, polled_before=(p1 - p0) / (t1 - t0), polled_during=(p3 - p2) / elapsed,
        unsent_end=unsent, store_growth=b1 - b0, samples=samples, helpers=helpers, latency_series=series,
        exit_code=code)


# --- the phase: every part, its rows -----------------------------------------------------------
KEEP_UP = 0.95  # an uplink that stays up delivers at least this share of what was polled
KEEP_UP_S = 2.0  # an uplink keeps up when it has at most this many seconds of polling left to send
NAMES = {1: "1 uplink (mqtt)", 2: "2 uplinks (mqtt + http)", 3: "3 uplinks (mqtt + http + tcp)"}
SAME_NAME = "3 uplinks of one kind (mqtt, three brokers)"


def platform_db_dir() -> Path | None:
    """Where the reference platforms keep their databases: a tmpfs when there is one. A
    platform commits every message with an fsync (synchronous=FULL); on the bench machine's one
    disk those fsyncs queue with the agent's own and halve what a platform takes, which is the
    stand-in's cost, not the gateway's."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="hazgate-bench-platforms-", dir=shm))
    return None


def _rates(r: Steady) -> str:
    return " / ".join(fmt_rate(r.rate(u)) for u in r.uplinks)


def _behind(r: Steady) -> float:
    """Seconds of polling the slowest uplink had still to send at the end of the window."""
    return max(r.unsent.get(u, 0) for u in r.uplinks) / r.polled_rate if r.polled else math.nan


def _per_platform_record(r: Steady, one: Steady) -> float:
    """Agent CPU added per record delivered to a platform uplink, against the mqtt-only run."""
    records = sum(r.rate(u) for u in r.uplinks if u != MQTT)
    return (r.cpu_share - one.cpu_share) / records * 1e6 if records else math.nan


def _helpers(r: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 100:.0f} %" for k, v in r.items())


def _steady_rows(section: str, runs: dict[int, Steady], same: Steady | None = None) -> list[Row]:
    """The rows of one load; `same`: three uplinks of one kind beside it (not the issue's
    target, which is three platforms of different kinds)."""
    one = runs[1]
    rows = [Row(section, f"agent CPU per reading polled, {NAMES[1]}", fmt_us(one.cpu_us))]
    for n in sorted(runs)[1:]:
        r = runs[n]
        ok = r.cpu_us <= 1.5 * one.cpu_us if n == 3 else None
        rows.append(Row(section, f"agent CPU per reading polled, {NAMES[n]} (baseline: 1 uplink)", fmt_us(r.cpu_us),
                        fmt_us(one.cpu_us), ratio(r.cpu_us, one.cpu_us),
                        "≤ 1.5× one uplink" if n == 3 else "", verdict(ok)))
    if same is not None:
        rows.append(Row(section, f"agent CPU per reading polled, {SAME_NAME} (baseline: 1 uplink)",
                        fmt_us(same.cpu_us), fmt_us(one.cpu_us), ratio(same.cpu_us, one.cpu_us),
                        "one kind: ≤ 1.5× one uplink", verdict(same.cpu_us <= 1.5 * one.cpu_us)))
        behind = _behind(same)
        rows.append(Row(section, f"readings/s acknowledged per uplink, {SAME_NAME} (baseline: polled)",
                        _rates(same), fmt_rate(same.polled_rate),
                        ratio(min(same.rate(u) for u in same.uplinks), same.polled_rate),
                        f"each ≤ {KEEP_UP_S:g} s of polling behind", verdict(behind <= KEEP_UP_S)))
    for n in sorted(runs)[1:]:
        r = runs[n]
        rows.append(Row(section, f"agent CPU share of one core, {NAMES[n]} (baseline: 1 uplink)",
                        fmt_pct(r.cpu_share), fmt_pct(one.cpu_share), ratio(r.cpu_share, one.cpu_share)))
    for n in sorted(runs)[1:]:
        r = runs[n]
        rows.append(Row(section, f"agent RSS at end of window, {NAMES[n]} (baseline: 1 uplink)", fmt_mb(r.rss),
                        fmt_mb(one.rss), ratio(r.rss, one.rss)))
    for n in sorted(runs)[1:]:
        r = runs[n]
        rows.append(Row(section, f"agent CPU added per record to a platform, {NAMES[n]}",
                        fmt_us(_per_platform_record(r, one))))
    for n in sorted(runs):
        r = runs[n]
        rows.append(Row(section, f"readings/s acknowledged per uplink, {NAMES[n]} (baseline: polled)", _rates(r),
                        fmt_rate(r.polled_rate), ratio(min(r.rate(u) for u in r.uplinks), r.polled_rate)))
    for n in sorted(runs):
        r = runs[n]
        behind = _behind(r)
        rows.append(Row(section, f"readings waiting per uplink at end of window, {NAMES[n]}",
                        " / ".join(f"{r.unsent.get(u, 0):,}" for u in r.uplinks),
                        f"{behind:.1f} s of polling" if not math.isnan(behind) else "", "",
                        f"each ≤ {KEEP_UP_S:g} s of polling (keeps up)", verdict(behind <= KEEP_UP_S)))
    last = runs[max(runs)]
    lat = " / ".join(f"{fmt_s(last.latency[u][0])}, {fmt_s(last.latency[u][1])}" for u in (MQTT, HTTP)
                     if u in last.latency)
    rows.append(Row(section, f"live latency p50, p99: mqtt / http, {NAMES[max(runs)]} (baseline: mqtt alone)", lat,
                    f"{fmt_s(one.latency[MQTT][0])}, {fmt_s(one.latency[MQTT][1])}"))
    return rows


def run(ctx: Ctx, big: list[Unit], small: list[Unit], live: Unit, P: dict) -> tuple[list[Row], dict]:
    """Every part of the phase; the table's rows and every figure for the JSON."""
    rows: list[Row] = []
    out: dict = {}
    db_dir = platform_db_dir()
    try:
        for units, counts in ((big, (1, 2, 3)), (small, (1, 3))):
            n_points = sum(u.n_points for u in units)
            kinds = [NAMES[n] for n in counts] + ([SAME_NAME] if units is big else [])
            print(f"uplinks: steady load, {n_points} points at 1 s, with {', '.join(kinds)} ({P['up']} s windows)",
                  flush=True)
            runs = {n: run_steady(ctx, units, ORDER[:n], P["up_warm"], P["up"], db_dir) for n in counts}
            same = run_steady(ctx, units, SAME, P["up_warm"], P["up"], db_dir) if units is big else None
            out[f"steady_{n_points}"] = {n: {**asdict(r), "cpu_us": r.cpu_us, "cpu_share": r.cpu_share}
                                         for n, r in runs.items()}
            if same is not None:
                out[f"steady_{n_points}"]["same"] = {**asdict(same), "cpu_us": same.cpu_us, "cpu_share": same.cpu_share}
            part = _steady_rows(f"several uplinks: {n_points} points at 1 s, 200 records per platform message", runs,
                                same)
            print(text(part), flush=True)
            rows += part
            for name, r in [*((NAMES[n], r) for n, r in runs.items()), *([(SAME_NAME, same)] if same else [])]:
                ctx.notes.append(f"uplinks, {n_points} points, {name}: {_helpers(r.helpers)} of a core")

        first = len(rows)
        print(f"uplinks: back-fill, {P['up_readings']:,} readings buffered, three uplinks draining at once", flush=True)
        b = run_backfill(ctx, live, P["up_readings"], P["up_drain_timeout"], db_dir)
        out["backfill"] = asdict(b)
        s = f"back-fill per uplink: {b.readings:,} readings buffered, all three draining at once"
        mq = b.drains[MQTT]
        for u in ORDER:
            d = b.drains[u]
            base = (fmt_rate(mq.rate), ratio(d.rate, mq.rate)) if u != MQTT else ("", "")
            rows.append(Row(s, f"{u} ({PROTOCOL[u]}): back-fill records/s delivered, first to last"
                               f"{' (baseline: mqtt)' if u != MQTT else ''}", fmt_rate(d.rate), *base))
        for u in ORDER:
            d = b.drains[u]
            rows.append(Row(s, f"{u}: backlog through, seconds after the agent started", fmt_s(d.last - b.started)))
        whole = all(b.drains[u].records == b.readings for u in ORDER) and not any(b.duplicates.values())
        rows.append(Row(s, "backlog records delivered: mqtt / http / tcp (duplicates at the platforms)",
                        " / ".join(f"{b.drains[u].records:,}" for u in ORDER)
                        + f" ({sum(b.duplicates.values())})", "", "", "every one, once", verdict(whole)))
        rows.append(Row(s, "agent CPU share of one core until the slowest was through", fmt_pct(b.cpu_s / b.seconds)))
        ctx.notes.append(f"uplinks, back-fill: {_helpers(b.helpers)} of a core; agent RSS peak {fmt_mb(b.rss_max)}")
        if not b.complete:
            ctx.notes.append(f"uplinks, back-fill: not every backlog was through within {P['up_drain_timeout']} s")
        print(text(rows[first:]), flush=True)

        n_points = sum(u.n_points for u in small)
        first = len(rows)
        print(f"uplinks: the http platform down for {P['up_down']} s, {n_points} points at 1 s", flush=True)
        d = run_down(ctx, small, P["up_warm"], P["up_before"], P["up_down"], db_dir)
        out["down"] = asdict(d)
        s = f"one uplink down: http platform gone for {d.seconds:.0f} s, mqtt and tcp delivering, {n_points} points at 1 s"
        rows += [
            Row(s, "agent RSS at end (baseline: at start of the outage)", fmt_mb(d.rss_end), fmt_mb(d.rss_start),
                ratio(d.rss_end, d.rss_start), "within ±10 %", verdict(abs(d.rss_ratio - 1) <= 0.10)),
            Row(s, "agent RSS peak during the outage", fmt_mb(d.rss_max), fmt_mb(d.rss_start),
                ratio(d.rss_max, d.rss_start)),
        ]
        for u in (MQTT, TCP):
            rows.append(Row(s, f"{u}: readings/s delivered during the outage (baseline: polled)",
                            fmt_rate(d.during[u]), fmt_rate(d.polled_during), ratio(d.during[u], d.polled_during),
                            f"≥ {KEEP_UP:g}× polled", verdict(d.during[u] >= KEEP_UP * d.polled_during)))
        rows += [
            Row(s, "mqtt / tcp readings/s before the outage, all three up",
                f"{fmt_rate(d.before[MQTT])} / {fmt_rate(d.before[TCP])}", fmt_rate(d.polled_before)),
            Row(s, "mqtt live latency p99 during the outage (baseline: before it)", fmt_s(d.lat_during[1]),
                fmt_s(d.lat_before[1]), f"{d.lat_during[1] - d.lat_before[1]:+.2f} s", "≤ +1 s (one interval)",
                verdict(d.lat_during[1] - d.lat_before[1] <= 1.0)),
            Row(s, "agent CPU share of one core during the outage (baseline: before it)", fmt_pct(d.cpu_during),
                fmt_pct(d.cpu_before), ratio(d.cpu_during, d.cpu_before)),
            Row(s, "http readings waiting in the store at the end", f"{d.unsent_end.get(HTTP, 0):,}"),
        ]
        ctx.notes.append(f"uplinks, one down: {_helpers(d.helpers)} of a core during the outage")
        print(text(rows[first:]), flush=True)
    finally:
        if db_dir is not None:
            shutil.rmtree(db_dir, ignore_errors=True)
    return rows, out
