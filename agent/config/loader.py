"""Gateway config (TOML): loaded into each part's typed spec, every problem reported with file
and line. Devices are read with what their protocol says of itself (drivers/registry.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.common.clock import SOURCES, ClockConfig
from agent.common.durations import quoted
from agent.common.listen import parse_listen
from agent.common.problems import ConfigError, Problems
from agent.common.secrets import UPLINK_SECRET_KEYS, secret_file_problem
from agent.config.gateway import GatewayConfig
from agent.config.points import load_point_table
from agent.config.rules import load_checks
from agent.config.toml import TomlReader, load_toml
from agent.config.uplinks import load_uplinks, parse_timezone
from agent.model import Point
from agent.north.adapters import point_warnings
from agent.north.mqtt.protocol import BROKER_KEYS, broker_spec
from agent.north.mqtt.spec import MqttUplinkSpec, without_credentials
from agent.north.registry import missing, registry_of
from agent.pipeline.evidence import EVIDENCE_AGE_S
from agent.pipeline.store import StoreBounds
from drivers.base import DeviceSpec, ProtocolSpec
from drivers.registry import PROTOCOLS

# --- key schemas: key -> (kind, required); kinds and their ranges: agent/config/toml.py. Each
# range is what the runtime honours: paho takes a keep-alive of at most 65535 s, ids and the
# prefix are single topic levels, the store's age bound must stay a time it can compute.
GATEWAY_KEYS = {
    "id": ("level", True), "enterprise_code": ("level", True), "data_dir": ("path", True),
    "timezone": ("str", False),
}
REGISTRY_COLUMNS = {"range_low": "eng_min", "range_high": "eng_max"}  # registry variable -> point-table column
UPLINK_KEYS = BROKER_KEYS  # `[uplink]`: the uplink named mqtt
COMMON_DEVICE_KEYS = {
    "name": ("str", True), "protocol": ("enum:" + "|".join(PROTOCOLS), True),
    "poll_interval": ("duration:10ms..1d", True), "points": ("path", True),
    "timeout": ("duration:10ms..10m", False), "integrity_interval": ("duration:1s..1d", False),
}
CHECKS_KEYS = {"rules": ("path", False), "inservice_daily": ("str", False)}
DAILY_AT = (0, 5)  # `[checks] inservice_daily`: the daily in-service event's local time
STORE_KEYS = {"max_size": ("size:1MiB..1TiB", False), "max_age": ("duration:10s..3650d", False),
              "evidence_max_age": ("duration:1d..3650d", False)}
CLOCK_KEYS = {"sync_source": ("enum:" + "|".join(SOURCES), False), "sync_file": ("path", False),
              "step_threshold": ("duration:100ms..1h", False)}
HEALTH_KEYS = {"listen": ("str", False)}
TOP_KEYS = ("gateway", "uplink", "uplinks", "devices", "checks", "store", "clock", "health")
TIMEOUT, TIMEOUT_POLLS = 2.0, 5  # a device without `timeout` waits 2 s, or 5 polls when that is less
TIMEOUT_MAX_POLLS = 10  # a written `timeout` must be below this many poll intervals


def parse_daily(text: str) -> tuple[int, int] | None:
    """`[checks] inservice_daily`: HH:MM local time, or "off"."""
    if text == "off":
        return None
    hour, _, minute = text.partition(":")
    if len(hour) == 2 and len(minute) == 2 and hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60:
        return int(hour), int(minute)
    raise ValueError(f"{text!r} is not a time of day; valid: HH:MM such as \"00:05\" (local time, [gateway] timezone) "
                     "or \"off\"")


def default_timeout(poll_interval: float) -> float:
    """The timeout of a device whose file gives none: 2 s, but never more than five poll
    intervals, so that it always passes the rule a written one must pass (below ten)."""
    return min(TIMEOUT, TIMEOUT_POLLS * poll_interval)


def load_config(path: str | Path, table_pending: str | None = None) -> GatewayConfig:
    """Load and validate a gateway config; raise ConfigError listing every problem.

    `table_pending`: a device whose point table may not exist yet, or have no row (`hazgate
    browse` is there to write it); it comes with no points."""
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
    data = load_toml(text, shown, problems)
    if data is None:
        raise ConfigError(problems)
    r = TomlReader(Path(shown), text, problems)
    for key in data:
        if key not in TOP_KEYS:
            r.err((key,), key, f"unknown section; valid: {', '.join(TOP_KEYS)}")
    gw = r.section(data["gateway"], ("gateway",), GATEWAY_KEYS) if "gateway" in data else {}
    if "gateway" not in data:
        r.err((), "gateway", "required section [gateway] is missing")
    up = r.section(_uplink_table(r, data["uplink"]), ("uplink",), UPLINK_KEYS) if "uplink" in data else {}
    if "uplink" not in data and "uplinks" not in data:
        r.err((), "uplink", "no uplink: the required section [uplink] (or [[uplinks]]) is missing")
    if "keepalive" in up and not up["keepalive"].is_integer():
        r.err(("uplink", "keepalive"), "uplink.keepalive", f"{up['keepalive']:g}s is not whole seconds; "
              "valid: whole seconds from 1s to 65535s (the MQTT keep-alive is counted in seconds)")
    timezone = None
    if "timezone" in gw:
        try:
            timezone = parse_timezone(gw["timezone"])
        except ValueError as exc:
            r.err(("gateway", "timezone"), "gateway.timezone", str(exc))
    listed = load_uplinks(r, data.get("uplinks"), r.base,
                          reserved={"mqtt": "the [uplink] table"} if "uplink" in data else None)
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        if up.get(key) is None:
            continue
        why = _not_a_file(up[key]) or (secret_file_problem(up[key]) if key in UPLINK_SECRET_KEYS else None)
        if why:
            r.err(("uplink", key), f"uplink.{key}", why)
    if ("cert_file" in up) != ("key_file" in up):
        r.err(("uplink",), "uplink.key_file", "cert_file and key_file go together; give both or neither")
    checks = r.section(data.get("checks", {}), ("checks",), CHECKS_KEYS)
    if checks.get("rules") is not None and (why := _not_a_file(checks["rules"])):
        r.err(("checks", "rules"), "checks.rules", why)
    daily: tuple[int, int] | None = DAILY_AT
    if "inservice_daily" in checks:
        try:
            daily = parse_daily(checks["inservice_daily"])
        except ValueError as exc:
            r.err(("checks", "inservice_daily"), "checks.inservice_daily", str(exc))

    st = r.section(data.get("store", {}), ("store",), STORE_KEYS)
    ck = r.section(data.get("clock", {}), ("clock",), CLOCK_KEYS)
    health = r.section(data.get("health", {}), ("health",), HEALTH_KEYS)
    listen = None
    if "listen" in health:
        try:
            listen = parse_listen(health["listen"])
        except ValueError as exc:
            r.err(("health", "listen"), "health.listen", str(exc))
    devices = _load_devices(r, data.get("devices", []), table_pending)
    points = [p for d in devices for p in d.points]
    for spec in listed:
        for point, column, why in point_warnings(spec, points):
            problems.warn(point.file, point.line, column, why)
    rules = load_checks(checks.get("rules"), points, problems)
    if problems:
        raise ConfigError(problems)
    _registry_gaps(r, data.get("uplinks"), listed, points)
    uplinks = listed
    if "uplink" in data:
        uplinks = [MqttUplinkSpec(name="mqtt", mqtt=broker_spec(up)), *listed]
    return GatewayConfig(
        path=path, gateway_id=gw["id"], enterprise_code=gw["enterprise_code"], timezone=timezone,
        data_dir=gw["data_dir"], uplinks=uplinks, devices=devices, rules_file=checks.get("rules"), rules=rules,
        store=StoreBounds(max_bytes=st.get("max_size", 1 << 30), max_age=st.get("max_age", 30 * 86400.0),
                          evidence_age=st.get("evidence_max_age", EVIDENCE_AGE_S)),
        clock=ClockConfig(**ck), health_listen=listen, warnings=problems.warnings, inservice_daily=daily,
    )


def _uplink_table(r: TomlReader, raw: Any) -> Any:
    """`[uplink]` as written, with a broker address carrying a user name or password refused
    (and taken out of it, so no other message shows it either)."""
    broker = raw.get("broker") if isinstance(raw, dict) else None
    if not isinstance(broker, str) or "@" not in broker:
        return raw
    shown = without_credentials(broker)
    r.err(("uplink", "broker"), "uplink.broker",
          f"{shown!r} (shown without it): a user name or password in the address would show in logs "
          "and status; valid: mqtt://host:port or mqtts://host:port, with the user name in username "
          "and the password in password_file")
    return {**raw, "broker": shown}


def _not_a_file(path: Path) -> str | None:
    """Why `path` is no readable file (None: it is one); a folder we may not enter says so."""
    try:
        if path.is_file():
            return None
    except OSError as exc:
        return f"cannot reach file {path}: {exc.strerror}; valid: a file the agent's user can read"
    return f"file {path} does not exist"


def _load_devices(r: TomlReader, raw: Any, table_pending: str | None = None) -> list[DeviceSpec]:
    if not isinstance(raw, list) or not raw:
        r.err(("devices",), "devices", "no [[devices]] defined; valid: at least one [[devices]] table")
        return []
    devices: list[DeviceSpec] = []
    names: dict[str, int] = {}
    endpoints: dict[tuple, int] = {}
    buses: dict[str, tuple] = {}
    tags: dict[str, Point] = {}
    for i, item in enumerate(raw):
        loc = ("devices", i)
        proto = PROTOCOLS.get(item.get("protocol")) if isinstance(item, dict) else None
        extra = tuple(proto.keys) if proto else ()
        common = r.section(item, loc, COMMON_DEVICE_KEYS, extra=extra)
        if proto is None:
            continue
        specific = r.section({k: v for k, v in item.items() if k in extra}, loc, proto.keys)
        name = common.get("name")
        if name is None or "points" not in common or "poll_interval" not in common:
            continue
        if name in names:
            r.err((*loc, "name"), "devices.name", f"{name!r} is already used by the device at line {names[name]}; valid: a unique name")
        names.setdefault(name, r.index.line(*loc))
        valid = _check_options(r, loc, proto, specific)
        poll = common["poll_interval"]
        dev = DeviceSpec(  # with options in error, its point table is still checked
            name=name, protocol=item["protocol"], poll_interval=poll,
            points_file=common["points"], options=proto.options(specific) if valid else None,
            timeout=common.get("timeout", default_timeout(poll)),
            integrity_interval=common.get("integrity_interval", 60.0),
        )
        if "timeout" in common and dev.timeout >= poll * TIMEOUT_MAX_POLLS:
            r.err((*loc, "timeout"), "devices.timeout", f"{dev.timeout}s is ten or more poll intervals; "
                  f"valid: below {poll * TIMEOUT_MAX_POLLS:g}s, or no timeout key (then {default_timeout(poll):g}s)")
        if valid:
            where = (dev.protocol, dev.options.where)
            if where in endpoints:
                r.err((*loc, "unit"), "devices.unit", f"device {name!r} uses the same endpoint and unit ({dev.options.where}) as the device at line {endpoints[where]}; valid: one device per endpoint and unit")
            endpoints.setdefault(where, r.index.line(*loc))
            if dev.bus is not None:
                _check_bus(r, loc, dev, buses)
        dev.points = _load_points(r, loc, dev, proto, tags, pending=name == table_pending)
        devices.append(dev)
    return devices


def _check_options(r: TomlReader, loc: tuple, proto: ProtocolSpec, specific: dict) -> bool:
    """Limits, the protocol's own checks and owner-only secret files; True when the options hold."""
    before = len(r.problems)
    for key, (lo, hi) in proto.limits.items():
        if key in specific and not lo <= specific[key] <= hi:
            r.err((*loc, key), f"devices.{key}", f"{quoted(specific[key])} is out of range; valid: {lo}-{hi}")
    for key, msg in proto.check_options(specific):
        r.err((*loc, key), f"devices.{key}", msg)
    for key in proto.secret_keys:
        path = specific.get(key)
        if isinstance(path, Path) and _not_a_file(path) is None and (why := secret_file_problem(path)):
            r.err((*loc, key), f"devices.{key}", why)
    missing = [k for k, (_kind, required) in proto.keys.items() if required and k not in specific]
    return len(r.problems) == before and not missing


def _check_bus(r: TomlReader, loc: tuple, dev: DeviceSpec, buses: dict[str, tuple]) -> None:
    """Devices on one bus (a serial port) are units of one line: they share its settings."""
    settings = dev.options.line()
    line, first, theirs = buses.setdefault(str(dev.bus), (r.index.line(*loc), dev.name, settings))
    for key, value in settings.items():
        if value != theirs[key]:
            shown = ["default" if v is None else repr(v) for v in (value, theirs[key])]
            r.err((*loc, key), f"devices.{key}", f"{shown[0]} differs from {shown[1]} of device {first!r} "
                  f"(line {line}) on the same port {dev.bus}; valid: the same value in every device on one port")


def _load_points(r: TomlReader, loc: tuple, dev: DeviceSpec, proto: ProtocolSpec, tags: dict[str, Point],
                 pending: bool = False) -> list[Point]:
    """The device's point table; `pending`: one that does not exist yet or has no row is no problem."""
    path = dev.points_file
    if pending and not path.exists():
        return []
    try:
        shown = str(path.relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    before = len(r.problems)
    try:
        points = load_point_table(path, proto, r.problems, shown)
    except FileNotFoundError:
        r.err((*loc, "points"), "devices.points", f"point table {path} not found; valid: a CSV file path relative to {r.base}")
        return []
    except OSError as exc:
        r.err((*loc, "points"), "devices.points", f"cannot read point table {path}: {exc}")
        return []
    if not points and len(r.problems) == before and not pending:
        r.problems.add(shown, 1, "points", "point table has no points; valid: one row per point after the header")
    for p in points:
        if p.tag in tags:
            first = tags[p.tag]
            r.problems.add(shown, p.line, "tag", f"{p.tag!r} is already defined at {first.file}:{first.line}; valid: tags unique across the gateway")
        else:
            tags[p.tag] = p
    proto.check_table(points, r.problems)
    return points


def _registry_gaps(r: TomlReader, raw: Any, listed: list, points: list) -> None:
    """A warning for each variable a `[uplinks.registry.record]` uses that some points lack."""
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        spec = next((u for u in listed if isinstance(item, dict) and u.name == item.get("name")), None)
        registry = registry_of(spec)
        if registry is None:
            continue
        for variable, tags in missing(registry.record, points).items():
            column = REGISTRY_COLUMNS.get(variable, variable)
            r.problems.warn(r.path, r.index.line("uplinks", i, "registry", "record"), "uplinks.registry.record",
                            f"{len(tags)} of {len(points)} points have no {column}, which the record's "
                            f"{{{variable}}} needs (e.g. {', '.join(tags[:3])}); they are registered with it "
                            f"empty; valid: fill the {column} column of their point tables")

