"""Helpers for the platform uplink tests: specs from TOML text, a context, an example key set.

Every key here is an example made up for the tests, never an issued one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agent.common.clock import ClockConfig, ClockWatch
from agent.common.problems import Problems
from agent.common.timefmt import now_ms
from agent.config.toml import TomlReader
from agent.config.uplinks import UplinkSpec, load_uplinks
from agent.model import QUALITY_NAME, Point
from agent.north.base import UplinkContext
from agent.pipeline.store_thread import AsyncStore

GATEWAY, ENTERPRISE = "GW-320200-0001", "32020000012"
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
url = "{url}"
headers = {{ appsecret = "secret:secrets/mem.appsecret" }}
codec = ["json", "sm4-cbc", "hex"]
key_file = "secrets/mem.key"
iv_file = "secrets/mem.iv"
interval = "100ms"
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
connection = "{connection}"
codec = ["json", "aes-128-cbc", "base64"]
key_file = "secrets/js.key"
iv = "key"
interval = "100ms"
batch = {batch}
timeout = "{timeout}"
max_reply = {max_reply}
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

HJ212_PW = "pw0123"  # an example PW
HJ212 = """
[[uplinks]]
name = "env"
protocol = "hj212"
host = "127.0.0.1"
port = {port}
st = "31"
mn = "010000A8900016F000169DC0"
password_file = "secrets/hj212.pw"
interval = "1s"
overtime = "1s"
recount = 1
"""


def write_hj212_pw(folder: Path) -> None:
    write_secrets(folder, {"secrets/hj212.pw": HJ212_PW + "\n"})


def snapshot_http(url: str, interval: str) -> str:
    """MEM_HTTP as a snapshot uplink; its records carry `ts_ms` and `backfill` too."""
    text = MEM_HTTP.format(url=url, batch=50, timeout="2s")
    return (text.replace('interval = "100ms"', f'send = "snapshot"\ninterval = "{interval}"')
            + 'TS_MS = "{ts_ms}"\nBACKFILL = "{backfill}"\n')


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as the platform stored it."""

    seq: int
    backfill: bool
    at: int  # its boundary (epoch ms), from its newest record: something is polled every interval
    records: dict[str, tuple[int, Any, str]]  # tag -> (ts_ms, value, quality)


def received_snapshots(db: sqlite3.Connection, step_ms: int) -> list[Snapshot]:
    """The snapshots a reference platform stored, in arrival order (one message each)."""
    out: list[Snapshot] = []
    for data_id, seq in db.execute("SELECT data_id, seq FROM platform_messages ORDER BY rowid").fetchall():
        bodies = [orjson.loads(b) for (b,) in db.execute(
            "SELECT body FROM platform_records WHERE data_id = ? ORDER BY idx", (data_id,))]
        records = {r["BIT_NO"]: (r["TS_MS"], r["VALUE"], r["QUALITY"]) for r in bodies}
        newest = max(ts for ts, _v, _q in records.values())
        out.append(Snapshot(seq, bodies[0]["BACKFILL"], -(-newest // step_ms) * step_ms, records))
    return out


def value_at(readings: list[tuple[int, str, Any, str]], at: int) -> dict[str, tuple[int, Any, str]]:
    """Each tag's newest reading at or before `at`: readings are (ts_ms, tag, value, quality)."""
    out: dict[str, tuple[int, Any, str]] = {}
    for ts, tag, value, quality in sorted(readings, key=lambda r: r[0]):
        if ts <= at:
            out[tag] = (ts, value, quality)
    return out


async def until(check, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def feed(store: AsyncStore, truth: list[tuple[int, str, object, str]]) -> None:
    """A plant polled every 100 ms: the level is its time in seconds; the switch toggles every
    0.7 s and reads bad in one 2 s interval of three. Every reading stored goes into `truth`,
    also when the feed is cancelled while the store takes it (the store call is shielded)."""
    pids = await store.call("pids", [("TK101_LT", "m", "float32"), ("TK101_HLA", "", "bool")])
    while True:
        ts = now_ms()
        rows = [(ts, "TK101_LT", ts / 1000, 0, None),
                (ts, "TK101_HLA", ts // 700 % 2 == 0, 2 if ts // 2000 % 3 == 0 else 0, None)]
        truth += [(t, tag, v, QUALITY_NAME[q]) for t, tag, v, q, _r in rows]
        await asyncio.shield(store.call("add_readings", rows, pids))
        await asyncio.sleep(0.1)


def write_secrets(folder: Path, files: dict[str, str] = SECRETS) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)


def load(folder: Path, text: str) -> tuple[list[UplinkSpec], list[str]]:
    """`[[uplinks]]` text (written to folder/uplink.toml) as specs, and the problems."""
    path = folder / "uplink.toml"
    path.write_text(text)
    problems = Problems()
    reader = TomlReader(path, text, problems)
    specs = load_uplinks(reader, tomllib.loads(text).get("uplinks"), folder)
    return specs, problems.lines()


def spec_of(folder: Path, text: str) -> UplinkSpec:
    write_secrets(folder)
    specs, problems = load(folder, text)
    assert problems == [] and len(specs) == 1, problems
    return specs[0]


def mem_http(folder: Path, url: str, batch: int = 50, timeout: str = "2s") -> UplinkSpec:
    return spec_of(folder, MEM_HTTP.format(url=url, batch=batch, timeout=timeout))


def jiangsu_tcp(folder: Path, port: int, connection: str = "per-message", batch: int = 50,
                timeout: str = "2s", max_reply: int = 1 << 20) -> UplinkSpec:
    return spec_of(folder, JIANGSU_TCP.format(port=port, connection=connection, batch=batch,
                                              timeout=timeout, max_reply=max_reply))


POINTS = [
    Point(tag="TK101_LT", address="hr:0", type="float32", line=2, file="points.csv",
          name="Tank 101 level", unit="m", kind="level", hazard_source="320200001001",
          equipment="TK101", target_code="LT-001"),
    Point(tag="TK101_HLA", address="di:0", type="bool", line=3, file="points.csv",
          name="Tank 101 high level switch", kind="trip", target_code="LS-001"),
]


class Held:
    """No readings held in memory (the store takes writes)."""

    def take(self, limit: int) -> list[tuple]:
        return []

    def give_back(self, rows: list[tuple]) -> None:
        raise AssertionError("nothing was taken")


@dataclass
class States:
    seen: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, name: str, state: str, _reason: str) -> None:
        self.seen.append((name, state))


def context(store, points: list[Point] = POINTS) -> UplinkContext:
    clock = ClockWatch(ClockConfig(sync_source="trust"), lambda step: None, lambda ok: None)
    return UplinkContext(gateway=GATEWAY, enterprise=ENTERPRISE, version="test", started_ms=0,
                         store=store, clock=clock, points=lambda: points, held=Held(),
                         on_state=States(), events_stored=lambda: None)
