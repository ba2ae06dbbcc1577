"""`[[uplinks]]`: the platforms a gateway feeds, each turned into its protocol's typed spec
(HttpSpec, TcpSpec, MqttUplinkSpec), every problem as `file:line: key: what is wrong; valid: ...`.

Checked here, before anything connects: keys per protocol, unique names, templates (an unknown
variable with its key path, an envelope without `{payload}`), the codec chain with its key and
IV (a cipher without a key file, a key of the wrong length), secret files (key, IV and
`secret:PATH` header values) open to other users. Secret contents are read to be checked and
never appear in a problem or a spec's repr.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.common.secrets import read_secret, secret_file_problem
from agent.config.toml import TomlReader
from agent.north.ack import AckRule
from agent.north.codec import CIPHERS, DERIVATIONS, Codec, build_codec
from agent.north.http.spec import Header, HttpSpec
from agent.north.mqtt.spec import MqttSpec, MqttUplinkSpec
from agent.north.platform import SENDS, Delivery
from agent.north.tcp.spec import CONNECTIONS, MAX_REPLY, TcpSpec
from agent.north.template import ENVELOPE_VARIABLES, RECORD_VARIABLES, compile_template
from agent.north.templated import (
    EVENT_VARIABLES,
    BodySpec,
    MessageTemplates,
    payload_paths,
    time_format_problem,
)

UplinkSpec = HttpSpec | TcpSpec | MqttUplinkSpec
PROTOCOLS = ("mqtt", "http", "tcp", "hj212")
NAME = re.compile(r"[A-Za-z0-9-]+")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
SECRET = "secret:"
TABLES = ("envelope", "record", "events")

# key -> (kind, required), kinds as agent/config/toml.py converts them
COMMON_KEYS = {"name": ("str", True), "protocol": ("enum:" + "|".join(PROTOCOLS), True)}
TEMPLATED_KEYS = {"codec": ("list", False), "time_format": ("str", False)}
PLATFORM_KEYS = {
    **TEMPLATED_KEYS, "send": ("enum:" + "|".join(SENDS), False), "interval": ("duration", False),
    "batch": ("int", False), "key_file": ("path", False), "iv_file": ("path", False),
    "iv": ("enum:key", False), "key_derivation": ("enum:" + "|".join(DERIVATIONS), False),
    "ack": ("table", False), "max_rejects": ("int", False), "timeout": ("duration", False),
    "ca_file": ("path", False),
}
MQTT_KEYS = {  # `[uplink]`'s keys
    "broker": ("url:mqtt|mqtts", True), "topic_prefix": ("level", False), "ca_file": ("path", False),
    "cert_file": ("path", False), "key_file": ("path", False), "username": ("str", False),
    "password_file": ("path", False), "publish_interval": ("duration:50ms..1h", False),
    "batch_size": ("int:1..10000", False), "keepalive": ("duration:1s..65535s", False),
}
KEYS = {
    "http": {**COMMON_KEYS, **PLATFORM_KEYS, "url": ("url:http|https", True), "headers": ("table", False)},
    "tcp": {**COMMON_KEYS, **PLATFORM_KEYS, "host": ("str", True), "port": ("int", True),
            "delimiter": ("str", False), "connection": ("enum:" + "|".join(CONNECTIONS), False),
            "tls": ("bool", False), "max_reply": ("int", False)},
    "mqtt": {**COMMON_KEYS, **MQTT_KEYS, **TEMPLATED_KEYS, "topic": ("str", False)},
}
EVENTS_KEYS = {"http": ("url",), "tcp": (), "mqtt": ("topic",)}
LIMITS = {"batch": (1, 10000), "batch_size": (1, 10000), "max_rejects": (1, 1000),
          "port": (1, 65535), "max_reply": (64, 64 << 20)}
ACK_KEYS = ("status", "field", "equals")
SNAPSHOT_MIN_INTERVAL = 1.0  # seconds: the shortest snapshot cadence


def parse_timezone(name: Any) -> tzinfo:
    """`[gateway] timezone`: an IANA zone; ValueError saying what is valid."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{name!r} is not a time zone name; valid: an IANA name such as "
                         "\"Asia/Shanghai\"")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone name; valid: an IANA name such as "
                         "\"Asia/Shanghai\" or \"UTC\"") from None


class _Entry:
    """One `[[uplinks]]` table being read: its location and the problems' key prefix."""

    def __init__(self, r: TomlReader, index: int, base_dir: Path):
        self.r, self.loc, self.base = r, ("uplinks", index), base_dir
        self.before = len(r.problems)

    def err(self, path: tuple, key: str, msg: str) -> None:
        self.r.err((*self.loc, *path), ".".join(("uplinks", key)), msg)

    @property
    def clean(self) -> bool:
        return len(self.r.problems) == self.before

    def secret_text(self, key: str, path: Path, path_loc: tuple | None = None) -> str | None:
        """A secret file's text, checked: present, owner-only, readable UTF-8, not empty."""
        where = path_loc or (key,)
        if not path.is_file():
            self.err(where, key, f"file {path} does not exist")
            return None
        why = secret_file_problem(path)
        if why:
            self.err(where, key, why)
            return None
        try:
            text = read_secret(path)
        except (OSError, UnicodeDecodeError) as exc:
            self.err(where, key, f"cannot read {path}: {exc}; valid: a UTF-8 text file")
            return None
        if not text:
            self.err(where, key, f"{path} is empty; valid: the value as issued")
            return None
        return text


def load_uplinks(r: TomlReader, raw: Any, base_dir: Path,
                 reserved: Mapping[str, str] | None = None) -> list[UplinkSpec]:
    """Every `[[uplinks]]` table as its protocol's spec; problems go to `r.problems`, and an
    uplink with problems is left out. `reserved`: names already taken (e.g. {"mqtt": "the
    [uplink] table"})."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        r.err(("uplinks",), "uplinks", "must be [[uplinks]] tables; valid: one [[uplinks]] "
              "table per platform")
        return []
    specs: list[UplinkSpec] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        e = _Entry(r, i, base_dir)
        spec = _load_one(e, item, names, reserved or {})
        if spec is not None and e.clean:
            specs.append(spec)
    return specs


def _load_one(e: _Entry, item: dict, names: dict[str, int],
              reserved: Mapping[str, str]) -> UplinkSpec | None:
    r = e.r
    protocol = item.get("protocol")
    if protocol == "hj212":
        e.err(("protocol",), "protocol", "hj212 is not in this version; valid: mqtt, http, tcp")
        return None
    schema = KEYS.get(protocol) if isinstance(protocol, str) else None
    if schema is None:
        r.section({k: item[k] for k in ("name", "protocol") if k in item}, e.loc, COMMON_KEYS)
        return None
    values = r.section(item, e.loc, _plain(schema), extra=(*_tables(schema), *TABLES))
    name = values.get("name")
    if name is not None:
        _check_name(e, name, names, reserved)
    for key, (lo, hi) in LIMITS.items():
        if key in values and not lo <= values[key] <= hi:
            e.err((key,), key, f"{values[key]} is out of range; valid: {lo}-{hi}")
    for key in ("ca_file", "cert_file"):
        if values.get(key) is not None and not values[key].is_file():
            e.err((key,), key, f"file {values[key]} does not exist")
    if protocol == "mqtt":
        return _mqtt(e, item, values)
    body = _body(e, item, protocol, values)
    ack = _ack(e, item.get("ack"), protocol)
    delivery = Delivery(
        send=values.get("send", "readings"), interval=values.get("interval", 10.0),
        batch=values.get("batch", 200), max_rejects=values.get("max_rejects", 10),
        timeout=values.get("timeout", 10.0))
    if delivery.send == "snapshot" and delivery.interval < SNAPSHOT_MIN_INTERVAL:
        e.err(("interval",), "interval", f"{delivery.interval:g}s is too short for send = \"snapshot\"; "
              f"valid: {SNAPSHOT_MIN_INTERVAL:g}s or more")
    if protocol == "http":
        headers = _headers(e, item.get("headers"))
        if values.get("ca_file") is not None and str(values.get("url", "")).startswith("http:"):
            e.err(("ca_file",), "ca_file", "the url is http://, so no certificate is checked; "
                  "valid: an https:// url with ca_file, or no ca_file")
        events = item.get("events")
        if not e.clean or name is None or body is None or ack is None or headers is None:
            return None
        return HttpSpec(name=name, url=values["url"], body=body, delivery=delivery, ack=ack,
                        ca_file=values.get("ca_file"), headers=headers,
                        events_url=events.get("url") if isinstance(events, dict) else None)
    delimiter = values.get("delimiter", "@@")
    if values.get("ca_file") is not None and not values.get("tls", False):
        e.err(("ca_file",), "ca_file", "set, but tls is false; valid: tls = true with ca_file, "
              "or no ca_file")
    if not e.clean or name is None or body is None or ack is None:
        return None
    return TcpSpec(name=name, host=values["host"], port=values["port"], body=body,
                   delivery=delivery, ack=ack, delimiter=delimiter.encode("utf-8"),
                   connection=values.get("connection", "per-message"),
                   tls=values.get("tls", False), ca_file=values.get("ca_file"),
                   max_reply=values.get("max_reply", MAX_REPLY))


def _plain(schema: dict) -> dict:
    """The keys TomlReader converts (tables and lists are read here)."""
    return {k: v for k, v in schema.items() if v[0] not in ("table", "list")}


def _tables(schema: dict) -> tuple[str, ...]:
    return tuple(k for k, v in schema.items() if v[0] in ("table", "list"))


def _check_name(e: _Entry, name: str, names: dict[str, int], reserved: Mapping[str, str]) -> None:
    if not NAME.fullmatch(name):
        e.err(("name",), "name", f"{name!r} has characters other than letters, digits and '-'; "
              "valid: e.g. \"province\", \"park-1\"")
    elif name in names:
        e.err(("name",), "name", f"{name!r} is already used by the uplink at line {names[name]}; "
              "valid: a unique name")
    elif name in reserved:
        e.err(("name",), "name", f"{name!r} is {reserved[name]}'s name; valid: another name")
    names.setdefault(name, e.r.index.line(*e.loc))


def _codec(e: _Entry, item: dict, values: dict, protocol: str) -> Codec | None:
    steps = item.get("codec", ["json"])
    if protocol == "mqtt":  # key_file is the TLS client key there
        if isinstance(steps, list) and any(s in CIPHERS for s in steps):
            e.err(("codec",), "codec", "an mqtt uplink takes no cipher (its key_file is the TLS "
                  "client key); valid: codec = [\"json\"], or an http or tcp uplink")
            return None
        key_text = iv_text = None
    else:
        key_text = e.secret_text("key_file", values["key_file"]) if "key_file" in values else None
        iv_text = e.secret_text("iv_file", values["iv_file"]) if "iv_file" in values else None
        if ("key_file" in values and key_text is None) or ("iv_file" in values and iv_text is None):
            return None
    codec, problems = build_codec(steps, key_text, iv_text, values.get("iv") == "key",
                                  values.get("key_derivation", "raw"))
    for problem in problems:
        key, _, msg = problem.partition(": ")
        e.err((key,), key, msg)
    return codec


def _templates(e: _Entry, item: Any, prefix: str, record_vars: frozenset[str]) -> MessageTemplates | None:
    """`envelope` and `record` of an uplink (prefix "") or of its events ("events.")."""
    if not isinstance(item, dict):
        return None
    done: dict[str, Any] = {}
    for part, allowed in (("envelope", ENVELOPE_VARIABLES), ("record", record_vars)):
        where = prefix + part
        path = tuple(where.split("."))
        table = item.get(part)
        if table is None:
            e.err(path[:-1], where, f"[uplinks.{where}] is missing; valid: a table of the "
                  f"platform's {part} fields, e.g. " + (
                      'data = "{payload}"' if part == "envelope" else 'VALUE = "{value}"'))
            continue
        template, problems = compile_template(table, allowed, where)
        for problem in problems:
            key, _, msg = problem.partition(": ")
            e.err(_key_loc(key), key, msg)
        if template is not None and part == "envelope":
            found = payload_paths(table)
            if len(found) != 1 or not found[0][1]:
                e.err(path, where, "needs \"{payload}\" as one whole value, once, e.g. "
                      "data = \"{payload}\"; the records go there")
                template = None
        done[part] = (template, table)
    if any(t is None for t, _ in done.values()) or len(done) < 2:
        return None
    return MessageTemplates(done["envelope"][0], done["record"][0], done["envelope"][1],
                            done["record"][1])


def _key_loc(keypath: str) -> tuple:
    """A template problem's key path (`record.VALUE`, `envelope."a b"[0]`) as LineIndex keys."""
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|[^.\[\]]+', keypath)
    return tuple(p.strip('"') for p in parts if not p.isdigit())


def _body(e: _Entry, item: dict, protocol: str, values: dict) -> BodySpec | None:
    codec = _codec(e, item, values, protocol)
    time_format = values.get("time_format", "rfc3339")
    if (why := time_format_problem(time_format)) is not None:
        e.err(("time_format",), "time_format", why)
    readings = _templates(e, item, "", RECORD_VARIABLES)
    events_raw = item.get("events")
    events = None
    if events_raw is not None:
        if not isinstance(events_raw, dict):
            e.err(("events",), "events", "must be a table with envelope and record")
            return None
        allowed = ("envelope", "record", *EVENTS_KEYS[protocol])
        for key in events_raw:
            if key not in allowed:
                e.err(("events", key), f"events.{key}", "unknown key; valid keys here: "
                      f"{', '.join(sorted(allowed))}")
        for key in EVENTS_KEYS[protocol]:
            if key in events_raw:
                try:
                    e.r.convert("url:http|https" if key == "url" else "str", events_raw[key])
                except ValueError as exc:
                    e.err(("events", key), f"events.{key}", str(exc))
        events = _templates(e, events_raw, "events.", EVENT_VARIABLES)
        if events is None:
            return None
    if codec is None or readings is None:
        return None
    return BodySpec(codec=codec, readings=readings, events=events, time_format=time_format)


def _ack(e: _Entry, raw: Any, protocol: str) -> AckRule | None:
    if raw is None:
        return AckRule()
    if not isinstance(raw, dict):
        e.err(("ack",), "ack", f"{raw!r} is not a table; valid: e.g. "
              "ack = { status = [200], field = \"code\", equals = \"0\" }")
        return None
    before = e.clean
    for key in raw:
        if key not in ACK_KEYS:
            e.err(("ack",), f"ack.{key}", f"unknown key; valid keys here: {', '.join(ACK_KEYS)}")
    status = raw.get("status", [])
    status = [status] if isinstance(status, int) and not isinstance(status, bool) else status
    if protocol != "http" and "status" in raw:
        e.err(("ack",), "ack.status", f"a {protocol} reply has no HTTP status; valid: field and "
              "equals only")
    elif not isinstance(status, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in status):
        e.err(("ack",), "ack.status", f"{raw.get('status')!r} is not a list of HTTP statuses; "
              "valid: e.g. [200] or [200, 201] (empty or absent: any 2xx)")
    field, equals = raw.get("field"), raw.get("equals")
    if field is not None and (not isinstance(field, str) or not field or
                              any(not p for p in field.split("."))):
        e.err(("ack",), "ack.field", f"{field!r} is not a dotted path; valid: e.g. \"code\" or "
              "\"data.code\"")
    if (field is None) != (equals is None):
        e.err(("ack",), "ack.equals" if equals is None else "ack.field",
              "field and equals go together; valid: both (e.g. field = \"code\", equals = "
              "\"0\") or neither")
    elif isinstance(equals, dict | list):
        e.err(("ack",), "ack.equals", f"{equals!r} is not a text, number or true/false")
    if before and not e.clean:
        return None
    if equals is not None and not isinstance(equals, str):
        equals = ("true" if equals else "false") if isinstance(equals, bool) else repr(equals)
    return AckRule(status=tuple(status) if isinstance(status, list) else (), field=field,
                   equals=equals)


def _headers(e: _Entry, raw: Any) -> tuple[Header, ...] | None:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        e.err(("headers",), "headers", "must be a table; valid: e.g. headers = { appsecret = "
              "\"secret:secrets/mem.appsecret\" }")
        return None
    out = []
    for name, value in raw.items():
        key = f"headers.{name}"
        if not HEADER_NAME.fullmatch(name):
            e.err(("headers",), key, f"{name!r} is not an HTTP header name; valid: letters, "
                  "digits and -")
            continue
        if not isinstance(value, str) or not value:
            e.err(("headers",), key, f"{value!r} is not a text; valid: a value, or "
                  "\"secret:PATH\" for a value read from an owner-only file")
            continue
        if value.startswith(SECRET):
            path = Path(value[len(SECRET):])
            path = path if path.is_absolute() else (e.base / path).resolve()
            text = e.secret_text(key, path, ("headers",))
            if text is not None and _bad_header_value(text):
                e.err(("headers",), key, f"{path} holds line breaks or control characters; "
                      "valid: the value as issued, on one line")
            elif text is not None:
                out.append(Header(name, secret=path))
        elif _bad_header_value(value):
            e.err(("headers",), key, "holds line breaks or control characters; valid: one line")
        else:
            out.append(Header(name, value=value))
    return tuple(out)


def _bad_header_value(text: str) -> bool:
    return any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text)


def _mqtt(e: _Entry, item: dict, values: dict) -> MqttUplinkSpec | None:
    for key in ("key_file", "password_file"):
        if values.get(key) is not None:
            e.secret_text(key, values[key])
    if ("cert_file" in values) != ("key_file" in values):
        e.err(("key_file",), "key_file", "cert_file and key_file go together; give both or "
              "neither")
    templated = any(k in item for k in ("topic", "envelope", "record", "events", "codec",
                                          "time_format"))
    body = None
    if templated:
        if "topic" not in values:
            e.err((), "topic", "a templated mqtt uplink needs the topic its messages go to; "
                  "valid: e.g. topic = \"platform/realtime\"")
        body = _body(e, item, "mqtt", values)
    name = values.get("name")
    if not e.clean or name is None or (templated and body is None):
        return None
    spec = MqttSpec(
        broker=values["broker"], topic_prefix=values.get("topic_prefix", "hazchem"),
        ca_file=values.get("ca_file"), cert_file=values.get("cert_file"),
        key_file=values.get("key_file"), username=values.get("username"),
        password_file=values.get("password_file"),
        publish_interval=values.get("publish_interval", 1.0),
        batch_size=values.get("batch_size", 500), keepalive=values.get("keepalive", 30.0))
    events = item.get("events")
    return MqttUplinkSpec(name=name, mqtt=spec, topic=values.get("topic"), body=body,
                          events_topic=events.get("topic") if isinstance(events, dict) else None)
