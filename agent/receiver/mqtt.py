"""`hazgate receive`: the reference provincial-side consumer of schema `hazgate.uplink/1`.

It subscribes to every gateway under a topic prefix, checks each message against the schema
(docs/uplink.md), stores readings and events in SQLite and keeps, per gateway, the sequence
numbers it has seen: duplicates are dropped and counted, gaps and late arrivals reported.

Delivery is at least once, end to end: the MQTT session is persistent (clean_session=False,
a client id fixed per database) and a message is acknowledged to the broker only after the
transaction that stored it has committed. A receiver killed at any moment loses nothing the
broker still holds for its session; what it had stored but not yet acknowledged comes again
(with the DUP flag) and is recognised by (gateway, seq).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import os
import queue
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import orjson

from agent.common.secrets import secret_file_problem
from agent.common.timefmt import now_ms, rfc3339
from agent.model import QUALITIES
from agent.north.base import ConnectFailed, why
from agent.north.mqtt.client import CONNECT_ERRORS, Events, MQTTMessage, MqttOptions, MqttSession
from agent.north.mqtt.schema import SCHEMA, SEVERITIES
from agent.north.mqtt.spec import without_credentials
from agent.north.mqtt.uplink import password as mqtt_password
from agent.receiver import completeness
from agent.receiver.problems import Problems

log = logging.getLogger("hazgate.receive")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
SEQ_KINDS = ("readings", "events", "meta")  # the message kinds that carry `seq`
KINDS = (*SEQ_KINDS, "status")
STATES = ("online", "offline")
BATCH_MESSAGES = 2000  # messages stored per transaction at most
BATCH_BYTES = 16 << 20
TICK = 0.2  # seconds between checks of the stop conditions
MISSING_SHOWN = 20  # ranges shown on the summary line (the JSON report has all)
VIOLATIONS_LOGGED = 50  # per run; the violations table has every one


# --- the schema, checked by hand --------------------------------------------------------

def _is_time(s: Any) -> bool:
    """RFC 3339 date-time with exactly three fraction digits and an offset (Z or +hh:mm)."""
    if type(s) is not str or len(s) < 24:
        return False
    # YYYY-MM-DDTHH:MM:SS.mmm then Z or ±HH:MM; layout first, then the calendar.
    if not (
        s[4] == "-" and s[7] == "-" and s[10] in "Tt" and s[13] == ":" and s[16] == ":" and s[19] == "."
        and s[20:23].isdigit() and s[:4].isdigit() and s[5:7].isdigit() and s[8:10].isdigit()
        and s[11:13].isdigit() and s[14:16].isdigit() and s[17:19].isdigit() and s.isascii()
    ):
        return False
    tz = s[23:]
    if tz in ("Z", "z"):
        pass
    elif not (len(tz) == 6 and tz[0] in "+-" and tz[3] == ":" and tz[1:3].isdigit() and tz[4:6].isdigit()
              and int(tz[1:3]) <= 23 and int(tz[4:6]) <= 59):
        return False
    try:
        datetime.fromisoformat(s[:10] + "T" + s[11:23] + ("+00:00" if len(tz) == 1 else tz))
    except ValueError:
        return False
    return True


TIME_RULE = "an RFC 3339 time with milliseconds and offset, e.g. 2026-11-22T19:00:00.000+08:00"


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # what SQLite (and most platforms) store


def _text(v: Any) -> bool:
    return type(v) is str and v != ""


def _int64(v: Any) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


def _scalar(v: Any) -> bool:
    return v is None or type(v) in (float, bool, str) or _int64(v)


def validate(kind: str, enterprise: str, gateway: str, body: Any) -> list[str]:
    """Check one message body against `hazgate.uplink/1`; return its problems (empty: valid).

    kind, enterprise and gateway come from the topic `{prefix}/{enterprise}/{gateway}/{kind}`.
    Every field the database stores in a column of its own is checked for its type here, so a
    valid message always fits. Two readings of the JSON are decided, not checked:
    - a whole number read as an integer must fit 64 bits; orjson reads one beyond the unsigned
      64-bit range (2**64 and up) as a double, which is a number like any other (stored as REAL);
    - a name given twice in one object takes its last value (as orjson, Python's json and
      JavaScript's JSON.parse read it; RFC 8259 leaves it open): a `seq` written twice is the last.
    """
    p = Problems()
    if type(body) is not dict:
        p.add("message", f"is a JSON {type(body).__name__}, not an object")
        return p
    if body.get("schema") != SCHEMA:
        p.add("schema", f"{body.get('schema')!r} is not {SCHEMA!r}")
    for key, expected in (("gateway", gateway), ("enterprise", enterprise)):
        v = body.get(key)
        if not _text(v):
            p.add(key, f"{v!r} is not a non-empty string")
        elif v != expected:
            p.add(key, f"{v!r} does not match the topic's {expected!r}")
    seq = body.get("seq")
    if kind == "status":
        if "seq" in body:
            p.add("seq", "a status message carries no seq")
    elif not _int64(seq) or seq < 1:
        p.add("seq", f"{seq!r} is not a whole number of 1 or more")
    if not _is_time(body.get("sent_at")):
        p.add("sent_at", f"{body.get('sent_at')!r} is not {TIME_RULE}")
    if kind == "readings":
        _check_readings(body.get("readings"), p)
    elif kind == "events":
        _check_events(body.get("events"), p)
    elif kind == "meta":
        _check_meta(body.get("points"), p)
    elif kind == "status":
        if body.get("state") not in STATES:
            p.add("state", f"{body.get('state')!r} is not one of {', '.join(STATES)}")
        if not _text(body.get("version")):
            p.add("version", f"{body.get('version')!r} is not a non-empty string")
        if not _is_time(body.get("started_at")):
            p.add("started_at", f"{body.get('started_at')!r} is not {TIME_RULE}")
    else:
        p.add("topic", f"{kind!r} is not one of {', '.join(KINDS)}")
    return p


def _check_readings(readings: Any, p: Problems) -> None:
    if type(readings) is not list:
        p.add("readings", f"{type(readings).__name__} is not a list of readings")
        return
    times: set[str] = set()  # the readings of one batch share a few time stamps
    for i, r in enumerate(readings):
        if p.full:
            return
        if type(r) is not dict:
            p.add(f"readings[{i}]", "is not an object")
            continue
        if not _text(r.get("tag")):
            p.add(f"readings[{i}].tag", f"{r.get('tag')!r} is not a non-empty string")
        ts = r.get("ts")
        if not (type(ts) is str and ts in times):
            if _is_time(ts):
                times.add(ts)
            else:
                p.add(f"readings[{i}].ts", f"{ts!r} is not {TIME_RULE}")
        if "value" not in r:
            p.add(f"readings[{i}].value", "is missing (null when there is no value)")
        else:
            v = r["value"]
            if not (v is None or type(v) in (float, bool) or _int64(v)):
                p.add(f"readings[{i}].value", f"{v!r} is not a number (64-bit when whole), true/false or null")
        if type(r.get("unit")) is not str:
            p.add(f"readings[{i}].unit", f"{r.get('unit')!r} is not a string")
        q = r.get("quality")
        if q == "good":
            if r.get("value", 0) is None:
                p.add(f"readings[{i}].value", "null with quality good")
            if "reason" in r and type(r["reason"]) is not str:
                p.add(f"readings[{i}].reason", f"{r['reason']!r} is not a string")
        elif q in QUALITIES:
            if not _text(r.get("reason")):
                p.add(f"readings[{i}].reason", f"required with quality {q}, got {r.get('reason')!r}")
        else:
            p.add(f"readings[{i}].quality", f"{q!r} is not one of {', '.join(QUALITIES)}")
        if type(r.get("backfill")) is not bool:
            p.add(f"readings[{i}].backfill", f"{r.get('backfill')!r} is not true or false")


def _check_events(events: Any, p: Problems) -> None:
    if type(events) is not list:
        p.add("events", f"{type(events).__name__} is not a list of events")
        return
    for i, e in enumerate(events):
        if p.full:
            return
        w = f"events[{i}]"
        if type(e) is not dict:
            p.add(w, "is not an object")
            continue
        eid = e.get("id")
        if not (_text(eid) or _int64(eid)):
            p.add(f"{w}.id", f"{eid!r} is not a non-empty string or a whole number")
        for key in ("kind", "state"):
            if not _text(e.get(key)):
                p.add(f"{w}.{key}", f"{e.get(key)!r} is not a non-empty string")
        if e.get("severity") not in SEVERITIES:
            p.add(f"{w}.severity", f"{e.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
        if not _is_time(e.get("ts")):
            p.add(f"{w}.ts", f"{e.get('ts')!r} is not {TIME_RULE}")
        # What the event concerns: a tag, an interlock, or (for the gateway's own events such as
        # buffer evictions, which concern neither) "source": "gateway".
        if not (_text(e.get("tag")) or _text(e.get("interlock")) or e.get("source") == "gateway"):
            p.add(w, 'names neither a tag nor an interlock (nor "source": "gateway")')
        for key in ("tag", "interlock"):  # stored in columns of their own
            if e.get(key) is not None and not _text(e[key]):
                p.add(f"{w}.{key}", f"{e[key]!r} is not a non-empty string")
        for key in ("value", "limit"):
            if not _scalar(e.get(key)):
                p.add(f"{w}.{key}", f"{e.get(key)!r} is not a number, string, true/false or null")


def _check_meta(points: Any, p: Problems) -> None:
    if type(points) is not list:
        p.add("points", f"{type(points).__name__} is not a list of points")
        return
    tags: set[str] = set()
    for i, pt in enumerate(points):
        if p.full:
            return
        if type(pt) is not dict:
            p.add(f"points[{i}]", "is not an object")
            continue
        tag = pt.get("tag")
        if not _text(tag):
            p.add(f"points[{i}].tag", f"{tag!r} is not a non-empty string")
        elif tag in tags:
            p.add(f"points[{i}].tag", f"{tag!r} is listed twice")
        else:
            tags.add(tag)


# --- sequence bookkeeping ---------------------------------------------------------------

class SeqSet:
    """The sequence numbers seen, as sorted disjoint ranges [lo, hi] (compact when contiguous)."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None):
        self.lo: list[int] = []
        self.hi: list[int] = []
        for a, b in sorted(ranges or []):
            if self.hi and a <= self.hi[-1] + 1:
                self.hi[-1] = max(self.hi[-1], b)
            else:
                self.lo.append(a)
                self.hi.append(b)

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self.lo, n) - 1
        return i >= 0 and n <= self.hi[i]

    def add(self, n: int) -> bool:
        """Add n; False when it was there already."""
        lo, hi = self.lo, self.hi
        i = bisect.bisect_right(lo, n) - 1  # the range starting at or before n
        if i >= 0 and n <= hi[i]:
            return False
        joins_left = i >= 0 and hi[i] == n - 1
        joins_right = i + 1 < len(lo) and lo[i + 1] == n + 1
        if joins_left and joins_right:
            hi[i] = hi[i + 1]
            del lo[i + 1], hi[i + 1]
        elif joins_left:
            hi[i] = n
        elif joins_right:
            lo[i + 1] = n
        else:
            lo.insert(i + 1, n)
            hi.insert(i + 1, n)
        return True

    def missing(self, first: int, last: int) -> list[tuple[int, int]]:
        """Ranges within [first, last] not seen."""
        out: list[tuple[int, int]] = []
        at = first
        for a, b in zip(self.lo, self.hi, strict=True):
            if b < at:
                continue
            if a > last:
                break
            if a > at:
                out.append((at, a - 1))
            at = max(at, b + 1)
        if at <= last:
            out.append((at, last))
        return out


def _ranges_text(ranges: list[tuple[int, int]], limit: int = MISSING_SHOWN) -> str:
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"...+{len(ranges) - limit}")
    return "[" + ",".join(parts) + "]"


COUNTERS = ("messages", "readings", "events", "meta", "duplicates", "redelivered", "out_of_order", "violations")


@dataclass
class Gateway:
    """What the receiver knows about one gateway; `first`/`highest` cover live deliveries only."""

    name: str
    enterprise: str = ""
    messages: int = 0  # valid messages with a seq, stored once
    readings: int = 0
    events: int = 0
    meta: int = 0
    duplicates: int = 0  # the same (gateway, seq) published again
    redelivered: int = 0  # the broker re-delivering to us (DUP flag) what we had stored already
    out_of_order: int = 0
    violations: int = 0
    first: int | None = None
    highest: int | None = None
    status: str | None = None
    version: str | None = None
    started_at: str | None = None
    status_at: str | None = None
    last_received: str | None = None
    seen: SeqSet = field(default_factory=SeqSet)

    def gaps(self) -> list[tuple[int, int]]:
        if self.first is None or self.highest is None:
            return []
        return self.seen.missing(self.first, self.highest)

    def report(self) -> dict:
        gaps = self.gaps()
        out = {"enterprise": self.enterprise}
        out.update({k: getattr(self, k) for k in COUNTERS})
        out.update(
            gaps=len(gaps), missing=[list(g) for g in gaps], missing_count=sum(b - a + 1 for a, b in gaps),
            first_seq=self.first, highest_seq=self.highest, last_received=self.last_received,
            status={"state": self.status, "version": self.version, "started_at": self.started_at,
                    "received_at": self.status_at},
        )
        return out

    def line(self) -> str:
        gaps = self.gaps()
        return (f"{self.name or '(empty)'}: messages={self.messages} readings={self.readings} "
                f"duplicates={self.duplicates} gaps={len(gaps)} out_of_order={self.out_of_order} "
                f"violations={self.violations} missing={_ranges_text(gaps)}")


# --- the database -----------------------------------------------------------------------

DB_SCHEMA = """
CREATE TABLE IF NOT EXISTS receiver(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS messages(
  gateway TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, received_at TEXT NOT NULL,
  sent_at TEXT, valid INTEGER NOT NULL, retained INTEGER NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY(gateway, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings(
  gateway TEXT NOT NULL, seq INTEGER NOT NULL, tag TEXT NOT NULL, ts TEXT NOT NULL, value,
  unit TEXT, quality TEXT NOT NULL, reason TEXT, backfill INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events(
  gateway TEXT NOT NULL, seq INTEGER NOT NULL, event_id, kind TEXT, severity TEXT, state TEXT,
  ts TEXT, tag TEXT, interlock TEXT, value, limit_value, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(
  gateway TEXT NOT NULL, seq INTEGER NOT NULL, received_at TEXT NOT NULL, points TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS violations(
  gateway TEXT, seq INTEGER, topic TEXT NOT NULL, received_at TEXT NOT NULL,
  problems TEXT NOT NULL, payload BLOB);
CREATE TABLE IF NOT EXISTS gateways(
  gateway TEXT PRIMARY KEY, enterprise TEXT, messages INTEGER NOT NULL DEFAULT 0,
  readings INTEGER NOT NULL DEFAULT 0, events INTEGER NOT NULL DEFAULT 0,
  meta INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
  redelivered INTEGER NOT NULL DEFAULT 0, out_of_order INTEGER NOT NULL DEFAULT 0,
  violations INTEGER NOT NULL DEFAULT 0, first_seq INTEGER, highest_seq INTEGER,
  status TEXT, version TEXT, started_at TEXT, status_at TEXT, last_received TEXT);
"""
GATEWAY_COLUMNS = ("enterprise", *COUNTERS, "first_seq", "highest_seq", "status", "version",
                   "started_at", "status_at", "last_received")
_ATTR = {"first_seq": "first", "highest_seq": "highest"}


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: what is acknowledged to the broker is on disk, power loss included.
    db.execute("PRAGMA synchronous=FULL")
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone():
        db.close()  # checked before anything is created in it
        raise sqlite3.DatabaseError("not a hazgate receive database (it is a gateway's store: it has an outbox)")
    db.executescript(DB_SCHEMA)
    for table, first in (("readings", "gateway, seq, tag, ts"), ("messages", "gateway, seq, kind")):
        cols = ", ".join(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        if not cols.startswith(first):  # e.g. the gateway's own store given by mistake
            db.close()
            raise sqlite3.DatabaseError(f"not a hazgate receive database (its {table} table has {cols})")
    return db


def load_gateways(db: sqlite3.Connection) -> dict[str, Gateway]:
    """Counters from `gateways`, the seen sequence numbers from `messages` (as ranges)."""
    gws: dict[str, Gateway] = {}
    cols = ", ".join(GATEWAY_COLUMNS)
    for row in db.execute(f"SELECT gateway, {cols} FROM gateways"):
        gw = Gateway(row[0])
        for col, v in zip(GATEWAY_COLUMNS, row[1:], strict=True):
            setattr(gw, _ATTR.get(col, col), v)
        gws[gw.name] = gw
    ranges: dict[str, list[tuple[int, int]]] = {}
    for name, lo, hi in db.execute(
        "SELECT gateway, MIN(seq), MAX(seq) FROM "
        "(SELECT gateway, seq, seq - ROW_NUMBER() OVER (PARTITION BY gateway ORDER BY seq) AS island "
        " FROM messages) GROUP BY gateway, island"
    ):
        ranges.setdefault(name, []).append((lo, hi))
    for name, rs in ranges.items():
        gws.setdefault(name, Gateway(name)).seen = SeqSet(rs)
    return gws


def client_id_for(db: sqlite3.Connection, db_path: str) -> str:
    """The MQTT client id of this database: made once, from host and path, then kept in the db."""
    row = db.execute("SELECT value FROM receiver WHERE key='client_id'").fetchone()
    if row:
        return row[0]
    digest = hashlib.sha1(f"{socket.gethostname()}:{Path(db_path).resolve()}".encode()).hexdigest()
    cid = "hzrecv-" + digest[:16]  # 23 characters: the most MQTT 3.1.1 promises every broker takes
    with db:
        db.execute("INSERT OR IGNORE INTO receiver(key, value) VALUES ('client_id', ?)", (cid,))
    return cid


# --- processing -------------------------------------------------------------------------

class Incoming(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    gen: int  # the connection the message came on: acknowledgements go to that one only
    received_ms: int


# What the database says of a row it cannot take (a type it cannot bind, a number too large):
# the message's fault, unlike a full disk or a read-only file (sqlite3.OperationalError).
REFUSED = (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.DataError,
           OverflowError, ValueError, TypeError)


@dataclass
class Rows:
    """What one message adds to the database, and to its gateway's counters."""

    incoming: Incoming
    received: str
    gw: Gateway | None
    message: tuple | None = None  # its `messages` row, when it has a seq
    readings: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    meta: list[tuple] = field(default_factory=list)
    violation: tuple | None = None

    def count(self, sign: int) -> None:
        """Add (1) or take back (-1) a stored message in its gateway's counters."""
        gw = self.gw
        assert gw is not None
        gw.messages += sign
        gw.readings += sign * len(self.readings)
        gw.events += sign * len(self.events)
        gw.meta += sign * len(self.meta)


class Receiver:
    """Validates, deduplicates and stores batches of messages; one transaction per batch."""

    def __init__(self, db: sqlite3.Connection, prefix: str):
        self.db = db
        self.prefix = prefix.rstrip("/") + "/"
        self.gateways = load_gateways(db)
        self.received = 0  # messages handled by this run
        self._logged = 0

    def gateway(self, name: str) -> Gateway:
        gw = self.gateways.get(name)
        if gw is None:
            gw = self.gateways[name] = Gateway(name)
        return gw

    def _violation(self, gw: Gateway | None, seq: int | None, kind: str | None, m: Incoming, received: str,
                   problems: list[str]) -> Rows:
        """The message recorded as a violation (and its seq as received, when it has one)."""
        if gw is not None:
            gw.violations += 1
        if self._logged < VIOLATIONS_LOGGED:
            self._logged += 1
            log.warning("schema violation", extra={"fields": {
                "topic": m.topic, "seq": seq, "problems": "; ".join(problems[:3])}})
        rows = Rows(m, received, gw)
        rows.violation = (gw.name if gw else None, seq, m.topic, received, "; ".join(problems), m.payload)
        if gw is not None and seq is not None:
            rows.message = (gw.name, seq, kind, received, None, 0, int(m.retain), 0)
        return rows

    def handle(self, batch: list[Incoming]) -> None:
        """Store one batch in one transaction. Whatever a message holds, it ends stored, counted
        as a duplicate or recorded as a violation: nothing in it can raise here (a raise would
        leave it unacknowledged, handed to every restart again)."""
        taken = [self._take(m) for m in batch]
        self.received += len(batch)
        try:
            self._write(taken, one_by_one=False)
        except REFUSED:  # a message the checks passed and the database will not take
            self._write(taken, one_by_one=True)

    def _take(self, m: Incoming) -> Rows:
        """One message: topic, JSON, seq bookkeeping, then the checks and its rows."""
        received = rfc3339(m.received_ms)
        plen = len(self.prefix)
        parts = m.topic[plen:].split("/") if m.topic.startswith(self.prefix) else []
        if len(parts) != 3 or parts[2] not in KINDS:
            return self._violation(None, None, None, m, received,
                                   [f"topic: {m.topic!r} is not {self.prefix}<enterprise>/<gateway>/<kind>"])
        enterprise, name, kind = parts
        gw = self.gateway(name)
        gw.last_received = received
        try:
            body = orjson.loads(m.payload)
        except orjson.JSONDecodeError as exc:
            return self._violation(gw, None, kind, m, received, [f"message: not UTF-8 JSON: {exc}"])
        seq = body.get("seq") if type(body) is dict and kind != "status" else None
        if not _int64(seq) or seq < 1:
            seq = None
        if seq is not None:
            if seq in gw.seen:
                if m.retain:  # the broker's retained copy, handed out again on subscribe
                    pass
                elif m.dup:
                    gw.redelivered += 1
                else:
                    gw.duplicates += 1
                return Rows(m, received, gw)
            gw.seen.add(seq)
            if not m.retain:  # a retained copy may be old: it does not open the range
                if gw.highest is not None and seq < gw.highest:
                    gw.out_of_order += 1
                if gw.highest is None or seq > gw.highest:
                    gw.highest = seq
                if gw.first is None or seq < gw.first:
                    gw.first = seq
        try:
            return self._checked(m, received, gw, enterprise, kind, seq, body)
        except Exception as exc:  # noqa: BLE001 - a gap in the checks: recorded, never raised
            return self._violation(gw, seq, kind, m, received,
                                   [f"message: cannot be checked: {type(exc).__name__}: {exc}"])

    def _checked(self, m: Incoming, received: str, gw: Gateway, enterprise: str, kind: str, seq: int | None,
                 body: Any) -> Rows:
        problems = validate(kind, enterprise, gw.name, body)
        if problems:
            return self._violation(gw, seq, kind, m, received, problems)
        if not gw.enterprise:
            gw.enterprise = enterprise
        rows = Rows(m, received, gw)
        if kind == "status":
            gw.status, gw.version, gw.started_at = body["state"], body["version"], body["started_at"]
            gw.status_at = received
            return rows
        name = gw.name
        if kind == "readings":
            rows.readings = [(name, seq, r["tag"], r["ts"], r["value"], r["unit"], r["quality"], r.get("reason"),
                              r["backfill"]) for r in body["readings"]]
            count = len(rows.readings)
        elif kind == "events":
            rows.events = [(name, seq, e["id"], e["kind"], e["severity"], e["state"], e["ts"], e.get("tag"),
                            e.get("interlock"), e.get("value"), e.get("limit"), orjson.dumps(e).decode())
                           for e in body["events"]]
            count = len(rows.events)
        else:
            rows.meta = [(name, seq, received, orjson.dumps(body["points"]).decode())]
            count = len(body["points"])
        rows.message = (name, seq, kind, received, body["sent_at"], 1, int(m.retain), count)
        rows.count(+1)
        return rows

    def _refused(self, rows: Rows, exc: Exception) -> Rows:
        """The database refused a message the checks passed: a violation instead."""
        rows.count(-1)
        _name, seq, kind, *_ = rows.message
        return self._violation(rows.gw, seq, kind, rows.incoming, rows.received,
                               [f"message: cannot be stored: {type(exc).__name__}: {exc}"])

    def _write(self, taken: list[Rows], one_by_one: bool) -> None:
        """One transaction; `one_by_one`: each message in a savepoint, a refused one recorded as
        a violation (the first attempt, all at once, is the fast one)."""
        db = self.db
        db.execute("BEGIN")
        try:
            if one_by_one:
                for i, rows in enumerate(taken):
                    db.execute("SAVEPOINT message")
                    try:
                        self._insert([rows])
                    except REFUSED as exc:
                        db.execute("ROLLBACK TO message")
                        taken[i] = self._refused(rows, exc)
                        self._insert([taken[i]])
                    db.execute("RELEASE message")
            else:
                self._insert(taken)
            touched = {rows.gw.name: rows.gw for rows in taken if rows.gw is not None}
            cols = ", ".join(GATEWAY_COLUMNS)
            marks = ", ".join("?" * (len(GATEWAY_COLUMNS) + 1))
            db.executemany(
                f"INSERT OR REPLACE INTO gateways(gateway, {cols}) VALUES ({marks})",
                [(gw.name, *(getattr(gw, _ATTR.get(c, c)) for c in GATEWAY_COLUMNS)) for gw in touched.values()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _insert(self, taken: list[Rows]) -> None:
        db = self.db
        for sql, rows in (
            ("INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?)", [r.message for r in taken if r.message]),
            ("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?)", [x for r in taken for x in r.readings]),
            ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [x for r in taken for x in r.events]),
            ("INSERT INTO meta VALUES (?,?,?,?)", [x for r in taken for x in r.meta]),
            ("INSERT INTO violations VALUES (?,?,?,?,?,?)", [r.violation for r in taken if r.violation]),
        ):
            if rows:
                db.executemany(sql, rows)

    def report(self) -> dict:
        return {name: self.gateways[name].report() for name in sorted(self.gateways)}

    def lines(self) -> list[str]:
        return [self.gateways[name].line() for name in sorted(self.gateways)]

    def any_gaps(self) -> bool:
        return any(gw.gaps() for gw in self.gateways.values())


# --- MQTT -------------------------------------------------------------------------------

def parse_broker(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]; ValueError otherwise
    (never showing a user name or password: they would show in logs and reports)."""
    if "@" in url:
        raise ValueError(f"{without_credentials(url)!r} (shown without it): a user name or password in the "
                         "address would show in logs and reports; valid: mqtt://host:port or "
                         "mqtts://host:port, with --username and --password-file")
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or parsed.path not in ("", "/"):
        raise ValueError(f"{url!r} is not a broker address; valid: mqtt://host:port or mqtts://host:port")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return parsed.hostname, port, tls


@dataclass(frozen=True)
class Login:
    """How the receiver proves itself to a secured broker, as the gateway does (`[uplink]`):
    a user name and the password read from an owner-only file, TLS trust and a client
    certificate. `password` is never logged or shown."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def _file(flag: str, value: str | None, secret: bool = False) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{flag} {value}: no such file; valid: an existing file")
    if secret and (problem := secret_file_problem(path)):
        raise ValueError(f"{flag} {problem}")
    return path


def parse_login(args: Any, tls: bool) -> Login:
    """The --username, --password-file, --ca-file, --cert-file and --key-file options checked
    (files exist; the password and key files readable only by their owner, or group read);
    ValueError naming the option, the bad value and what is valid."""
    username, password_file = args.username, args.password_file
    if password_file is not None and not username:
        raise ValueError("--password-file needs --username: the broker checks the pair")
    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("--cert-file and --key-file go together: the client certificate and its key")
    given = [f for f, v in (("--ca-file", args.ca_file), ("--cert-file", args.cert_file)) if v is not None]
    if given and not tls:
        raise ValueError(f"{' and '.join(given)}: TLS settings, and the broker address is mqtt:// "
                         f"(plain); valid: an mqtts:// broker address")
    pw_path = _file("--password-file", password_file, secret=True)
    try:
        password = mqtt_password(pw_path) if pw_path is not None else None
    except ConnectFailed as exc:
        raise ValueError(f"--password-file: {exc}") from None
    return Login(username or None, password, _file("--ca-file", args.ca_file),
                 _file("--cert-file", args.cert_file), _file("--key-file", args.key_file, secret=True))


class Link(Events):
    """A persistent MQTT session that hands messages to a queue and acks only when told."""

    def __init__(self, host: str, port: int, tls: bool, client_id: str, prefix: str, login: Login = Login()):
        self.host, self.port = host, port
        self.inbox: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self.gen = 0
        self.online = False
        self.ever_connected = False
        self.refusal = ""  # the broker's last answer to a refused connection (a wrong password...)
        self.accepting = True
        self.topics = [(f"{prefix.rstrip('/')}/+/+/{k}", 1) for k in KINDS]
        self.session = MqttSession(MqttOptions(
            host=host, port=port, client_id=client_id, tls=tls, ca_file=login.ca_file,
            cert_file=login.cert_file, key_file=login.key_file, username=login.username,
            password=login.password, clean_session=False, manual_ack=True, reconnect=(1, 10)), self)
        self._failures = 0

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.accepting = False
        self.session.close()  # the session (and what is queued for it) stays at the broker

    def refused(self, reason: str) -> None:
        if reason != self.refusal:
            log.warning("broker refused the connection", extra={"fields": {"reason": reason}})
        self.refusal = reason

    def connected(self, session_present: bool) -> None:
        self.gen += 1
        self.online = self.ever_connected = True
        self._failures = 0
        log.info("connected", extra={"fields": {
            "broker": f"{self.host}:{self.port}", "session_present": session_present}})
        # Always (re)subscribe: harmless on a kept session, required on a broker that lost it.
        self.session.subscribe(self.topics)

    def subscribed(self, ok: bool) -> None:
        topics = " ".join(t for t, _ in self.topics)
        if ok:
            log.info("subscribed", extra={"fields": {"topics": topics}})
        else:
            log.error("subscription refused", extra={"fields": {"topics": topics}})

    def lost(self, reason: str) -> None:
        if self.online:
            level = logging.WARNING if self.accepting else logging.INFO  # not accepting: we are stopping
            log.log(level, "disconnected", extra={"fields": {"reason": reason}})
        self.online = False

    def unreachable(self) -> None:
        self._failures += 1
        if self._failures in (1, 10) or self._failures % 60 == 0:
            log.warning("cannot reach the broker", extra={"fields": {
                "broker": f"{self.host}:{self.port}", "attempts": self._failures}})

    def message(self, msg: MQTTMessage) -> None:
        if not self.accepting:
            return  # not acknowledged: the broker keeps it for the next run
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # reported as a violation, never allowed to end this thread
            topic = msg._topic.decode("utf-8", "replace")
        self.inbox.put(Incoming(topic, msg.payload, msg.qos, bool(msg.retain), bool(msg.dup),
                                msg.mid, self.gen, now_ms()))

    def ack(self, batch: list[Incoming]) -> None:
        gen = self.gen
        for m in batch:
            if m.qos and m.gen == gen:  # an older connection's message comes again (DUP) and is acked then
                self.session.ack(m.mid, m.qos)


# --- the command --------------------------------------------------------------------------

def _write_report(path: str, args: Any, receiver: Receiver, started: float, db: sqlite3.Connection) -> None:
    """The per-gateway report as JSON, or for a FILE.html the completeness page from the database."""
    if path.endswith(".html"):
        text = completeness.page(completeness.figures(db)).encode()
    else:
        text = orjson.dumps({
            "generated_at": rfc3339(now_ms()), "broker": args.broker, "db": str(Path(args.db).resolve()),
            "topic_prefix": args.topic_prefix, "run_seconds": round(time.monotonic() - started, 3),
            "received_this_run": receiver.received, "gaps": receiver.any_gaps(),
            "gateways": receiver.report(),
        }, option=orjson.OPT_INDENT_2) + b"\n"
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)


def receive(args: Any) -> int:
    """Run until --duration, --idle-exit or SIGTERM/SIGINT; print one line per gateway."""
    try:
        host, port, tls = parse_broker(args.broker)
    except ValueError as exc:
        print(f"hazgate receive: --broker {exc}", file=sys.stderr)
        return EXIT_USAGE
    for flag in ("duration", "idle_exit"):
        v = getattr(args, flag, None)
        if v is not None and v <= 0:
            print(f"hazgate receive: --{flag.replace('_', '-')} {v}: valid: a number of seconds above 0", file=sys.stderr)
            return EXIT_USAGE
    try:
        login = parse_login(args, tls)
    except ValueError as exc:
        print(f"hazgate receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        db = open_db(args.db)
        receiver = Receiver(db, args.topic_prefix)
        client_id = client_id_for(db, args.db)
    except sqlite3.Error as exc:
        print(f"hazgate receive: --db {args.db}: cannot use: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        link = Link(host, port, tls, client_id, args.topic_prefix, login)
    except CONNECT_ERRORS as exc:  # paho reads the CA, certificate and key files here
        db.close()
        print(f"hazgate receive: --ca-file, --cert-file, --key-file: cannot use them: {why(exc)}", file=sys.stderr)
        return EXIT_USAGE

    stop = threading.Event()
    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            old_handlers[sig] = signal.signal(sig, lambda *_: stop.set())

    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    last_message = started
    log.info("receiving", extra={"fields": {"broker": args.broker, "db": args.db, "client_id": client_id}})
    link.start()
    failed: str | None = None
    try:
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if args.idle_exit and now - last_message >= args.idle_exit:
                break
            try:
                first = link.inbox.get(timeout=TICK)
            except queue.Empty:
                continue
            batch, size = [first], len(first.payload)
            while len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
                try:
                    m = link.inbox.get_nowait()
                except queue.Empty:
                    break
                batch.append(m)
                size += len(m.payload)
            receiver.handle(batch)
            link.ack(batch)
            last_message = time.monotonic()
        # stop taking new messages, store and acknowledge what is already here
        link.accepting = False
        rest: list[Incoming] = []
        with contextlib.suppress(queue.Empty):
            while True:
                rest.append(link.inbox.get_nowait())
        if rest:
            receiver.handle(rest)
            link.ack(rest)
    except sqlite3.Error as exc:  # disk full, read-only...: nothing unstored was acknowledged
        failed = f"cannot store into {args.db}: {exc}"
        with contextlib.suppress(sqlite3.Error):  # report what is committed, not what was tried
            receiver.gateways = load_gateways(db)
    finally:
        link.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)

    lines = receiver.lines()
    for line in lines:
        print(line)
    if not lines:
        print("no gateway has sent anything yet")
    if args.report:
        try:
            _write_report(args.report, args, receiver, started, db)
        except (OSError, sqlite3.Error) as exc:
            failed = failed or f"cannot write the report {args.report}: {exc}"
    db.close()
    if failed:
        print(f"hazgate receive: {failed}", file=sys.stderr)
        return EXIT_FAIL
    if not link.ever_connected:
        refused = f": it refused the connection: {link.refusal}" if link.refusal else ""
        print(f"hazgate receive: never reached the broker at {args.broker}{refused}", file=sys.stderr)
        return EXIT_FAIL
    if args.fail_on_gaps and receiver.any_gaps():
        return EXIT_FAIL
    return EXIT_OK
