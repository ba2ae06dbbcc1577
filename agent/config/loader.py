"""Gateway config (TOML): loaded into typed objects, every problem reported with file and line."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.common.clock import SOURCES, ClockConfig
from agent.common.durations import parse_duration
from agent.common.problems import ConfigError, Problems
from agent.common.secrets import OPCUA_SECRET_KEYS, UPLINK_SECRET_KEYS, secret_file_problem
from agent.config.points import Point, check_overlaps, load_point_table
from agent.service.health import parse_listen

PROTOCOLS = ("modbus-tcp", "modbus-rtu", "opcua")


@dataclass
class UplinkConfig:
    broker: str
    topic_prefix: str = "hazchem"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    publish_interval: float = 1.0
    batch_size: int = 500
    keepalive: float = 30.0

    @property
    def tls(self) -> bool:
        return urlparse(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.broker).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.broker).port or (8883 if self.tls else 1883)


@dataclass
class DeviceConfig:
    name: str
    protocol: str
    poll_interval: float
    points_file: Path
    timeout: float = 2.0
    host: str = ""
    port: int | str = 502
    unit: int = 1
    max_gap: int = 8
    max_registers: int = 125
    max_bits: int = 2000
    integrity_interval: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)  # protocol-specific keys (OPC UA, serial)
    points: list[Point] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        if self.protocol == "modbus-tcp":
            return f"{self.host}:{self.port}"
        if self.protocol == "opcua":
            return str(self.options.get("endpoint", ""))
        return str(self.port)


@dataclass
class StoreConfig:
    max_bytes: int = 1 << 30
    max_age: float = 30 * 86400.0


@dataclass
class GatewayConfig:
    path: Path
    gateway_id: str
    enterprise_code: str
    data_dir: Path
    uplink: UplinkConfig
    devices: list[DeviceConfig]
    rules_file: Path | None = None
    store: StoreConfig = field(default_factory=StoreConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    health_listen: tuple[str, int] | None = None  # [health] listen; None: no health endpoint
    rules: Any = None  # agent.config.rules.Rules: interlocks, detector and alarm settings (defaults without a file)

    def device(self, name: str) -> DeviceConfig:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise KeyError(f"no device named {name!r} in {self.path}; devices: {names}")

    def all_points(self) -> list[Point]:
        return [p for d in self.devices for p in d.points]


# --- key schemas: key -> (kind, required). Kinds: str, int, float, duration, path, enum:a|b, url:a|b
GATEWAY_KEYS = {
    "id": ("str", True), "enterprise_code": ("str", True), "data_dir": ("path", True),
}
UPLINK_KEYS = {
    "broker": ("url:mqtt|mqtts", True), "topic_prefix": ("str", False), "ca_file": ("path", False),
    "cert_file": ("path", False), "key_file": ("path", False), "username": ("str", False),
    "password_file": ("path", False), "publish_interval": ("duration", False),
    "batch_size": ("int", False), "keepalive": ("duration", False),
}
COMMON_DEVICE_KEYS = {
    "name": ("str", True), "protocol": ("enum:" + "|".join(PROTOCOLS), True),
    "poll_interval": ("duration", True), "points": ("path", True), "timeout": ("duration", False),
    "integrity_interval": ("duration", False),
}
PROTOCOL_KEYS = {
    "modbus-tcp": {
        "host": ("str", True), "port": ("int", False), "unit": ("int", False),
        "max_gap": ("int", False), "max_registers": ("int", False), "max_bits": ("int", False),
    },
    "modbus-rtu": {
        "port": ("str", True), "baudrate": ("int", False), "parity": ("enum:N|E|O", False),
        "stopbits": ("int", False), "bytesize": ("int", False), "unit": ("int", False),
        "max_gap": ("int", False), "max_registers": ("int", False), "max_bits": ("int", False),
        "request_pause": ("duration", False),
    },
    "opcua": {
        "endpoint": ("url:opc.tcp", True), "mode": ("enum:subscribe|poll", False),
        "security_policy": ("enum:None|Basic256Sha256", False),
        "security_mode": ("enum:None|Sign|SignAndEncrypt", False),
        "certificate": ("path", False), "private_key": ("path", False),
        "server_certificate": ("path", False), "application_uri": ("str", False),
        "username": ("str", False), "password_file": ("path", False),
        "sampling_interval": ("duration", False), "queue_size": ("int", False),
        "deadband": ("float", False),
    },
}
PROTOCOL_LIMITS = {
    "modbus-rtu": {"unit": (1, 247), "baudrate": (300, 921600), "bytesize": (7, 8), "stopbits": (1, 2)},
    "opcua": {"queue_size": (1, 1000)},
}
SERIAL_DEFAULTS = {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8, "request_pause": None}
CHECKS_KEYS = {"rules": ("path", False)}
STORE_KEYS = {"max_size": ("size", False), "max_age": ("duration", False)}
CLOCK_KEYS = {"sync_source": ("enum:" + "|".join(SOURCES), False), "sync_file": ("path", False),
              "step_threshold": ("duration", False)}
HEALTH_KEYS = {"listen": ("str", False)}
TOP_KEYS = ("gateway", "uplink", "devices", "checks", "store", "clock", "health")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
MIN_STORE_BYTES = 1 << 20


class LineIndex:
    """Maps TOML key paths such as ("devices", 1, "port") to the line they are written on."""

    _ARRAY = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        current: tuple = ()
        for n, line in enumerate(text.splitlines(), start=1):
            if m := self._ARRAY.match(line):
                name = m.group(1)
                idx = counts.get(name, 0)
                counts[name] = idx + 1
                current = (name, idx)
                self.lines.setdefault(current, n)
            elif m := self._TABLE.match(line):
                current = tuple(m.group(1).split("."))
                self.lines.setdefault(current, n)
            elif m := self._KEY.match(line):
                self.lines.setdefault((*current, m.group(1)), n)

    def line(self, *path: Any) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1


class _Reader:
    """Walks one TOML file, checking keys against schemas and collecting problems."""

    def __init__(self, path: Path, text: str, problems: Problems):
        self.path, self.problems, self.index = path, problems, LineIndex(text)
        self.base = path.parent

    def err(self, loc: tuple, key: str, msg: str) -> None:
        self.problems.add(self.path, self.index.line(*loc), key, msg)

    def section(self, data: Any, loc: tuple, schema: dict, extra: tuple = ()) -> dict[str, Any]:
        """Check one table against its schema; return converted values of the good keys."""
        out: dict[str, Any] = {}
        label = ".".join(str(x) for x in loc if isinstance(x, str))
        if not isinstance(data, dict):
            self.err(loc, label, "must be a table")
            return out
        for key in data:
            if key not in schema and key not in extra:
                self.err((*loc, key), f"{label}.{key}", f"unknown key; valid keys here: {', '.join(sorted({*schema, *extra}))}")
        for key, (kind, required) in schema.items():
            if key not in data:
                if required:
                    self.err(loc, f"{label}.{key}", "required key is missing")
                continue
            try:
                out[key] = self.convert(kind, data[key])
            except ValueError as exc:
                self.err((*loc, key), f"{label}.{key}", str(exc))
        return out

    def convert(self, kind: str, value: Any) -> Any:
        if kind == "str":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{value!r} is not a non-empty string")
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{value!r} is not a whole number")
            return value
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise ValueError(f"{value!r} is not a number; valid: a number such as 0.5")
            return float(value)
        if kind == "duration":
            seconds = parse_duration(value)
            if seconds <= 0:
                raise ValueError(f"{value!r} must be longer than zero")
            return seconds
        if kind == "size":
            m = _SIZE.match(value.strip()) if isinstance(value, str) else None
            if not m:
                raise ValueError(f"{value!r} is not a size; valid: a number with a unit, e.g. \"500MB\", \"2GiB\"")
            size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
            if size < MIN_STORE_BYTES:
                raise ValueError(f"{value!r} is too small; valid: at least 1MiB")
            return size
        if kind == "path":
            if not isinstance(value, str) or not value:
                raise ValueError(f"{value!r} is not a path string")
            return (self.base / value).resolve() if not Path(value).is_absolute() else Path(value)
        if kind.startswith("enum:"):
            choices = kind[5:].split("|")
            if value not in choices:
                raise ValueError(f"{value!r} is not valid; valid: {', '.join(choices)}")
            return value
        if kind.startswith("url:"):
            schemes = kind[4:].split("|")
            parsed = urlparse(value) if isinstance(value, str) else None
            if parsed is None or parsed.scheme not in schemes or not parsed.hostname:
                examples = ", ".join(f"{s}://host:port" for s in schemes)
                raise ValueError(f"{value!r} is not a valid address; valid: {examples}")
            try:
                parsed.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                raise ValueError(f"{value!r}: {exc}") from None
            return value
        raise AssertionError(kind)


def load_config(path: str | Path) -> GatewayConfig:
    """Load and validate a gateway config; raise ConfigError listing every problem."""
    path = Path(path)
    problems = Problems()
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.add(shown, 1, "file", "config file not found")
        raise ConfigError(problems) from None
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(shown, 1, "file", f"cannot read config: {exc}; valid: a UTF-8 TOML file")
        raise ConfigError(problems) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        problems.add(shown, int(m.group(1)) if m else 1, "toml", f"syntax error: {exc}")
        raise ConfigError(problems) from None
    r = _Reader(Path(shown), text, problems)
    for key in data:
        if key not in TOP_KEYS:
            r.err((key,), key, f"unknown section; valid: {', '.join(TOP_KEYS)}")
    gw = r.section(data["gateway"], ("gateway",), GATEWAY_KEYS) if "gateway" in data else {}
    if "gateway" not in data:
        r.err((), "gateway", "required section [gateway] is missing")
    up = r.section(data["uplink"], ("uplink",), UPLINK_KEYS) if "uplink" in data else {}
    if "uplink" not in data:
        r.err((), "uplink", "required section [uplink] is missing")
    if up.get("batch_size") is not None and not 1 <= up["batch_size"] <= 10000:
        r.err(("uplink", "batch_size"), "uplink.batch_size", f"{up['batch_size']} is out of range; valid: 1-10000")
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        if up.get(key) is not None and not up[key].is_file():
            r.err(("uplink", key), f"uplink.{key}", f"file {up[key]} does not exist")
        elif up.get(key) is not None and key in UPLINK_SECRET_KEYS and (why := secret_file_problem(up[key])):
            r.err(("uplink", key), f"uplink.{key}", why)
    if ("cert_file" in up) != ("key_file" in up):
        r.err(("uplink",), "uplink.key_file", "cert_file and key_file go together; give both or neither")
    checks = r.section(data.get("checks", {}), ("checks",), CHECKS_KEYS)
    if checks.get("rules") is not None and not checks["rules"].is_file():
        r.err(("checks", "rules"), "checks.rules", f"file {checks['rules']} does not exist")

    st = r.section(data.get("store", {}), ("store",), STORE_KEYS)
    ck = r.section(data.get("clock", {}), ("clock",), CLOCK_KEYS)
    health = r.section(data.get("health", {}), ("health",), HEALTH_KEYS)
    listen = None
    if "listen" in health:
        try:
            listen = parse_listen(health["listen"])
        except ValueError as exc:
            r.err(("health", "listen"), "health.listen", str(exc))
    devices = _load_devices(r, data.get("devices", []))
    from agent.config.rules import load_checks  # here: agent.config.rules imports this module

    rules = load_checks(checks.get("rules"), [p for d in devices for p in d.points], problems)
    if problems:
        raise ConfigError(problems)
    uplink = UplinkConfig(
        broker=up["broker"], topic_prefix=up.get("topic_prefix", "hazchem"),
        ca_file=up.get("ca_file"), cert_file=up.get("cert_file"), key_file=up.get("key_file"),
        username=up.get("username"), password_file=up.get("password_file"),
        publish_interval=up.get("publish_interval", 1.0), batch_size=up.get("batch_size", 500),
        keepalive=up.get("keepalive", 30.0),
    )
    return GatewayConfig(
        path=path, gateway_id=gw["id"], enterprise_code=gw["enterprise_code"],
        data_dir=gw["data_dir"], uplink=uplink, devices=devices, rules_file=checks.get("rules"), rules=rules,
        store=StoreConfig(max_bytes=st.get("max_size", 1 << 30), max_age=st.get("max_age", 30 * 86400.0)),
        clock=ClockConfig(**ck), health_listen=listen,
    )


def _load_devices(r: _Reader, raw: Any) -> list[DeviceConfig]:
    if not isinstance(raw, list) or not raw:
        r.err(("devices",), "devices", "no [[devices]] defined; valid: at least one [[devices]] table")
        return []
    devices: list[DeviceConfig] = []
    names: dict[str, int] = {}
    endpoints: dict[tuple, int] = {}
    buses: dict[str, tuple] = {}
    tags: dict[str, Point] = {}
    for i, item in enumerate(raw):
        loc = ("devices", i)
        proto = item.get("protocol") if isinstance(item, dict) else None
        extra = tuple(PROTOCOL_KEYS.get(proto, {}))
        common = r.section(item, loc, COMMON_DEVICE_KEYS, extra=extra)
        if proto not in PROTOCOL_KEYS:
            continue
        specific = r.section({k: v for k, v in item.items() if k in extra}, loc, PROTOCOL_KEYS[proto])
        name = common.get("name")
        if name is None or "points" not in common or "poll_interval" not in common:
            continue
        if name in names:
            r.err((*loc, "name"), "devices.name", f"{name!r} is already used by the device at line {names[name]}; valid: a unique name")
        names.setdefault(name, r.index.line(*loc))
        dev = DeviceConfig(
            name=name, protocol=proto, poll_interval=common["poll_interval"],
            points_file=common["points"], timeout=common.get("timeout", 2.0),
            integrity_interval=common.get("integrity_interval", 60.0),
        )
        if proto == "modbus-tcp":
            dev.host, dev.port = specific.get("host", ""), specific.get("port", 502)
        elif proto == "modbus-rtu":
            dev.port = specific.get("port", "")
        for key in ("unit", "max_gap", "max_registers", "max_bits"):
            if key in specific:
                setattr(dev, key, specific[key])
        dev.options = {k: v for k, v in specific.items() if k not in ("host", "port", "unit", "max_gap", "max_registers", "max_bits")}
        _check_device_ranges(r, loc, dev, specific)
        endpoint = (proto, dev.endpoint, dev.unit if proto != "opcua" else 0)
        if endpoint in endpoints:
            r.err((*loc, "unit"), "devices.unit", f"device {name!r} uses the same endpoint {dev.endpoint} and unit {dev.unit} as the device at line {endpoints[endpoint]}; valid: one device per endpoint and unit")
        endpoints.setdefault(endpoint, r.index.line(*loc))
        if proto == "modbus-rtu":
            _check_serial_bus(r, loc, dev, buses)
        dev.points = _load_points(r, loc, dev, tags)
        devices.append(dev)
    return devices


def _check_serial_bus(r: _Reader, loc: tuple, dev: DeviceConfig, buses: dict[str, tuple]) -> None:
    """Devices on one serial port are units of one physical bus: they share its line settings."""
    settings = {k: dev.options.get(k, v) for k, v in SERIAL_DEFAULTS.items()}
    line, first, theirs = buses.setdefault(str(dev.port), (r.index.line(*loc), dev.name, settings))
    for key, value in settings.items():
        if value != theirs[key]:
            shown = ["default" if v is None else repr(v) for v in (value, theirs[key])]
            r.err((*loc, key), f"devices.{key}", f"{shown[0]} differs from {shown[1]} of device {first!r} "
                  f"(line {line}) on the same port {dev.port}; valid: the same value in every device on one port")


def _check_device_ranges(r: _Reader, loc: tuple, dev: DeviceConfig, specific: dict) -> None:
    limits = {"unit": (0, 247), "max_gap": (0, 120), "max_registers": (1, 125), "max_bits": (1, 2000)}
    if dev.protocol == "modbus-tcp":
        limits["port"] = (1, 65535)
    limits.update(PROTOCOL_LIMITS.get(dev.protocol, {}))
    for key, (lo, hi) in limits.items():
        if key in specific and not lo <= specific[key] <= hi:
            r.err((*loc, key), f"devices.{key}", f"{specific[key]} is out of range; valid: {lo}-{hi}")
    if dev.protocol == "opcua":  # security, certificate and identity: drivers/opcua_config.py
        from drivers.opcua.options import check_options

        for key, msg in check_options(specific):
            r.err((*loc, key), f"devices.{key}", msg)
        for key in OPCUA_SECRET_KEYS:  # the gateway's private key, the login password
            path = specific.get(key)
            if isinstance(path, Path) and path.is_file() and (why := secret_file_problem(path)):
                r.err((*loc, key), f"devices.{key}", why)
    if dev.timeout >= dev.poll_interval * 10:
        r.err((*loc, "timeout"), "devices.timeout", f"{dev.timeout}s is ten or more poll intervals; valid: below {dev.poll_interval * 10:g}s")


def _load_points(r: _Reader, loc: tuple, dev: DeviceConfig, tags: dict[str, Point]) -> list[Point]:
    path = dev.points_file
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    before = len(r.problems)
    try:
        points = load_point_table(path, dev.protocol, r.problems, shown)
    except FileNotFoundError:
        r.err((*loc, "points"), "devices.points", f"point table {path} not found; valid: a CSV file path relative to {r.base}")
        return []
    except OSError as exc:
        r.err((*loc, "points"), "devices.points", f"cannot read point table {path}: {exc}")
        return []
    if not points and len(r.problems) == before:
        r.problems.add(shown, 1, "points", "point table has no points; valid: one row per point after the header")
    for p in points:
        if p.tag in tags:
            first = tags[p.tag]
            r.problems.add(shown, p.line, "tag", f"{p.tag!r} is already defined at {first.file}:{first.line}; valid: tags unique across the gateway")
        else:
            tags[p.tag] = p
    check_overlaps(points, r.problems)
    return points
