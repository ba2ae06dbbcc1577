"""`[[uplinks]]`: the platforms a gateway feeds, each turned into its protocol's typed spec,
every problem as `file:line: key: what is wrong; valid: ...`. The protocols are asked, never
named: agent/north/adapters.py lists them, each says its keys and builds its spec
(agent/north/protocol.py); what they share is read here.

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
from agent.north.adapters import PROTOCOLS
from agent.north.codec import CIPHERS, Codec, build_codec
from agent.north.platform import Delivery
from agent.north.protocol import UplinkProtocol
from agent.north.registry import REGISTRY_VARIABLES
from agent.north.template import ENVELOPE_VARIABLES, RECORD_VARIABLES, Template, compile_template
from agent.north.templated import (
    EVENT_VARIABLES,
    OWN_RECORDS,
    BodySpec,
    MessageTemplates,
    payload_paths,
    time_format_problem,
)

UplinkSpec = Any  # the spec type of its protocol (agent/north/*/spec.py)
NAME = re.compile(r"[A-Za-z0-9-]+")
TABLES = ("envelope", "record", "events", "registry", *OWN_RECORDS)
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
    """One `[[uplinks]]` table being read (agent.north.protocol.UplinkEntry): its location, the
    problems' key prefix, and the parts its protocol's `build` asks for."""

    def __init__(self, r: TomlReader, index: int, base_dir: Path, item: dict):
        self.r, self.loc, self.base, self.item = r, ("uplinks", index), base_dir, item
        self.before = len(r.problems)
        self.proto: UplinkProtocol | None = None
        self.values: dict[str, Any] = {}

    def err(self, path: tuple, key: str, msg: str) -> None:
        self.r.err((*self.loc, *path), ".".join(("uplinks", key)), msg)

    @property
    def clean(self) -> bool:
        return len(self.r.problems) == self.before

    def convert(self, kind: str, value: Any) -> Any:
        return self.r.convert(kind, value)

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

    def body(self) -> BodySpec | None:
        return _body(self)

    def ack(self) -> AckRule | None:
        return _ack(self, self.item.get("ack"))

    def delivery(self) -> Delivery:
        values = self.values
        delivery = Delivery(
            send=values.get("send", "readings"), interval=values.get("interval", 10.0),
            batch=values.get("batch", 200), max_rejects=values.get("max_rejects", 10),
            timeout=values.get("timeout", 10.0))
        if delivery.send == "snapshot" and delivery.interval < SNAPSHOT_MIN_INTERVAL:
            self.err(("interval",), "interval", f"{delivery.interval:g}s is too short for send = "
                     f"\"snapshot\"; valid: {SNAPSHOT_MIN_INTERVAL:g}s or more")
        return delivery


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
        e = _Entry(r, i, base_dir, item)
        spec = _load_one(e, names, reserved or {})
        if spec is not None and e.clean:
            specs.append(spec)
    return specs


def _load_one(e: _Entry, names: dict[str, int], reserved: Mapping[str, str]) -> UplinkSpec | None:
    r, item = e.r, e.item
    protocol = item.get("protocol")
    proto = PROTOCOLS.get(protocol) if isinstance(protocol, str) else None
    if proto is None:
        r.section({k: item[k] for k in ("name", "protocol") if k in item}, e.loc, _common_keys())
        return None
    e.proto = proto
    schema = {**_common_keys(), **proto.keys}
    e.values = values = r.section(item, e.loc, _plain(schema), extra=(*_tables(schema), *TABLES))
    if values.get("name") is not None:
        _check_name(e, values["name"], names, reserved)
    for key, (lo, hi) in proto.limits.items():
        if key in values and not lo <= values[key] <= hi:
            e.err((key,), key, f"{values[key]} is out of range; valid: {lo}-{hi}")
    for key in ("ca_file", "cert_file"):
        if values.get(key) is not None and not values[key].is_file():
            e.err((key,), key, f"file {values[key]} does not exist")
    return proto.build(e, item, values)


def _common_keys() -> dict[str, tuple[str, bool]]:
    return {"name": ("str", True), "protocol": ("enum:" + "|".join(PROTOCOLS), True)}


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


def _codec(e: _Entry) -> Codec | None:
    values = e.values
    steps = e.item.get("codec", ["json"])
    if e.proto is not None and e.proto.no_cipher:
        if isinstance(steps, list) and any(s in CIPHERS for s in steps):
            ciphered = " or ".join(name for name, p in PROTOCOLS.items() if not p.no_cipher)
            e.err(("codec",), "codec", f"protocol = \"{e.item['protocol']}\" takes no cipher "
                  f"({e.proto.no_cipher}); valid: codec = [\"json\"], or protocol {ciphered}")
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


def _body(e: _Entry) -> BodySpec | None:
    item, values = e.item, e.values
    codec = _codec(e)
    time_format = values.get("time_format", "rfc3339")
    if (why := time_format_problem(time_format)) is not None:
        e.err(("time_format",), "time_format", why)
    readings = _templates(e, item, "", RECORD_VARIABLES)
    events = _kind_table(e, "events", EVENT_VARIABLES)
    registry = _kind_table(e, "registry", REGISTRY_VARIABLES)
    if events is None and "events" in item or registry is None and "registry" in item:
        return None
    own = {name: _own_record(e, name, events is not None) for name in OWN_RECORDS if name in item}
    if codec is None or readings is None or None in own.values():
        return None
    return BodySpec(codec=codec, readings=readings, events=events, time_format=time_format, registry=registry,
                    own_records={OWN_RECORDS[name][0]: (t, item[name]["record"]) for name, t in own.items()})


def _kind_table(e: _Entry, name: str, variables: frozenset[str]) -> MessageTemplates | None:
    """`[uplinks.events]` or `[uplinks.registry]`: their own envelope and record, and the keys
    the protocol gives such a message (an http `url`, an mqtt `topic`)."""
    raw = e.item.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        e.err((name,), name, "must be a table with envelope and record")
        return None
    own = e.proto.events_keys if e.proto is not None else {}
    allowed = ("envelope", "record", *own)
    for key in raw:
        if key not in allowed:
            e.err((name, key), f"{name}.{key}", f"unknown key; valid keys here: {', '.join(sorted(allowed))}")
    for key, (kind, _required) in own.items():
        if key in raw:
            try:
                e.r.convert(kind, raw[key])
            except ValueError as exc:
                e.err((name, key), f"{name}.{key}", str(exc))
    return _templates(e, raw, f"{name}.", variables)


def _own_record(e: _Entry, name: str, has_events: bool) -> Template | None:
    """`[uplinks.declarations]`, `[uplinks.daily]`: the record such an event takes in the events
    message instead of `[uplinks.events.record]`."""
    raw, (_kind, variables) = e.item[name], OWN_RECORDS[name]
    if not isinstance(raw, dict) or set(raw) != {"record"}:
        e.err((name,), name, f"must hold just [uplinks.{name}.record]; valid: a table of the platform's "
              "fields, e.g. " + ('IS_USE = "{state}"' if name == "declarations" else 'RATE = "{plant}"'))
        return None
    if not has_events:
        e.err((name, "record"), name, f"{name} go in the events messages, and this uplink has no "
              "[uplinks.events]; valid: declare [uplinks.events] too")
        return None
    template, problems = compile_template(raw["record"], variables, f"{name}.record")
    for problem in problems:
        key, _, msg = problem.partition(": ")
        e.err(_key_loc(key), key, msg)
    return template

def _ack(e: _Entry, raw: Any) -> AckRule | None:
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
    if e.proto is not None and not e.proto.http_status and "status" in raw:
        e.err(("ack",), "ack.status", f"a {e.item['protocol']} reply has no HTTP status; valid: "
              "field and equals only")
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
