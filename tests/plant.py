"""Test plants: a scenario, a gateway config and point tables in a temp folder, plus a subscriber.

Everything is written into the test's `tmp_path`, on free loopback ports, with its own data_dir:

    dev = DeviceSpec("plc-a", mixed_points("A"))
    plant = write_plant(tmp_path, broker.url, [dev])
    plant.start_simulator(procs, "plc-a")           # one `hazgate simulate` per device port
    with Subscriber(broker.port, plant.topic_filter) as sub:
        plant.start_agent(procs)                     # `hazgate run -c <tmp>/gateway.toml`
        sub.wait_for(lambda m: m.kind == "readings", 10, "a readings message")

Devices that share a port (one PLC, several unit ids) are served by one simulator process.
Signals are `const` by default, so every point has one engineering value the gateway must report
(`PointSpec.expect`, within `PointSpec.tol`).
"""

from __future__ import annotations

import csv
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import HAZGATE, Proc, free_port, wait_port

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")
SCHEMA = "hazgate.uplink/1"
CSV_COLUMNS = ("tag", "name", "address", "type", "byte_order", "scale", "offset", "raw_min",
               "raw_max", "eng_min", "eng_max", "unit", "kind", "deadband", "ll", "l", "h", "hh",
               "hazard_source", "equipment", "target_code")


# --- plant description -------------------------------------------------------------------
@dataclass
class PointSpec:
    """One row of a point table plus the simulator's signal and what the gateway must report."""

    tag: str
    address: str
    type: str
    const: float | bool = 0.0  # the simulator's engineering value (a const signal)
    expect: float | bool | None = None  # what the gateway must report; None means `const`
    tol: float = 1e-6  # absolute tolerance on `expect` (half a raw step for scaled integers)
    unit: str = ""
    kind: str = "other"
    columns: dict[str, str] = field(default_factory=dict)  # any other point-table column
    signal: dict[str, Any] | None = None  # another shape instead of const, e.g. {"ramp": [0, 1]}

    @property
    def expected(self) -> float | bool:
        return self.const if self.expect is None else self.expect

    def matches(self, value: Any) -> bool:
        want = self.expected
        if isinstance(want, bool) or self.type == "bool":
            return isinstance(value, bool) and value == want
        return isinstance(value, int | float) and not isinstance(value, bool) and abs(value - want) <= self.tol

    def row(self) -> dict[str, str]:
        cells = {"tag": self.tag, "name": self.tag, "address": self.address, "type": self.type,
                 "unit": self.unit, "kind": self.kind}
        cells.update(self.columns)
        return cells

    def scenario_signal(self) -> dict[str, Any]:
        return self.signal if self.signal is not None else {"const": self.const}


def mixed_points(prefix: str) -> list[PointSpec]:
    """One point of each type, byte order and table, with const values and exact expectations."""
    p = prefix
    return [
        PointSpec(f"{p}_LT", "hr:0", "float32", 7.25, unit="m", kind="level"),
        PointSpec(f"{p}_TT", "hr:2", "int16", -12.3, unit="°C", kind="temperature",
                  columns={"scale": "0.1"}),
        PointSpec(f"{p}_PT", "ir:0", "uint16", 0.35, unit="MPa", kind="pressure", tol=1.6 / 65535,
                  columns={"raw_min": "0", "raw_max": "65535", "eng_min": "0", "eng_max": "1.6"}),
        PointSpec(f"{p}_FT", "hr:4", "float32", 12.5, unit="m3/h", kind="flow",
                  columns={"byte_order": "CDAB"}),
        PointSpec(f"{p}_WT", "hr:6", "int32", 1234.56, unit="t", columns={"byte_order": "BADC", "scale": "0.01"}),
        PointSpec(f"{p}_RUN", "hr:8", "uint32", 70000, unit="h", columns={"byte_order": "DCBA"}),
        PointSpec(f"{p}_T64", "hr:12", "float64", 165.125, unit="°C", kind="temperature",
                  columns={"byte_order": "DCBA"}),
        PointSpec(f"{p}_GT", "ir:2", "uint16", 4.5, unit="%LEL", kind="gas_lel", columns={"scale": "0.1"}),
        PointSpec(f"{p}_BYP", "hr:20.3", "bool", True, kind="bypass"),
        PointSpec(f"{p}_ON", "hr:20.0", "bool", False, kind="interlock_status"),
        PointSpec(f"{p}_ESD", "di:0", "bool", True, kind="interlock_status"),
        PointSpec(f"{p}_HLA", "co:1", "bool", True, kind="trip"),
    ]


def simple_points(prefix: str) -> list[PointSpec]:
    """Two small points: enough to watch cadence and quality without much traffic."""
    return [
        PointSpec(f"{prefix}_LT", "hr:0", "float32", 5.5, unit="m", kind="level"),
        PointSpec(f"{prefix}_ON", "hr:2.0", "bool", True, kind="interlock_status"),
    ]


@dataclass
class DeviceSpec:
    name: str
    points: list[PointSpec]
    port: int = field(default_factory=free_port)
    unit: int = 1
    poll_interval: str = "500ms"
    timeout: str = "300ms"
    options: dict[str, Any] = field(default_factory=dict)  # more device keys, e.g. integrity_interval


@dataclass
class Plant:
    root: Path
    config: Path  # gateway.toml
    data_dir: Path
    devices: list[DeviceSpec]
    scenarios: dict[int, Path]  # port -> scenario file served by one simulator process
    gateway_id: str
    enterprise: str
    prefix: str

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/{self.enterprise}/{self.gateway_id}/#"

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.enterprise}/{self.gateway_id}/{kind}"

    def device(self, name: str) -> DeviceSpec:
        return next(d for d in self.devices if d.name == name)

    def points(self) -> dict[str, PointSpec]:
        return {p.tag: p for d in self.devices for p in d.points}

    def tags(self, device: str) -> list[str]:
        return [p.tag for p in self.device(device).points]

    def start_simulator(self, procs: list[Proc], device: str, timeout: float = 15.0) -> Proc:
        """Serve the scenario of `device`'s port; returns once the port accepts connections."""
        port = self.device(device).port
        n = sum(1 for p in procs if p.args[-1] == str(self.scenarios[port]))
        proc = Proc([*HAZGATE, "simulate", "-s", str(self.scenarios[port])],
                    self.root / f"simulate-{port}-{n}.log")
        procs.append(proc)
        wait_port(port, timeout)
        return proc

    def start_agent(self, procs: list[Proc], *extra: str, env: dict | None = None) -> Proc:
        n = sum(1 for p in procs if "run" in p.args)
        proc = Proc([*HAZGATE, *extra, "run", "-c", str(self.config)], self.root / f"agent-{n}.log", env)
        procs.append(proc)
        return proc


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_points(path: Path, points: list[PointSpec]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for p in points:
            w.writerow(p.row())
    return path


def write_plant(root: Path, broker_url: str, devices: list[DeviceSpec], *,
                gateway_id: str = "GW-TEST-0001", enterprise: str = "120116999999",
                prefix: str = "hazchem", publish_interval: str = "200ms",
                keepalive: str = "10s", batch_size: int = 500, clock: str = "trust") -> Plant:
    """Write point tables, one scenario per device port and gateway.toml into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    for d in devices:
        write_points(root / f"{d.name}.csv", d.points)
    scenarios: dict[int, Path] = {}
    for port in dict.fromkeys(d.port for d in devices):
        lines = []
        for d in (d for d in devices if d.port == port):
            lines += ["[[plcs]]", f"name = {_toml(d.name)}", 'protocol = "modbus-tcp"',
                      'host = "127.0.0.1"', f"port = {port}", f"unit = {d.unit}",
                      f"points = {_toml(d.name + '.csv')}", "", "[plcs.signals]"]
            lines += [f"{p.tag} = {_toml(p.scenario_signal())}" for p in d.points]
            lines.append("")
        scenarios[port] = root / f"scenario-{port}.toml"
        scenarios[port].write_text("\n".join(lines), encoding="utf-8")
    lines = [
        "[gateway]", f"id = {_toml(gateway_id)}", f"enterprise_code = {_toml(enterprise)}",
        f"data_dir = {_toml(str(data_dir))}", "",
        "[uplink]", f"broker = {_toml(broker_url)}", f"topic_prefix = {_toml(prefix)}",
        f"publish_interval = {_toml(publish_interval)}", f"keepalive = {_toml(keepalive)}",
        f"batch_size = {batch_size}", "",
    ]
    for d in devices:
        lines += ["[[devices]]", f"name = {_toml(d.name)}", 'protocol = "modbus-tcp"',
                  'host = "127.0.0.1"', f"port = {d.port}", f"unit = {d.unit}",
                  f"poll_interval = {_toml(d.poll_interval)}", f"timeout = {_toml(d.timeout)}",
                  f"points = {_toml(d.name + '.csv')}"]
        lines += [f"{k} = {_toml(v)}" for k, v in d.options.items()]
        lines.append("")
    lines += ["[clock]", f"sync_source = {_toml(clock)}", ""]  # test boxes may lack NTP
    config = root / "gateway.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return Plant(root, config, data_dir, devices, scenarios, gateway_id, enterprise, prefix)


# --- reading what the broker delivers ----------------------------------------------------
def parse_ts(text: str) -> float:
    """RFC 3339 timestamp (as the uplink writes it) to epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Message:
    topic: str
    kind: str  # last topic level: readings, events, meta, status
    body: dict | None  # the JSON object, None when the payload was not JSON
    payload: bytes
    retain: bool
    at: float  # time.time() when it arrived

    @property
    def seq(self) -> int | None:
        return self.body.get("seq") if self.body else None


class Subscriber:
    """A paho client (QoS 1) collecting every message under `topic_filter`, thread-safe."""

    def __init__(self, port: int, topic_filter: str = "#", host: str = "127.0.0.1"):
        self.port, self.host, self.topic_filter = port, host, topic_filter
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                  clean_session=True, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, _userdata, _flags, rc, _props) -> None:  # noqa: ANN001
        if not rc.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, _client, _userdata, msg) -> None:  # noqa: ANN001
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = None
        m = Message(msg.topic, msg.topic.rsplit("/", 1)[-1], body if isinstance(body, dict) else None,
                    msg.payload, bool(msg.retain), time.time())
        with self._lock:
            self._messages.append(m)

    def start(self, timeout: float = 5.0) -> Subscriber:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from 127.0.0.1:{self.port} after {timeout}s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- queries ---------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def of_kind(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m.kind == kind]

    def readings(self, tags: str | set[str] | list[str] | None = None) -> list[dict]:
        """Readings in arrival order, each with `_seq` and `_at` added; optionally only some tags."""
        if isinstance(tags, str):
            tags = {tags}
        out = []
        for m in self.of_kind("readings"):
            for r in (m.body or {}).get("readings", []):
                if tags is None or r.get("tag") in tags:
                    out.append({**r, "_seq": m.seq, "_at": m.at})
        return out

    def wait_for(self, pred: Callable[[Message], bool], timeout: float, what: str) -> Message:
        """The first message (already received or arriving within `timeout`) that matches."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            msgs = self.messages
            for m in msgs[seen:]:
                if pred(m):
                    return m
            seen = len(msgs)
            if time.monotonic() >= deadline:
                kinds = {k: sum(1 for m in msgs if m.kind == k) for k in {m.kind for m in msgs}}
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; received {kinds}")
            time.sleep(0.02)

    def wait_until(self, cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
        """Poll `cond()` until it returns something truthy; returns that value."""
        deadline = time.monotonic() + timeout
        while True:
            result = cond()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(every)


def retained(port: int, topic_filter: str, kinds: tuple[str, ...] = ("status", "meta"),
             timeout: float = 5.0) -> dict[str, Message]:
    """Connect a fresh subscriber and return the retained message of each kind, by kind."""
    with Subscriber(port, topic_filter) as sub:
        sub.wait_until(lambda: all(sub.of_kind(k) for k in kinds), timeout,
                       f"retained {', '.join(kinds)} for a late subscriber")
        return {k: sub.of_kind(k)[0] for k in kinds}
