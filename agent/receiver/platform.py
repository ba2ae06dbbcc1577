"""`hazgate receive --listen URL`: a reference platform for an `http` or `tcp` uplink.

Given the same uplink table as the gateway (HttpSpec or TcpSpec), it decodes every message
with the uplink's codec chain, checks it against the uplink's templates (every key of the
envelope and of each record present, constants as written, single-variable values of their
variable's type, nothing extra), replies as a platform would under the uplink's ack rule, and
stores the records in SQLite. Per gateway it counts messages, records, duplicates (by
`data_id`, else by `seq`), gaps (by `seq`), undecodable bodies, template violations and
refusals, and reports them in the MQTT receiver's summary form (agent/receiver/mqtt.py).

Controls for tests and commissioning: refuse all messages, or those with a given `data_id` or
`seq`, or holding a record whose key has a given value; delay every reply; answer every
message with an HTTP error status (TCP: close without a reply), storing nothing.

Messages are identified per gateway by the `{gateway}` variable (in the envelope, else in the
records), else they are all counted under the uplink's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from aiohttp import web

from agent.common.secrets import read_secret
from agent.common.timefmt import now_ms, rfc3339
from agent.model import QUALITIES
from agent.north.codec import CodecError
from agent.north.framing import Deframer, FramingError, frame
from agent.north.http.spec import HttpSpec
from agent.north.mqtt.schema import SEVERITIES
from agent.north.tcp.spec import TcpSpec
from agent.north.template import split_placeholders
from agent.north.templated import MessageTemplates, payload_paths
from agent.receiver.mqtt import INT64_MAX, INT64_MIN, SeqSet
from agent.receiver.problems import Problems

log = logging.getLogger("hazgate.receive")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
MAX_BODY = 64 << 20
TICK = 0.2
HEX32 = re.compile(r"[0-9a-f]{32}")
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)")
MISSING_SHOWN = 20


# --- controls -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RejectRule:
    """Which messages the platform refuses: all, or by data_id, seq or a record's value."""

    all: bool = False
    data_ids: frozenset[str] = frozenset()
    seqs: frozenset[int] = frozenset()
    record: tuple[str, str] | None = None  # (record key, value as text)

    def matches(self, data_id: Any, seq: Any, records: list) -> bool:
        if self.all or data_id in self.data_ids or seq in self.seqs:
            return True
        if self.record is None:
            return False
        key, value = self.record
        return any(isinstance(r, dict) and key in r and _as_text(r[key]) == value for r in records)


def parse_reject(text: str) -> RejectRule:
    """`all`, `data_id=HEX`, `seq=N` or `record:KEY=VALUE`; ValueError saying what is valid."""
    what, _, value = text.partition("=")
    if text == "all":
        return RejectRule(all=True)
    if what == "data_id" and value:
        return RejectRule(data_ids=frozenset(value.split(",")))
    if what == "seq" and value and all(v.isdigit() for v in value.split(",")):
        return RejectRule(seqs=frozenset(int(v) for v in value.split(",")))
    if what.startswith("record:") and len(what) > 7 and value:
        return RejectRule(record=(what[7:], value))
    raise ValueError(f"{text!r} is not a reject rule; valid: all, data_id=HEX[,HEX], seq=N[,N] "
                     "or record:KEY=VALUE")


@dataclass(frozen=True)
class Controls:
    reject: RejectRule | None = None  # None: accept every valid message
    delay: float = 0.0  # seconds before each reply
    fail: int | None = None  # HTTP: answer every message with this status; TCP: close, no reply


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    accepted: bool


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode("utf-8")


# --- checking messages against the templates ------------------------------------------------

def _text(v: Any) -> bool:
    return type(v) is str


def _int(v: Any) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


def _number(v: Any) -> bool:
    return v is None or type(v) in (float, bool) or _int(v)


def _opt_text(v: Any) -> bool:
    return v is None or type(v) is str


def _scalar(v: Any) -> bool:
    return v is None or type(v) in (float, bool, str) or _int(v)


def _is_rfc3339(v: Any) -> bool:
    """RFC 3339 with milliseconds and an offset, a real date and time."""
    if type(v) is not str or RFC3339_MS.fullmatch(v) is None:
        return False
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _ranges_text(ranges: list[tuple[int, int]]) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:MISSING_SHOWN]]
    if len(ranges) > MISSING_SHOWN:
        parts.append(f"...+{len(ranges) - MISSING_SHOWN}")
    return "[" + ",".join(parts) + "]"


def _time_rule(time_format: str) -> tuple[Any, str]:
    if time_format == "rfc3339":
        return _is_rfc3339, "an RFC 3339 time with milliseconds and offset"
    if time_format == "epoch_ms":
        return _int, "a whole number of milliseconds"

    def parses(v: Any) -> bool:
        try:
            datetime.strptime(v, time_format)
        except (TypeError, ValueError):
            return False
        return True

    return parses, f"a time written as {time_format!r}"


def variable_rules(time_format: str, plain_json: bool) -> dict[str, dict[str, tuple[Any, str]]]:
    """For each kind of template: variable -> (check, what it must be)."""
    time_check = _time_rule(time_format)
    text = (_text, "a string")
    common = {"gateway": text, "enterprise": text}
    record = {
        **common, "tag": (lambda v: _text(v) and v != "", "a non-empty string"),
        "name": text, "unit": text, "kind": text, "target_code": text, "hazard_source": text,
        "equipment": text, "value": (_number, "a number, true/false or null"),
        "quality": (lambda v: v in QUALITIES, f"one of {', '.join(QUALITIES)}"),
        "reason": (_opt_text, "a string or null"), "ts": time_check,
        "ts_ms": (_int, "a whole number"), "backfill": (lambda v: type(v) is bool, "true or false"),
    }
    opt = (_opt_text, "a string or null")
    event = {
        **common, "id": (lambda v: _text(v) or _int(v), "a string or a whole number"),
        "kind": text, "state": text,
        "severity": (lambda v: v in SEVERITIES, f"one of {', '.join(SEVERITIES)}"),
        "ts": (lambda v: v is None or time_check[0](v), time_check[1] + " or null"),
        "ts_ms": (lambda v: v is None or _int(v), "a whole number or null"),
        **dict.fromkeys(("tag", "interlock", "source", "name", "unit", "level", "reason",
                         "target_code", "hazard_source", "equipment"), opt),
        "value": (_scalar, "a number, string, true/false or null"),
        "limit": (_scalar, "a number, string, true/false or null"),
        "event": (lambda v: type(v) is dict, "an object"),
    }
    declaration = {
        **common, "id": event["id"], "ts": event["ts"], "ts_ms": event["ts_ms"], "event": event["event"],
        "subject": (lambda v: _text(v) and v != "", "a non-empty string"),
        "kind": (lambda v: v in ("point", "interlock"), "point or interlock"),
        "state": (lambda v: v in ("stopped", "restored", "expired"), "stopped, restored or expired"),
        "by": text, "reason": text, "note": text, "since": time_check, "until": event["ts"],
        **dict.fromkeys(("name", "target_code", "hazard_source", "equipment"), opt),
    }
    number = (lambda v: v is None or _number(v), "a number or null")
    registry = {
        **common, "tag": record["tag"], "kind": text, "in_service": (lambda v: type(v) is bool, "true or false"),
        **dict.fromkeys(("name", "unit", "target_code", "hazard_source", "equipment", "device"), opt),
        **dict.fromkeys(("ll", "l", "h", "hh", "range_low", "range_high"), number),
    }
    envelope = {
        **common,
        "payload": ((lambda v: type(v) is list) if plain_json else _text,
                    "a list of records" if plain_json else "the coded records as text"),
        "data_id": (lambda v: _text(v) and HEX32.fullmatch(v) is not None, "32 hex digits"),
        "seq": (lambda v: _int(v) and v >= 1, "a whole number of 1 or more"),
        "count": (lambda v: _int(v) and v >= 0, "a whole number"),
        "sent_at": time_check,
    }
    daily = {
        **common, "id": event["id"], "ts": event["ts"], "ts_ms": event["ts_ms"], "event": event["event"],
        "day": (lambda v: _text(v) and re.fullmatch(r"\d{4}-\d\d-\d\d", v) is not None, "a YYYY-MM-DD day"),
        "from": time_check, "to": time_check,
        "plant": (lambda v: v is None or (_number(v) and not isinstance(v, bool) and 0 <= v <= 1), "a share 0..1 or null"),
        "interlocks": (lambda v: type(v) is dict, "an object: id -> share"),
        "detectors": (lambda v: type(v) is dict, "an object: tag -> share"),
    }
    return {"record": record, "event": event, "declaration": declaration, "inservice_daily": daily,
            "registry": registry, "envelope": envelope}


def check(template: Any, value: Any, rules: dict[str, tuple[Any, str]], where: str,
          p: Problems) -> None:
    """`value` as `template` renders it: keys, constants, and variables' types."""
    if isinstance(template, dict):
        if type(value) is not dict:
            p.add(where or "message", f"is {type(value).__name__}, not an object")
            return
        for key, sub in template.items():
            if key not in value:
                p.add(f"{where}.{key}" if where else key, "is missing")
            else:
                check(sub, value[key], rules, f"{where}.{key}" if where else key, p)
        for key in value:
            if key not in template:
                p.add(f"{where}.{key}" if where else key, "is not in the template")
        return
    if isinstance(template, list):
        if type(value) is not list or len(value) != len(template):
            p.add(where, f"is not a list of {len(template)}")
            return
        for i, (sub, v) in enumerate(zip(template, value, strict=True)):
            check(sub, v, rules, f"{where}[{i}]", p)
        return
    if not isinstance(template, str):
        if value != template or type(value) is not type(template):
            p.add(where, f"{value!r} is not the constant {template!r}")
        return
    literals, names = split_placeholders(template)
    if not names:
        if value != literals[0]:
            p.add(where, f"{value!r} is not the constant {literals[0]!r}")
        return
    if len(names) == 1 and literals == ["", ""]:
        ok, what = rules[names[0]]
        if not ok(value):
            p.add(where, f"{value!r} is not {what} ({{{names[0]}}})")
        return
    pattern = "(.*?)".join(re.escape(lit) for lit in literals)
    if type(value) is not str or re.fullmatch(pattern, value, re.DOTALL) is None:
        p.add(where, f"{value!r} does not read as the text template {template!r}")


def _at(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _variable_path(table: Any, name: str, path: tuple = ()) -> tuple | None:
    """Where a template holds exactly `{name}`, or None."""
    if isinstance(table, dict):
        items = table.items()
    elif isinstance(table, list):
        items = enumerate(table)
    else:
        return path if table == "{" + name + "}" else None
    for key, sub in items:
        found = _variable_path(sub, name, (*path, key))
        if found is not None:
            return found
    return None


# --- the receiver -----------------------------------------------------------------------------

COUNTERS = ("messages", "records", "events", "duplicates", "undecodable", "violations", "rejected")

DB_SCHEMA = """
CREATE TABLE IF NOT EXISTS platform_messages(
  gateway TEXT NOT NULL, data_id TEXT, seq INTEGER, kind TEXT NOT NULL, received_at TEXT NOT NULL,
  count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS platform_records(
  gateway TEXT NOT NULL, data_id TEXT, seq INTEGER, kind TEXT NOT NULL, idx INTEGER NOT NULL,
  tag TEXT, ts, value, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS platform_violations(
  gateway TEXT, data_id TEXT, seq INTEGER, received_at TEXT NOT NULL, problems TEXT NOT NULL,
  body BLOB);
CREATE TABLE IF NOT EXISTS platform_gateways(
  gateway TEXT PRIMARY KEY, messages INTEGER NOT NULL, records INTEGER NOT NULL,
  events INTEGER NOT NULL, duplicates INTEGER NOT NULL, undecodable INTEGER NOT NULL,
  violations INTEGER NOT NULL, rejected INTEGER NOT NULL, first_seq INTEGER, highest_seq INTEGER,
  last_received TEXT);
"""


@dataclass
class PlatformGateway:
    name: str
    messages: int = 0
    records: int = 0
    events: int = 0
    duplicates: int = 0
    undecodable: int = 0
    violations: int = 0
    rejected: int = 0
    first: int | None = None
    highest: int | None = None
    last_received: str | None = None
    seen: SeqSet = field(default_factory=SeqSet)
    data_ids: set[str] = field(default_factory=set)

    def gaps(self) -> list[tuple[int, int]]:
        if self.first is None or self.highest is None:
            return []
        return self.seen.missing(self.first, self.highest)

    def report(self) -> dict:
        gaps = self.gaps()
        out: dict[str, Any] = {k: getattr(self, k) for k in COUNTERS}
        out.update(gaps=len(gaps), missing=[list(g) for g in gaps],
                   missing_count=sum(b - a + 1 for a, b in gaps), first_seq=self.first,
                   highest_seq=self.highest, last_received=self.last_received)
        return out

    def line(self) -> str:
        gaps = self.gaps()
        return (f"{self.name or '(empty)'}: messages={self.messages} records={self.records} "
                f"duplicates={self.duplicates} gaps={len(gaps)} undecodable={self.undecodable} "
                f"violations={self.violations} rejected={self.rejected} "
                f"missing={_ranges_text(gaps)}")


@dataclass(frozen=True)
class _Kind:
    """One kind of message (readings or events) as the receiver reads it."""

    name: str
    templates: MessageTemplates
    payload: tuple
    data_id: tuple | None
    seq: tuple | None
    gateway: tuple | None
    record_gateway: tuple | None
    tag: tuple | None
    ts: tuple | None
    value: tuple | None


def _kind(name: str, templates: MessageTemplates) -> _Kind:
    env, rec = templates.envelope_table, templates.record_table
    return _Kind(name, templates, payload_paths(env)[0][0], _variable_path(env, "data_id"),
                 _variable_path(env, "seq"), _variable_path(env, "gateway"),
                 _variable_path(rec, "gateway"), _variable_path(rec, "tag"),
                 _variable_path(rec, "ts"), _variable_path(rec, "value"))


class PlatformReceiver:
    """Decodes, checks, de-duplicates and stores messages of one uplink; says what to reply."""

    def __init__(self, spec: HttpSpec | TcpSpec, db: sqlite3.Connection,
                 controls: Controls = Controls()):
        self.spec, self.db = spec, db
        body = spec.body
        self.codec = body.codec
        self.kinds = [_kind("readings", body.readings)]
        if body.events is not None:
            self.kinds.append(_kind("events", body.events))
        if body.registry is not None:  # its records name the gateway, its readings may not: not an identity
            self.kinds.append(replace(_kind("registry", body.registry), record_gateway=None))
        rules = variable_rules(body.time_format, len(body.codec.steps) == 1)
        self.rules = {"readings": rules["record"], "events": rules["event"],
                      "registry": rules["registry"], "envelope": rules["envelope"]}
        # events with a record of their own in the events messages: (its table, its variables' rules)
        self.own_records = [(table, rules[kind]) for kind, (_t, table) in body.own_records.items()]
        self.set_controls(controls)
        db.executescript(DB_SCHEMA)
        self.gateways = self._load()
        self.received = 0

    def set_controls(self, controls: Controls) -> None:
        if controls.reject is not None and isinstance(self.spec, TcpSpec) and not self.spec.ack.field:
            raise ValueError("this uplink's ack rule has no field: every reply frame accepts, so "
                             "a refusal cannot be expressed; give the uplink ack.field/equals")
        self.controls = controls

    # --- replies as the ack rule reads them
    def _reply(self, accepted: bool, why: str, data_id: Any) -> Reply:
        rule = self.spec.ack
        status = rule.status[0] if rule.status else 200
        if rule.field is None:
            body = {"msg": "success" if accepted else why}
            return Reply(status if accepted else 400, orjson.dumps(body), accepted)
        value: Any = rule.equals
        if not accepted:
            value = "1" if rule.equals != "1" else "-1"
        out: dict = {}
        node = out
        *parents, last = rule.path()
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = int(value) if re.fullmatch(r"-?\d+", value or "") else value
        node["msg"] = "success" if accepted else (
            f"{why}; failed records [{orjson.dumps(data_id).decode()}]" if data_id else why)
        return Reply(status, orjson.dumps(out), accepted)

    def failure(self) -> Reply:
        return Reply(self.controls.fail or 503, b'{"msg": "unavailable"}', False)

    # --- handling one body
    def gateway(self, name: str) -> PlatformGateway:
        gw = self.gateways.get(name)
        if gw is None:
            gw = self.gateways[name] = PlatformGateway(name)
        return gw

    def handle(self, body: bytes, received_ms: int | None = None) -> Reply:
        """One message: decode, check, store; the reply a platform would give."""
        received = rfc3339(received_ms or now_ms())
        self.received += 1
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._bad(self.gateway(self.spec.name), None, None, received, body,
                             [f"message: not UTF-8 JSON: {exc}"], undecodable=True)
        kind, problems = self._envelope_kind(envelope)
        data_id = self._get(envelope, kind.data_id)
        seq = self._get(envelope, kind.seq)
        seq = seq if _int(seq) else None
        records, undecodable = self._records(envelope, kind, problems)
        name = self._get(envelope, kind.gateway)
        if not isinstance(name, str) and records and kind.record_gateway is not None:
            name = self._get(records[0], kind.record_gateway)
        gw = self.gateway(name if isinstance(name, str) else self.spec.name)
        gw.last_received = received
        if problems:
            return self._bad(gw, data_id, seq, received, body, problems, undecodable)
        reject = self.controls.reject
        if reject is not None and reject.matches(data_id, seq, records):
            gw.rejected += 1
            self._save_gateway(gw)
            return self._reply(False, "refused by the reference platform's --reject rule", data_id)
        if (data_id in gw.data_ids) if kind.data_id else (seq is not None and seq in gw.seen):
            gw.duplicates += 1
            self._save_gateway(gw)
            return self._reply(True, "", data_id)
        self._store(gw, kind, data_id, seq, received, records)
        return self._reply(True, "", data_id)

    @staticmethod
    def _get(node: Any, path: tuple | None) -> Any:
        if path is None:
            return None
        try:
            return _at(node, path)
        except (KeyError, IndexError, TypeError):
            return None

    def _envelope_kind(self, envelope: Any) -> tuple[_Kind, Problems]:
        """The kind whose envelope this is (readings unless the events one fits better)."""
        best: tuple[_Kind, Problems] | None = None
        for kind in self.kinds:
            p = Problems()
            check(kind.templates.envelope_table, envelope, self.rules["envelope"], "", p)
            if best is None or len(p) < len(best[1]):
                best = (kind, p)
        assert best is not None
        return best

    def _records(self, envelope: Any, kind: _Kind, p: Problems) -> tuple[list, bool]:
        """The records inside the payload, each checked; (records, undecodable)."""
        payload = self._get(envelope, kind.payload)
        if payload is None:
            return [], False
        if not isinstance(payload, list):
            try:
                payload = self.codec.decode(payload)
            except CodecError as exc:
                p.add("payload", f"undecodable: {exc}")
                return [], True
        if type(payload) is not list:
            p.add("payload", f"decodes to {type(payload).__name__}, not a list of records")
            return [], False
        shapes = [(kind.templates.record_table, self.rules[kind.name])]
        if kind.name == "events":
            shapes += self.own_records
        for i, record in enumerate(payload):
            table, rules = shapes[0] if len(shapes) == 1 else self._best_fit(record, shapes)
            check(table, record, rules, f"records[{i}]", p)
        return payload, False

    @staticmethod
    def _best_fit(record: Any, shapes: list[tuple[dict, dict]]) -> tuple[dict, dict]:
        """The record template (events, or a declaration's or daily event's own) it fits best."""
        def misfits(shape: tuple[dict, dict]) -> int:
            found = Problems()
            check(shape[0], record, shape[1], "", found)
            return len(found)

        return min(shapes, key=misfits)

    def _bad(self, gw: PlatformGateway, data_id: Any, seq: Any, received: str, body: bytes,
             problems: list[str], undecodable: bool) -> Reply:
        if undecodable:
            gw.undecodable += 1
        else:
            gw.violations += 1
        log.warning("undecodable message" if undecodable else "template violation", extra={
            "fields": {"gateway": gw.name, "data_id": data_id, "seq": seq,
                       "problems": "; ".join(problems[:3])}})
        with transaction(self.db):
            self.db.execute("INSERT INTO platform_violations VALUES (?,?,?,?,?,?)",
                            (gw.name, data_id if isinstance(data_id, str) else None, seq, received,
                             "; ".join(problems), body))
            self._save_gateway(gw, commit=False)
        return self._reply(False, "; ".join(problems[:3]), data_id)

    def _store(self, gw: PlatformGateway, kind: _Kind, data_id: Any, seq: int | None,
               received: str, records: list) -> None:
        if isinstance(data_id, str):
            gw.data_ids.add(data_id)
        if seq is not None and gw.seen.add(seq):
            gw.first = seq if gw.first is None else min(gw.first, seq)
            gw.highest = seq if gw.highest is None else max(gw.highest, seq)
        gw.messages += 1
        if kind.name == "events":
            gw.events += len(records)
        elif kind.name == "readings":
            gw.records += len(records)
        rows = [(gw.name, data_id, seq, kind.name, i, self._get(r, kind.tag), self._get(r, kind.ts),
                 self._get(r, kind.value), orjson.dumps(r).decode()) for i, r in enumerate(records)]
        with transaction(self.db):
            self.db.execute("INSERT INTO platform_messages VALUES (?,?,?,?,?,?)",
                            (gw.name, data_id, seq, kind.name, received, len(records)))
            self.db.executemany("INSERT INTO platform_records VALUES (?,?,?,?,?,?,?,?,?)", rows)
            self._save_gateway(gw, commit=False)

    def _save_gateway(self, gw: PlatformGateway, commit: bool = True) -> None:
        row = (gw.name, *(getattr(gw, k) for k in COUNTERS), gw.first, gw.highest, gw.last_received)
        sql = "INSERT OR REPLACE INTO platform_gateways VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        if commit:
            with transaction(self.db):
                self.db.execute(sql, row)
        else:
            self.db.execute(sql, row)

    def _load(self) -> dict[str, PlatformGateway]:
        gws: dict[str, PlatformGateway] = {}
        for row in self.db.execute("SELECT * FROM platform_gateways"):
            gw = PlatformGateway(row[0], *row[1:8], first=row[8], highest=row[9],
                                 last_received=row[10])
            gws[gw.name] = gw
        for name, data_id, seq in self.db.execute(
                "SELECT gateway, data_id, seq FROM platform_messages"):
            gw = gws.setdefault(name, PlatformGateway(name))
            if data_id is not None:
                gw.data_ids.add(data_id)
            if seq is not None:
                gw.seen.add(seq)
        return gws

    def report(self) -> dict:
        return {name: self.gateways[name].report() for name in sorted(self.gateways)}

    def lines(self) -> list[str]:
        return [self.gateways[name].line() for name in sorted(self.gateways)]

    def any_gaps(self) -> bool:
        return any(gw.gaps() for gw in self.gateways.values())


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT (ROLLBACK on an exception): the connection is in autocommit mode
    (`open_db`), where `with db:` would commit each statement on its own."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_db(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # what was accepted is on disk
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone():
        db.close()
        raise sqlite3.DatabaseError("not a receive database (it is a gateway's store: it has an outbox)")
    return db


# --- serving ------------------------------------------------------------------------------

def parse_listen_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) from http://host:port/path or tcp://host:port."""
    u = urlparse(url)
    try:
        port = u.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if u.scheme not in ("http", "tcp") or not u.hostname or port is None or (
            u.scheme == "tcp" and u.path not in ("", "/")):
        raise ValueError(f"{url!r} is not a listen address; valid: http://127.0.0.1:PORT/PATH "
                         "or tcp://127.0.0.1:PORT")
    return u.scheme, u.hostname, port, u.path or "/"


class PlatformServer:
    """The receiver behind an HTTP (aiohttp.web) or TCP (delimited frames) listener.

    `tls`: a server context, to stand in for an https or TLS platform."""

    def __init__(self, receiver: PlatformReceiver, listen: str, tls: ssl.SSLContext | None = None):
        self.receiver, self.tls = receiver, tls
        self.scheme, self.host, self.port, self.path = parse_listen_url(listen)
        spec = receiver.spec
        if self.scheme == "http" and not isinstance(spec, HttpSpec):
            raise ValueError(f"uplink {spec.name!r} is a tcp uplink; listen on tcp://HOST:PORT")
        if self.scheme == "tcp" and not isinstance(spec, TcpSpec):
            raise ValueError(f"uplink {spec.name!r} is an http uplink; listen on http://HOST:PORT/PATH")
        self.last_message = time.monotonic()
        self._expected_headers = {h.name: read_secret(h.secret) if h.secret else h.value or ""
                                  for h in spec.headers} if isinstance(spec, HttpSpec) else {}
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if self.scheme == "http":
            spec = self.receiver.spec
            paths = {self.path}
            if isinstance(spec, HttpSpec):
                paths.update(urlparse(url).path or "/" for url in (spec.events_url, spec.registry_url) if url)
            app = web.Application(client_max_size=MAX_BODY)
            for path in paths:
                app.router.add_post(path, self._http)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
            await site.start()
        else:
            self._server = await asyncio.start_server(self._tcp, self.host, self.port,
                                                      ssl=self.tls)
        log.info("listening", extra={"fields": {"listen": f"{self.scheme}://{self.host}:{self.port}",
                                                "uplink": self.receiver.spec.name}})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _answer(self, body: bytes) -> Reply | None:
        self.last_message = time.monotonic()
        controls = self.receiver.controls
        if controls.delay:
            await asyncio.sleep(controls.delay)
        if controls.fail is not None:
            return None
        return self.receiver.handle(body)

    def _headers_problem(self, request: web.Request) -> str | None:
        """A platform checks its credentials (the `appsecret` header) before the body."""
        for name, value in self._expected_headers.items():
            if request.headers.get(name) != value:
                return f"header {name} is missing or does not match"
        return None

    async def _http(self, request: web.Request) -> web.Response:
        body = await request.read()
        why = self._headers_problem(request)
        if why is not None:
            self.last_message = time.monotonic()
            return web.json_response({"msg": why}, status=401)
        reply = await self._answer(body)
        if reply is None:
            reply = self.receiver.failure()
        return web.Response(status=reply.status, body=reply.body, content_type="application/json")

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        spec = self.receiver.spec
        assert isinstance(spec, TcpSpec)
        deframer = Deframer(spec.delimiter, MAX_BODY)
        self._connections.add(writer)
        try:
            while data := await reader.read(65536):
                for body in deframer.feed(data):
                    reply = await self._answer(body)
                    if reply is None:
                        return
                    writer.write(frame(reply.body, spec.delimiter))
                    await writer.drain()
        except (OSError, FramingError) as exc:
            log.warning("tcp connection dropped", extra={"fields": {"error": str(exc)}})
        finally:
            self._connections.discard(writer)
            writer.close()


# --- the command --------------------------------------------------------------------------

def _write_report(path: str, listen: str, db_path: str, receiver: PlatformReceiver,
                  started: float) -> None:
    body = {"generated_at": rfc3339(now_ms()), "listen": listen, "uplink": receiver.spec.name,
            "db": str(Path(db_path).resolve()), "run_seconds": round(time.monotonic() - started, 3),
            "received_this_run": receiver.received, "gaps": receiver.any_gaps(),
            "gateways": receiver.report()}
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


def platform_spec(uplinks: list, name: str) -> HttpSpec | TcpSpec:
    """The named http or tcp uplink of a gateway config; ValueError saying what is valid."""
    platforms = {u.name: u for u in uplinks if isinstance(u, HttpSpec | TcpSpec)}
    if name not in platforms:
        raise ValueError(f"--uplink {name!r}: no http or tcp uplink of that name; valid: "
                         f"{', '.join(platforms) or 'none in this config'}")
    return platforms[name]


async def serve_until(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                      last_message: Callable[[], float], listen: str, duration: float | None,
                      idle_exit: float | None) -> str | None:
    """Serve from `start` until `duration` seconds, `idle_exit` seconds after the last message
    (`last_message`: its monotonic time), or SIGTERM/SIGINT, then `stop`; why it could not
    listen, or None."""
    started = time.monotonic()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
    except OSError as exc:
        return f"cannot listen on {listen}: {exc.strerror or exc}"
    try:
        while not stopping.is_set():
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            if idle_exit is not None and now - last_message() >= idle_exit:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await stopping.wait()
    finally:
        await stop()
    return None


def receive_platform(listen: str, spec: HttpSpec | TcpSpec, db_path: str,
                     controls: Controls = Controls(), duration: float | None = None,
                     idle_exit: float | None = None, report: str | None = None,
                     fail_on_gaps: bool = False) -> int:
    """Serve until `duration`, `idle_exit` seconds without a message, or SIGTERM/SIGINT; print
    one line per gateway; exit code 0, 1 (runtime failure or gaps with fail_on_gaps) or 2."""
    try:
        db = open_db(db_path)
        receiver = PlatformReceiver(spec, db, controls)
        server = PlatformServer(receiver, listen)
    except (ValueError, sqlite3.Error, OSError) as exc:
        print(f"hazgate receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    failed = asyncio.run(serve_until(server.start, server.stop, lambda: server.last_message, listen,
                                     duration, idle_exit))
    lines = receiver.lines()
    for line in lines:
        print(line)
    if not lines:
        print("no gateway has sent anything yet")
    if report:
        try:
            _write_report(report, listen, db_path, receiver, started)
        except OSError as exc:
            failed = failed or f"cannot write the report {report}: {exc}"
    db.close()
    if failed:
        print(f"hazgate receive: {failed}", file=sys.stderr)
        return EXIT_FAIL
    if fail_on_gaps and receiver.any_gaps():
        return EXIT_FAIL
    return EXIT_OK
