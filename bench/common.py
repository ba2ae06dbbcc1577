"""Shared pieces of the benchmarks: ports, processes and their CPU/RSS from /proc, a Mosquitto
broker, the simulated plant (point tables, scenario, gateway configs) and a counting subscriber.

Everything runs on loopback. Every process started here is ended by its PID (Procs.stop_all),
every wait is bounded by a deadline, and the work folder is removed by the caller.
"""

from __future__ import annotations

import math
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from agent.common.loopback import free_port, wait_port  # noqa: F401 - the bench modules import free_port from here

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = sys.executable
HAZGATE = [PY, "-m", "agent.cli"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TOPIC_PREFIX = "hazchem"


# --- ports ------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    """Resident set size now, from /proc/<pid>/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def hwm_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Procs:
    """The processes a benchmark starts; each is ended by its own PID, newest first."""

    def __init__(self, work: Path):
        self.work = work
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log: bool = True) -> subprocess.Popen:
        err = open(self.work / f"{name}.log", "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        finally:
            if log:
                err.close()
        self.items.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.items = [(n, q) for n, q in self.items if q is not p]
        return p.returncode

    def stop_all(self) -> None:
        for _name, p in reversed(list(self.items)):
            self.stop(p)

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.work / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    return found


def start_broker(procs: Procs, port: int, name: str = "mosquitto", persist: Path | None = None,
                 acl: str = "") -> subprocess.Popen:
    """Mosquitto on 127.0.0.1:port; with `persist`, its sessions and queued messages are saved there
    when it stops (SIGTERM) and read back when it starts again; `acl`: the text of its ACL file."""
    conf = procs.work / f"{name}-{port}.conf"
    # no queue limits: the counting subscriber must never lose a message to the broker
    keep = f"persistence true\npersistence_location {persist}/\n" if persist else "persistence false\n"
    if persist or acl:  # started as root it would become user mosquitto, locked out of the work folder
        keep += f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    if acl:
        (procs.work / f"{name}-{port}.acl").write_text(acl)
        keep += f"acl_file {procs.work / f'{name}-{port}.acl'}\n"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    f"max_inflight_messages 100\n{keep}")
    p = procs.start(name, [mosquitto_binary(), "-c", str(conf)])
    wait_port(port, 30)
    return p


# --- the simulated plant -----------------------------------------------------------------
@dataclass
class Unit:
    """One simulated PLC unit: `n_float` float32 points from hr:0, then `n_int` int16 points."""

    name: str
    port: int
    unit: int
    n_float: int
    n_int: int = 0
    prefix: str = ""
    limits: bool = True  # h/hh limits far above the values: the checks run but never fire
    events: list[float] = field(default_factory=list)  # event points: step offsets in the cycle
    event_period: float = 2.0

    @property
    def n_points(self) -> int:
        return self.n_float + self.n_int + len(self.events)

    def tags(self) -> list[tuple[str, int, str, float, str]]:
        """(tag, holding register address, type, scale, role) of every point, in address order;
        role: "f" float32 ramp, "i" int16 ramp (scale 0.1), "e" event point (steps)."""
        p = self.prefix
        out = [(f"{p}F{i:04d}", 2 * i, "float32", 1.0, "f") for i in range(self.n_float)]
        base = 2 * self.n_float
        out += [(f"{p}I{i:04d}", base + i, "int16", 0.1, "i") for i in range(self.n_int)]
        base += self.n_int + self.n_int % 2
        out += [(f"{p}E{i:02d}", base + 2 * i, "float32", 1.0, "e") for i in range(len(self.events))]
        return out

    def csv(self) -> str:
        rows = ["tag,address,type,scale,unit,kind,eng_min,eng_max,h,hh"]
        for tag, addr, ptype, scale, role in self.tags():
            # event points step between 10 and 90 (hh raised, then cleared); ramps stay below h
            lim = "50,80" if role == "e" else "150,180" if self.limits else ","
            rows.append(f"{tag},hr:{addr},{ptype},{scale:g},m,level,0,200,{lim}")
        return "\n".join(rows) + "\n"

    def signals(self) -> str:
        out = []
        for i, (tag, _addr, _type, _scale, role) in enumerate(self.tags()):
            if role == "e":
                k = int(tag[-2:])
                out.append(f'{tag} = {{ steps = [["0s", 10.0], ["{self.events[k]:.3f}s", 90.0]], '
                           f'repeat = "{self.event_period:g}s" }}')
            else:  # every value moves on every poll
                out.append(f'{tag} = {{ ramp = [0.0, 100.0], period = "{30 + i % 60}s" }}')
        return "\n".join(out)

    def blocks(self) -> list[dict]:
        """The raw baseline's read plan, written plainly: runs of one type, at most 125 registers."""
        out: list[dict] = []
        for role, width, fmt, scale in (("f", 2, "f", 1.0), ("i", 1, "h", 0.1), ("e", 2, "f", 1.0)):
            pts = [(tag, addr) for tag, addr, _t, _s, r in self.tags() if r == role]
            per = 125 // width
            for k in range(0, len(pts), per):
                chunk = pts[k:k + per]
                out.append({"start": chunk[0][1], "count": len(chunk) * width, "fmt": fmt, "scale": scale,
                            "tags": [t for t, _ in chunk]})
        return out


@dataclass
class Plant:
    work: Path
    units: list[Unit]
    t0: int = 0

    def write(self) -> Path:
        """Point tables and the scenario; returns the scenario path. t0: scenario time zero."""
        self.t0 = int(time.time())
        parts = [f"t0 = {self.t0}"]
        for u in self.units:
            (self.work / f"{u.name}.csv").write_text(u.csv())
            parts.append(f'[[plcs]]\nname = "{u.name}"\nhost = "127.0.0.1"\nport = {u.port}\nunit = {u.unit}\n'
                         f'points = "{u.name}.csv"\n[plcs.signals]\n{u.signals()}\n')
        path = self.work / "plant.toml"
        path.write_text("\n".join(parts))
        return path

    def ports(self) -> list[int]:
        return sorted({u.port for u in self.units})

    def change_times(self) -> dict[str, tuple[float, float]]:
        """Event tags: (period, offset in the cycle of the step up); the step down is at 0."""
        return {f"{u.prefix}E{k:02d}": (u.event_period, off) for u in self.units for k, off in enumerate(u.events)}

    def last_change(self, tag: str, at: float, up: bool) -> float:
        """Wall-clock time of the last scheduled step of `tag` (up to 90 or down to 10) at or
        before `at`. Matching by direction, not by the poll's timestamp: a poll stamped just
        before a step may read the register just after it."""
        period, off = self.change_times()[tag]
        phase = off if up else 0.0
        return self.t0 + phase + math.floor((at - self.t0 - phase) / period) * period


def start_simulator(procs: Procs, plant: Plant, name: str = "simulator") -> subprocess.Popen:
    scenario = plant.write()
    p = procs.start(name, [*HAZGATE, "--log-level", "warning", "simulate", "-s", str(scenario)])
    for port in plant.ports():
        wait_port(port, 60)
    return p


def gateway_toml(work: Path, name: str, gw_id: str, broker_port: int, units: list[Unit], poll: str,
                 timeout: str = "900ms", extra_device: str = "", store: str = 'max_size = "4GiB"',
                 data_dir: Path | None = None, polls: dict[str, str] | None = None) -> Path:
    """A gateway config polling `units`, each every `poll` (or polls[unit name])."""
    data = data_dir or work / f"data-{name}"
    devs = []
    for u in units:
        every = (polls or {}).get(u.name, poll)
        devs.append(f'[[devices]]\nname = "{u.name}"\nprotocol = "modbus-tcp"\nhost = "127.0.0.1"\n'
                    f'port = {u.port}\nunit = {u.unit}\npoll_interval = "{every}"\ntimeout = "{timeout}"\n'
                    f'points = "{u.name}.csv"\n{extra_device}')
    path = work / f"{name}.toml"
    path.write_text(f'[gateway]\nid = "{gw_id}"\nenterprise_code = "1"\ndata_dir = "{data}"\n'
                    f'[uplink]\nbroker = "mqtt://127.0.0.1:{broker_port}"\ntopic_prefix = "{TOPIC_PREFIX}"\n'
                    f'[store]\n{store}\n'
                    # this machine's kernel may say "unsynchronized": readings would all be uncertain
                    '[clock]\nsync_source = "trust"\n' + "\n".join(devs))
    return path


def start_agent(procs: Procs, config: Path, name: str = "agent", wrap: Sequence[str] = ()) -> subprocess.Popen:
    """`hazgate run`; `wrap`: argv the command is started through (bench/budget.py's cgroup entry)."""
    return procs.start(name, [*wrap, *HAZGATE, "--log-level", "warning", "run", "-c", str(config)])


def store_state(data_dir: Path) -> dict:
    """Read-only look at a running agent's store: readings stored so far, last acknowledged seq."""
    db = sqlite3.connect(f"file:{data_dir / 'hazgate.db'}?mode=ro", uri=True, timeout=5)
    try:
        state = dict(db.execute("SELECT key, value FROM state WHERE key = 'stored_readings'"))
        ack = db.execute("SELECT last_ack_seq FROM uplinks WHERE name = 'mqtt'").fetchone()
        return {"stored_readings": int(state.get("stored_readings", 0)), "last_ack_seq": int((ack or [0])[0] or 0)}
    except sqlite3.Error:
        return {"stored_readings": 0, "last_ack_seq": 0}
    finally:
        db.close()


def store_bytes(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in data_dir.glob("hazgate.db*"))


# --- the counting subscriber -----------------------------------------------------------------
@dataclass
class GwStats:
    """What one gateway id delivered. Latencies are kept per poll stamp: (latency, readings)."""

    live: int = 0
    backfill: int = 0
    first_backfill: float = 0.0  # arrival of the first and the latest back-filled reading
    last_backfill: float = 0.0
    msgs: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, seq, readings)
    live_lat: list[tuple[float, float, int]] = field(default_factory=list)  # (arrival, latency s, n)
    events: list[tuple[float, dict]] = field(default_factory=list)  # (arrival, event)
    watched: list[tuple[float, str, float, float]] = field(default_factory=list)  # (arrival, tag, ts, value)


class Stamps:
    """Seconds since the epoch of an RFC 3339 stamp, each distinct stamp parsed once (a bounded cache)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def __call__(self, ts: str) -> float:
        t = self._seen.get(ts)
        if t is None:
            if len(self._seen) > 200_000:
                self._seen.clear()
            t = self._seen[ts] = datetime.fromisoformat(ts).timestamp()
        return t


class Subscriber:
    """Counts what arrives at the broker, per gateway id, in this process (paho network thread).

    Decoding is orjson; a reading's timestamp is parsed once per distinct stamp, so counting
    60 000 readings/s costs this process little. Readings of `watch` tags are kept one by one
    (the raw baseline's event points), every event is kept with its arrival time.
    """

    def __init__(self, port: int, watch: set[str] | None = None):
        self.lock = threading.Lock()
        self.gw: dict[str, GwStats] = {}
        self.watch = watch or set()
        self._stamp = Stamps()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{port}", clean_session=True)
        c.on_message = self.on_message
        c.on_connect = lambda cl, _u, _f, _rc, _p: cl.subscribe(f"{TOPIC_PREFIX}/#", qos=1)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        deadline = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def stats(self, gw: str) -> GwStats:
        with self.lock:
            return self.gw.setdefault(gw, GwStats())

    def on_message(self, _c, _u, msg) -> None:  # noqa: ANN001
        now = time.time()
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        gw, kind = parts[2], parts[3]
        if kind not in ("readings", "events"):
            return
        body = orjson.loads(msg.payload)
        with self.lock:
            st = self.gw.setdefault(gw, GwStats())
            if kind == "events":
                st.events.extend((now, ev) for ev in body["events"])
                return
            readings = body["readings"]
            st.msgs.append((now, body["seq"], len(readings)))
            groups: dict[str, int] = {}
            before = st.backfill
            for r in readings:
                if r["backfill"]:
                    st.backfill += 1
                    continue
                st.live += 1
                ts = r["ts"]
                groups[ts] = groups.get(ts, 0) + 1
                if r["tag"] in self.watch:
                    st.watched.append((now, r["tag"], self._stamp(ts), r["value"]))
            for ts, n in groups.items():
                st.live_lat.append((now, now - self._stamp(ts), n))
            if st.backfill > before:
                st.first_backfill = st.first_backfill or now
                st.last_backfill = now


def snapshot(sub: Subscriber, gw: str) -> tuple[int, int, int, int]:
    """(live readings, backfill readings, messages, latency samples) so far."""
    st = sub.stats(gw)
    with sub.lock:
        return st.live, st.backfill, len(st.msgs), len(st.live_lat)


def acked_readings(sub: Subscriber, gw: str, t_from: float, t_to: float, acked_seq: int) -> int:
    """Readings that arrived between t_from and t_to in messages the publisher saw acknowledged."""
    st = sub.stats(gw)
    with sub.lock:
        return sum(n for at, seq, n in st.msgs if t_from <= at < t_to and seq <= acked_seq)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def weighted_quantile(pairs: list[tuple[float, int]], q: float) -> float:
    """q-quantile of values given as (value, weight)."""
    total = sum(w for _, w in pairs)
    if not total:
        return math.nan
    target = q * total
    acc = 0
    for v, w in sorted(pairs):
        acc += w
        if acc >= target:
            return v
    return sorted(pairs)[-1][0]


def wait_until(cond, timeout: float, step: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
