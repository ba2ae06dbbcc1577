"""Helpers for the platform uplink tests: specs from TOML text, a context, an example key set.

Every key here is an example made up for the tests, never an issued one.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.common.clock import ClockConfig, ClockWatch
from agent.common.problems import Problems
from agent.config.toml import TomlReader
from agent.config.uplinks import UplinkSpec, load_uplinks
from agent.model import Point
from agent.north.base import UplinkContext

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

    def __call__(self, name: str, state: str) -> None:
        self.seen.append((name, state))


def context(store, points: list[Point] = POINTS) -> UplinkContext:
    clock = ClockWatch(ClockConfig(sync_source="trust"), lambda step: None, lambda ok: None)
    return UplinkContext(gateway=GATEWAY, enterprise=ENTERPRISE, version="test", started_ms=0,
                         store=store, clock=clock, points=lambda: points, held=Held(),
                         on_state=States(), events_stored=lambda: None)
