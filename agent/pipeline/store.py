"""The durable outbox (SQLite, WAL): every reading and event is committed here before it is
published, and leaves only when every uplink has had the message that carried it acknowledged
(or a bound evicts it, which is reported).

Flow inside the database, per uplink:
  chunks (readings) / events  --take_*-->  outbox (message with its seq and payload)  --ack-->  gone
Each uplink has its own queue: a `pending` row per chunk it has not yet taken (with `taken`,
how many readings of the chunk already left in its messages) and a `pending_events` row per
event, its own sequence (`uplinks.next_seq`, and a published mark file) and its own outbox
rows. A chunk or event leaves when no uplink still needs it. A message gets its sequence
number in the same transaction that moves its rows into the outbox, so a message re-sent after
a lost acknowledgement keeps its number and content (and so its `data_id`).
Readings are stored packed, up to CHUNK_ROWS to a row of the `chunks` table (one SQLite row
per poll or so instead of one per reading: the per-row cost of SQLite was most of the agent's
CPU). Chunks keep insertion order (AUTOINCREMENT ids, never reused): draining never sorts by
time.

A snapshot uplink (`send = "snapshot"`) folds its queue instead, whole chunks in order, into its
`snapshot_state` (per point its newest reading at or before the last boundary, and its newest
in each later interval from chunks that straddle it) and numbers, per boundary, one snapshot
built from that state, in the transaction that folds. After an outage a second state, the head (`side` 1),
folds ahead from the same queue and numbers the newest boundary (live) while the tail (`side`
0) builds the missed ones in order (back-fill), skipping the boundaries the head sent
(`snapshot_live`); when the tail reaches the head the head becomes the one state again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import orjson

from agent.common.timefmt import now_ms, rfc3339
from agent.model import QUALITY_NAME, Point
from agent.pipeline import history
from agent.pipeline.checks.rules import Rules
from agent.pipeline.chunks import CHUNK_ROWS, pack_chunk, unpack_chunk
from agent.pipeline.evidence import EVIDENCE_AGE_S, EVIDENCE_NAME, DayClock, Evidence, read_runs
from agent.pipeline.evidence_rates import daily_event

DB_NAME = "hazgate.db"
SEQ_MARK = "seq.published"  # the default uplink's mark; others: seq.published.<name>
DEFAULT_UPLINK = "mqtt"  # the `[uplink]` table, and the uplink of a store written before [[uplinks]]
log = logging.getLogger("hazgate.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS points(
  pid INTEGER PRIMARY KEY, tag TEXT NOT NULL, unit TEXT NOT NULL, type TEXT NOT NULL,
  UNIQUE(tag, unit, type));
CREATE TABLE IF NOT EXISTS chunks(
  id INTEGER PRIMARY KEY AUTOINCREMENT, oldest INTEGER NOT NULL, newest INTEGER NOT NULL,
  count INTEGER NOT NULL, rows BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS uplinks(
  name TEXT PRIMARY KEY, events INTEGER NOT NULL, next_seq INTEGER NOT NULL DEFAULT 1,
  last_ack_seq INTEGER, last_ack_at INTEGER, evicted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pending(
  uplink TEXT NOT NULL, chunk INTEGER NOT NULL, taken INTEGER NOT NULL DEFAULT 0,
  oldest INTEGER, PRIMARY KEY(uplink, chunk)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_chunk ON pending(chunk);
CREATE TABLE IF NOT EXISTS pending_events(
  uplink TEXT NOT NULL, event INTEGER NOT NULL, PRIMARY KEY(uplink, event)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_event ON pending_events(event);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS devices(
  name TEXT PRIMARY KEY, link TEXT NOT NULL, reason TEXT, last_good INTEGER, changed INTEGER);
CREATE TABLE IF NOT EXISTS active(
  key TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, start INTEGER NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS snapshots(
  uplink TEXT PRIMARY KEY, at INTEGER NOT NULL, head_at INTEGER, head_chunk INTEGER, fold_to INTEGER);
CREATE TABLE IF NOT EXISTS snapshot_state(
  uplink TEXT NOT NULL, side INTEGER NOT NULL, pid INTEGER NOT NULL, ts INTEGER NOT NULL, value,
  quality INTEGER NOT NULL, reason TEXT, PRIMARY KEY(uplink, side, pid, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot_live(
  uplink TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, PRIMARY KEY(uplink, first)) WITHOUT ROWID;
"""

SNAPSHOT_TABLES = ("snapshots", "snapshot_state", "snapshot_live", "minute_stats")
SNAPSHOT_GRACE = 1000  # ms after a boundary before its snapshot is built (at most half the interval)
TAIL, HEAD = 0, 1  # the sides of a snapshot uplink's state: in order (back-fill), ahead (live)

OUTBOX = """
CREATE TABLE outbox(
  uplink TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, retain INTEGER NOT NULL,
  created INTEGER NOT NULL, count INTEGER NOT NULL, oldest INTEGER, payload BLOB NOT NULL,
  rejects INTEGER NOT NULL DEFAULT 0, aside INTEGER NOT NULL DEFAULT 0, reason TEXT,
  backfill INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(uplink, seq))
"""


@dataclass
class StoreBounds:
    """`[store]`: the most the store may hold; beyond either bound the oldest readings go."""

    max_bytes: int = 1 << 30
    max_age: float = 30 * 86400.0
    evidence_age: float = EVIDENCE_AGE_S  # the evidence record (agent/pipeline/evidence.py) is kept this long


# A builder turns (seq, rows) into the message payload; rows as selected by the take_* method.
Builder = Callable[[int, list[tuple]], bytes]


class SnapshotPage(list):
    """The records of one snapshot message and the boundary they stand at (`at`, epoch ms): a
    body that writes the snapshot's own time (HJ 212's DataTime) reads it there."""

    def __init__(self, rows: Iterable[tuple], at: int):
        super().__init__(rows)
        self.at = at

    def part(self, rows: Iterable[tuple]) -> SnapshotPage:
        """Some of its records, at the same boundary."""
        return SnapshotPage(rows, self.at)
EVENTS_PER_MESSAGE = 100
UNPACKED_KEPT = 32  # chunks kept unpacked for the uplinks that read them next (about 1.5 s of 10 000 points/s)


@dataclass(slots=True)
class DrainRequest:
    """What the uplink asks of one `Store.drain` call."""
    acks: list[int]  # seqs the broker acknowledged since the last call
    sent_upto: int  # highest seq already handed to this connection
    room: int  # free places in the in-flight window
    build_events: Builder | None  # None: the uplink carries no events
    build_live: Builder | None  # None: live readings are not due yet
    live_batch: int
    watermark: int  # readings up to this id are backlog; 0: no backlog
    build_backlog: Builder | None
    backlog_batch: int
    budget: int  # readings to number at most in this call (keeps the store thread's turns short)
    uplink: str = DEFAULT_UPLINK
    events_batch: int = 100  # events in one message at most
    snapshot_interval: int = 0  # ms between snapshots (send = "snapshot"); 0: readings mode
    snapshot_due: int = 0  # the newest boundary whose snapshot is due (epoch ms, a multiple of the interval)
    history: frozenset[str] = frozenset()  # snapshot mode: tags whose readings the tail keeps per minute
    history_ms: int = 0  # how long those minutes are kept


@dataclass(slots=True)
class DrainResult:
    messages: list[tuple[int, str, bool, bytes]] = field(default_factory=list)  # (seq, kind, retain, payload)
    error: sqlite3.Error | None = None  # the store refused writes: nothing new was numbered
    live_short: bool = False  # live readings are exhausted (the last batch was not full)
    live: int = 0  # live readings numbered in this call
    backlog_done: bool = False
    more: bool = False  # snapshot mode: the budget ran out while folding; call again at once


class Store:
    """Synchronous store; use from one thread at a time (AsyncStore runs it on its own thread)."""

    def __init__(self, data_dir: Path, readonly: bool = False, timezone: tzinfo | None = None):
        self.path = data_dir / DB_NAME
        self._pids: dict[tuple[str, str, str], int] = {}
        self._points: dict[int, tuple[str, str, str]] = {}  # pid -> (tag, unit, type)
        self.data_dir = data_dir
        self._published: dict[str, int] = {}  # uplink -> its published mark, as last read or written
        self._pruned: dict[str, int] = {}  # uplink -> when its old minute aggregates were last pruned
        # chunk id -> its readings as the builders take them: every uplink reads the same new
        # chunks within a second or so, each in several messages; a chunk never changes. One
        # uplink keeps only the chunk it is reading (set_uplinks)
        self._unpacked: dict[int, list[tuple]] = {}
        self._unpacked_kept = UNPACKED_KEPT
        self.evidence: Evidence | None = None  # its writer; None: read-only
        if readonly:  # inspection beside a running agent: WAL lets readers in at any time
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            self.has_evidence = Evidence.attach(self.db, data_dir, readonly=True)
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        self.has_evidence = True
        self.evidence = Evidence(DayClock(timezone), now_ms())
        self.set_aside: Path | None = None  # where a corrupt store was moved, if it was
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "corrupt" not in str(exc) and "not a database" not in str(exc):
                raise  # disk full, read-only, locked: not the file's fault, keep it
            self.db.close()
            self._set_aside(str(exc))
            self._open()
        # A database behind a mark (new, or rolled back) continues above it: _next_seq()
        # never returns a number at or below one that may have been on the wire.
        for name in self.uplinks():
            self._create_mark(name)
        if self.set_aside is not None:
            first = self.uplinks()[0]
            self.add_event(now_ms(), {
                "id": f"store-reset-{self._next_seq(first)}", "kind": "store_reset", "severity": "alarm",
                "state": "recovered", "ts": rfc3339(now_ms()), "source": "gateway",
                "reason": "local store was corrupt; readings buffered in it could not be sent",
                "moved_to": self.set_aside.name, "next_seq": self._next_seq(first),
            })

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we go on. NORMAL could roll back the last commits
        # on power loss, and with them sequence numbers already used on the wire.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA + history.SCHEMA)
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is corrupt: {check}")
        self._migrate_uplinks()
        self._migrate_readings()
        self._attach_evidence()

    def _attach_evidence(self) -> None:
        """The evidence record beside the store; a corrupt one is moved aside and started anew
        (the store itself is not its fault)."""
        try:
            Evidence.attach(self.db, self.data_dir, readonly=False)
        except sqlite3.DatabaseError as exc:
            if "corrupt" not in str(exc) and "not a database" not in str(exc):
                raise
            if any(name == "ev" for _, name, _ in self.db.execute("PRAGMA database_list")):
                self.db.execute("DETACH DATABASE ev")
            moved = _move_aside(self.data_dir / EVIDENCE_NAME)
            log.error("evidence record was corrupt: moved aside, starting a new one", extra={"fields": {
                "moved_to": str(moved), "error": str(exc)}})
            Evidence.attach(self.db, self.data_dir, readonly=False)

    def _migrate_readings(self) -> None:
        """A store written by hazgate 0.1 keeps one row per reading in `readings`: pack what it
        still holds into chunks, in order, and drop the table (one transaction)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='readings'").fetchone():
            return
        with self._tx():
            cur = self.db.execute("SELECT ts, pid, value, quality, reason FROM readings ORDER BY id")
            while rows := cur.fetchmany(CHUNK_ROWS):
                self._add_chunk(rows)
            self.db.execute("DROP TABLE readings")

    def _migrate_uplinks(self) -> None:
        """A store written before [[uplinks]] has one queue, the `[uplink]`'s: it becomes the
        uplink `mqtt`, its sequence continuing, with everything it still held pending for it.
        A new store starts with that uplink too; `set_uplinks` makes the configured set."""
        old = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone()
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(outbox)")] if old else []
        if "uplink" in columns:
            if "backfill" not in columns:  # a store written before the evidence record
                self.db.execute("ALTER TABLE outbox ADD COLUMN backfill INTEGER NOT NULL DEFAULT 0")
            return
        with self._tx():
            if not old:
                self.db.execute(OUTBOX)
                self.db.execute("INSERT INTO uplinks(name, events) VALUES (?, 1)", (DEFAULT_UPLINK,))
                return
            taken = "taken" if "taken" in [r[1] for r in self.db.execute("PRAGMA table_info(chunks)")] else "0"
            state = dict(self.db.execute(
                "SELECT key, value FROM state WHERE key IN ('next_seq', 'last_ack_seq', 'last_ack_at')"))
            self.db.execute("INSERT INTO uplinks(name, events, next_seq, last_ack_seq, last_ack_at) VALUES (?,1,?,?,?)",
                            (DEFAULT_UPLINK, int(state.get("next_seq", 1)), state.get("last_ack_seq"),
                             state.get("last_ack_at")))
            self.db.execute(f"INSERT INTO pending(uplink, chunk, taken) SELECT ?, id, {taken} FROM chunks",
                            (DEFAULT_UPLINK,))
            self.db.execute("INSERT INTO pending_events(uplink, event) SELECT ?, id FROM events", (DEFAULT_UPLINK,))
            self.db.execute("ALTER TABLE outbox RENAME TO outbox_old")
            self.db.execute(OUTBOX)
            self.db.execute("INSERT INTO outbox(uplink, seq, kind, retain, created, count, oldest, payload) "
                            "SELECT ?, seq, kind, retain, created, count, oldest, payload FROM outbox_old",
                            (DEFAULT_UPLINK,))
            self.db.execute("DROP TABLE outbox_old")
            self.db.execute("DELETE FROM state WHERE key IN ('next_seq', 'last_ack_seq', 'last_ack_at')")

    # --- the uplinks ----------------------------------------------------------------------
    def uplinks(self) -> list[str]:
        return [name for (name,) in self.db.execute("SELECT name FROM uplinks ORDER BY rowid")]

    def set_uplinks(self, configured: list[tuple[str, bool]]) -> None:
        """The configured uplinks, (name, carries events): a new one starts from what the store
        still holds; one no longer configured leaves with its queue."""
        with self._tx():
            known = dict(self.db.execute("SELECT name, events FROM uplinks"))
            for name, events in configured:
                if name not in known:  # from what the store holds unsent: as far as the least advanced uplink
                    self.db.execute("INSERT INTO uplinks(name, events) VALUES (?, ?)", (name, int(events)))
                    self.db.execute("INSERT INTO pending(uplink, chunk, taken) SELECT ?, chunk, MIN(taken) "
                                    "FROM pending WHERE uplink != ? GROUP BY chunk", (name, name))
                    self.db.execute("INSERT OR IGNORE INTO pending(uplink, chunk) SELECT ?, id FROM chunks", (name,))
                elif bool(known[name]) != events:
                    self.db.execute("UPDATE uplinks SET events=? WHERE name=?", (int(events), name))
                if events and (name not in known or not known[name]):
                    self.db.execute("INSERT OR IGNORE INTO pending_events(uplink, event) SELECT ?, id FROM events",
                                    (name,))
                if not events:
                    self.db.execute("DELETE FROM pending_events WHERE uplink=?", (name,))
            names = {name for name, _ in configured}
            for name in set(known) - names:
                for table in ("pending", "pending_events", "outbox", "uplinks", *SNAPSHOT_TABLES):
                    self.db.execute(f"DELETE FROM {table} WHERE {'name' if table == 'uplinks' else 'uplink'}=?", (name,))
            self._collect()
        for name in names:
            self._create_mark(name)
        self._unpacked_kept = UNPACKED_KEPT if len(names) > 1 else 1

    def _collect(self) -> None:
        """Chunks and events no uplink still needs leave the store."""
        self.db.execute("DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM pending WHERE chunk = chunks.id)")
        self.db.execute("DELETE FROM events WHERE NOT EXISTS (SELECT 1 FROM pending_events WHERE event = events.id)")

    def _set_aside(self, why: str) -> None:
        """Move a corrupt store (and its WAL) aside for forensics; the agent starts a new one."""
        self.set_aside = _move_aside(self.path)
        log.error("store was corrupt: moved aside, starting a new one", extra={"fields": {
            "moved_to": str(self.set_aside), "error": why}})

    # The published marks: a small file per uplink, synced before any message goes on the wire,
    # holding the highest seq ever handed out. If the database is lost or rolled back (a torn
    # write), numbering continues above it: receivers may see a gap (what was lost), never an
    # old number carrying new content.
    def _mark_path(self, uplink: str) -> Path:
        return self.data_dir / (SEQ_MARK if uplink == DEFAULT_UPLINK else f"{SEQ_MARK}.{uplink}")

    def _read_mark(self, uplink: str) -> int:
        if uplink not in self._published:
            try:
                self._published[uplink] = int(self._mark_path(uplink).read_text().strip())
            except (FileNotFoundError, ValueError):
                self._published[uplink] = 0
        return self._published[uplink]

    def _create_mark(self, uplink: str) -> None:
        path = self._mark_path(uplink)
        if not path.exists():  # created while there is space; rewritten in place
            with open(path, "wb") as f:
                f.write(f"{self._read_mark(uplink):020d}\n".encode())
                f.flush()
                os.fsync(f.fileno())

    def mark_published(self, seq: int, uplink: str = DEFAULT_UPLINK) -> None:
        """Record, durably, that the uplink's messages up to `seq` may now be published.

        The file is rewritten in place at a fixed width, so this works on a full disk too.
        """
        if seq <= self._read_mark(uplink):
            return
        path = self._mark_path(uplink)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.write(f"{seq:020d}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        self._published[uplink] = seq

    def reserve_seq(self, uplink: str = DEFAULT_UPLINK) -> int:
        """A number for a message built outside the database (it refuses writes), marked used."""
        seq = self._next_seq(uplink)
        self.mark_published(seq, uplink)
        return seq

    def close(self) -> None:
        if self.evidence is not None:
            with contextlib.suppress(sqlite3.Error), self._tx():
                self.evidence.flush(self.db, self._tag, force=True)
        self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One atomic transaction (the connection is in autocommit mode otherwise)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (disk full)
                self.db.execute("ROLLBACK")
            raise

    # --- state --------------------------------------------------------------------------
    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, values: dict[str, Any]) -> None:
        with self._tx():
            self.db.executemany("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", values.items())

    def heartbeat(self, devices: list[tuple[str, str, str | None, int | None]]) -> None:
        """Periodic liveness record for `hazgate status`: time now and each device's state."""
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('heartbeat', ?)", (now_ms(),))
            if self.evidence is not None:
                self.evidence.beat(self.db)
            self._flush_evidence()
            for dev in devices:
                self._upsert_device(*dev)

    def set_device(self, name: str, link: str, reason: str | None, last_good: int | None) -> None:
        with self._tx():
            self._upsert_device(name, link, reason, last_good)

    def _upsert_device(self, name: str, link: str, reason: str | None, last_good: int | None) -> None:
        self.db.execute(
                "INSERT INTO devices(name, link, reason, last_good, changed) VALUES (?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET link=excluded.link, reason=excluded.reason, "
            "last_good=COALESCE(excluded.last_good, devices.last_good), changed=excluded.changed",
            (name, link, reason, last_good, now_ms()),
        )

    # --- writing ------------------------------------------------------------------------
    def pids(self, points: list[tuple[str, str, str]]) -> dict[str, int]:
        """Point ids for (tag, unit, type) triples, registered in one transaction."""
        with self._tx():
            return {key[0]: self.pid(*key) for key in points}

    def pid(self, tag: str, unit: str, ptype: str) -> int:
        key = (tag, unit, ptype)
        pid = self._pids.get(key)
        if pid is None:
            self.db.execute("INSERT OR IGNORE INTO points(tag, unit, type) VALUES (?,?,?)", key)
            pid = self.db.execute("SELECT pid FROM points WHERE tag=? AND unit=? AND type=?", key).fetchone()[0]
            self._pids[key] = pid
        return pid

    def add_readings(self, rows: list[tuple[int, Any, Any, int, str | None]], pids: dict[str, int] | None = None) -> int:
        """rows: (ts_ms, pid, value, quality code, reason), packed CHUNK_ROWS to a row; with
        `pids`, the second field is the tag and `pids` gives its id. Returns the last chunk id."""
        with self._tx():
            for i in range(0, len(rows), CHUNK_ROWS):
                self._add_chunk(rows[i : i + CHUNK_ROWS], pids)
            # readings stored since the store was created: an audit figure (and the benchmarks')
            self.db.execute("INSERT INTO state(key, value) VALUES ('stored_readings', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value", (len(rows),))
            if self.evidence is not None:
                self.evidence.stored(rows)
                self._flush_evidence()
            return self.last_reading_id()

    def _flush_evidence(self) -> None:
        """The evidence counts kept in memory go to disk in this transaction, when due."""
        if self.evidence is not None:
            self.evidence.flush(self.db, self._tag)

    def _tag(self, key: int | str) -> str:
        """A point's tag from its id (or the tag itself)."""
        return key if isinstance(key, str) else self._point(key)[0]

    def _add_chunk(self, rows: list, pids: dict[str, int] | None = None) -> None:
        stamps, keys, values, qualities, reasons = zip(*rows, strict=True)
        if pids is not None:
            keys = tuple(pids[tag] for tag in keys)
        cid = self.db.execute("INSERT INTO chunks(oldest, newest, count, rows) VALUES (?,?,?,?)",
                              (min(stamps), max(stamps), len(rows),
                               pack_chunk(stamps, keys, values, qualities, reasons))).lastrowid
        self.db.execute("INSERT INTO pending(uplink, chunk) SELECT name, ? FROM uplinks", (cid,))

    def _add_events(self, events: list[tuple[int, dict]]) -> None:
        """Events for every uplink that carries events."""
        for ts, body in events:
            eid = self.db.execute("INSERT INTO events(ts, body) VALUES (?, ?)", (ts, orjson.dumps(body))).lastrowid
            self.db.execute("INSERT INTO pending_events(uplink, event) SELECT name, ? FROM uplinks WHERE events",
                            (eid,))

    def add_event(self, ts_ms: int, body: dict) -> None:
        with self._tx():
            self._add_events([(ts_ms, body)])

    def last_reading_id(self) -> int:
        """The newest chunk's id: readings up to it are older than any added later."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
        return row[0] if row else 0

    def _point(self, pid: int) -> tuple[str, str, str]:
        point = self._points.get(pid)
        if point is None:  # a point registered since the last look: read them all again, at once
            self._points = {pid: (tag, unit, ptype) for pid, tag, unit, ptype in
                            self.db.execute("SELECT pid, tag, unit, type FROM points")}
            point = self._points[pid]
        return point

    def queued(self, uplink: str = DEFAULT_UPLINK) -> Iterator[tuple[int, str, str, str, Any, str, str | None]]:
        """Readings not yet in a message of the uplink, oldest first: (ts_ms, tag, unit, type,
        value, quality, reason)."""
        for taken, blob in self.db.execute("SELECT p.taken, c.rows FROM pending p JOIN chunks c ON c.id = p.chunk "
                                           "WHERE p.uplink = ? ORDER BY p.chunk", (uplink,)):
            for ts, pid, value, q, reason in unpack_chunk(blob)[taken:]:
                yield (ts, *self._point(pid), value, QUALITY_NAME[q], reason)

    # --- active alarms, bypasses and other conditions (agent/checks) ---------------------
    def record_checks(self, events: list[tuple[int, dict]], upserts: list[tuple[str, str, str, int, dict]],
                      deletes: list[str]) -> None:
        """Events raised by the checks and the active conditions they start or end, in one
        transaction: a restart never re-announces a condition whose event is stored, nor
        forgets one. upserts: (key, kind, subject, start_ms, data); deletes: keys."""
        with self._tx():
            self._add_events(events)
            if self.evidence is not None:
                self.evidence.conditions(self.db, events)
            self.db.executemany("INSERT OR REPLACE INTO active(key, kind, subject, start, data) VALUES (?,?,?,?,?)",
                                ((k, kind, subj, start, orjson.dumps(data)) for k, kind, subj, start, data in upserts))
            self.db.executemany("DELETE FROM active WHERE key = ?", ((k,) for k in deletes))

    def inservice_daily(self, rules: Rules, points: list[Point], now: int) -> dict | None:
        """The `inservice_daily` event for the local day before `now`, once: stored for the
        uplinks and returned; None when that day's was sent already, or the agent did not run
        that day (a new gateway does not report the days before it)."""
        if self.evidence is None:
            return None
        days = self.evidence.days
        day, lo, hi = days.span(days.span(now)[1] - 1)
        if int(self.get_state("inservice_daily_day", 0)) >= day:
            return None
        event = daily_event(self.db, rules, points, day, lo, hi, now) if read_runs(self.db, lo, hi) else None
        with self._tx():
            if event is not None:
                self._add_events([(now, event)])
            self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('inservice_daily_day', ?)", (day,))
        return event

    def active(self) -> list[tuple[str, str, str, int, dict]]:
        """Active conditions, oldest first: (key, kind, subject, start_ms, data)."""
        try:
            rows = self.db.execute("SELECT key, kind, subject, start, data FROM active ORDER BY start, key").fetchall()
        except sqlite3.OperationalError:  # read-only view of a store made before the table existed
            return []
        return [(k, kind, subj, start, orjson.loads(data) if data else {}) for k, kind, subj, start, data in rows]

    # --- building messages -------------------------------------------------------------
    def _next_seq(self, uplink: str) -> int:
        row = self.db.execute("SELECT next_seq FROM uplinks WHERE name=?", (uplink,)).fetchone()
        if row is None:
            raise sqlite3.OperationalError(f"no uplink {uplink!r} in the store")
        return max(row[0], self._read_mark(uplink) + 1)

    def _enqueue(self, uplink: str, seq: int, kind: str, retain: bool, count: int, oldest: int | None,
                 payload: bytes, body: list[tuple] | None = None, backfill: bool = False) -> None:
        """`body`: the records the message carries (ts, tag, ...), for the evidence record."""
        self.db.execute(
            "INSERT INTO outbox(uplink, seq, kind, retain, created, count, oldest, payload, backfill) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (uplink, seq, kind, int(retain), now_ms(), count, oldest, payload, int(backfill)),
        )
        if body and self.evidence is not None:
            self.evidence.taken(uplink, seq, body)
        self.db.execute("UPDATE uplinks SET next_seq=? WHERE name=?", (seq + 1, uplink))

    def take_readings(self, build: Builder, limit: int, after_id: int = 0, upto_id: int | None = None,
                      uplink: str = DEFAULT_UPLINK) -> tuple[int, int] | None:
        """Move up to `limit` of the uplink's readings with after_id < id <= upto_id into one
        outbox message. Rows handed to `build`: (ts_ms, tag, unit, type, value, quality name,
        reason). Returns (seq, readings) or None when there is nothing to take.
        """
        with self._tx():
            return self._take_readings(uplink, build, limit, after_id, upto_id)

    def _take_readings(self, uplink: str, build: Builder, limit: int, after_id: int,
                       upto_id: int | None) -> tuple[int, int] | None:
        upto = upto_id if upto_id is not None else 2**62
        body: list[tuple] = []
        whole: list[int] = []  # chunks taken to their end
        for cid, count, taken in self.db.execute(
                "SELECT p.chunk, c.count, p.taken FROM pending p JOIN chunks c ON c.id = p.chunk "
                "WHERE p.uplink = ? AND p.chunk > ? AND p.chunk <= ? ORDER BY p.chunk", (uplink, after_id, upto)):
            stored = self._chunk_rows(cid)
            end = min(count, taken + limit - len(body))
            body.extend(stored[taken:end])
            if end < count:  # the rest stays for the next message
                self.db.execute("UPDATE pending SET taken=?, oldest=? WHERE uplink=? AND chunk=?",
                                (end, min(r[0] for r in stored[end:]), uplink, cid))
                break
            whole.append(cid)
            if len(body) >= limit:
                break
        if not body:
            return None
        seq = self._next_seq(uplink)
        self._enqueue(uplink, seq, "readings", False, len(body), min(r[0] for r in body), build(seq, body),
                      body, upto_id is not None)
        if whole:
            self.db.execute("DELETE FROM pending WHERE uplink=? AND chunk >= ? AND chunk <= ?",
                            (uplink, whole[0], whole[-1]))
            self.db.execute("DELETE FROM chunks WHERE id >= ? AND id <= ? AND NOT EXISTS "
                            "(SELECT 1 FROM pending WHERE chunk = chunks.id)", (whole[0], whole[-1]))
        return seq, len(body)

    def _chunk_rows(self, cid: int) -> list[tuple]:
        """A chunk's readings as (ts_ms, tag, unit, type, value, quality name, reason), kept while
        the next UNPACKED_KEPT chunks are read (the next one, with one uplink)."""
        rows = self._unpacked.get(cid)
        if rows is None:
            point = self._point
            blob = self.db.execute("SELECT rows FROM chunks WHERE id=?", (cid,)).fetchone()[0]
            rows = self._unpacked[cid] = [(ts, *point(pid), value, QUALITY_NAME[q], reason)
                                          for ts, pid, value, q, reason in unpack_chunk(blob)]
            while len(self._unpacked) > self._unpacked_kept:
                del self._unpacked[next(iter(self._unpacked))]
        return rows

    def take_events(self, build: Builder, limit: int = EVENTS_PER_MESSAGE, uplink: str = DEFAULT_UPLINK) -> int | None:
        """Move the uplink's pending events into one outbox message; rows handed to `build`: event dicts."""
        with self._tx():
            return self._take_events(uplink, build, limit)

    def _take_events(self, uplink: str, build: Builder, limit: int) -> int | None:
        rows = self.db.execute("SELECT e.id, e.ts, e.body FROM pending_events p JOIN events e ON e.id = p.event "
                               "WHERE p.uplink = ? ORDER BY p.event LIMIT ?", (uplink, limit)).fetchall()
        if not rows:
            return None
        seq = self._next_seq(uplink)
        self._enqueue(uplink, seq, "events", False, len(rows), rows[0][1], build(seq, [orjson.loads(r[2]) for r in rows]))
        last = rows[-1][0]
        self.db.execute("DELETE FROM pending_events WHERE uplink=? AND event <= ?", (uplink, last))
        self.db.execute("DELETE FROM events WHERE id <= ? AND NOT EXISTS "
                        "(SELECT 1 FROM pending_events WHERE event = events.id)", (last,))
        return seq

    def drain(self, req: DrainRequest) -> DrainResult:
        """One uplink step in one store call and one transaction: record the acknowledgements,
        number new messages (events, then live readings, then backlog) for the free window,
        and hand back every message not yet given to this connection, oldest first, with the
        uplink's published mark synced past them (so they may go on the wire).

        A store that refuses writes (disk full) numbers nothing new; messages numbered before
        still come back, and the error with them.
        """
        res = DrainResult()
        up = req.uplink
        try:
            with self._tx():
                if req.acks:
                    self._ack(up, req.acks)
                waiting = self.db.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE uplink=? AND seq > ? AND NOT aside LIMIT ?)",
                    (up, req.sent_upto, req.room)).fetchone()[0]
                self._number(req, req.room - waiting, res)
        except sqlite3.Error as exc:
            res.error, res.more = exc, False  # rolled back: nothing was folded
        res.messages = self.unacked(req.sent_upto, req.room, up)
        if res.messages:
            self.mark_published(res.messages[-1][0], up)  # durably, before the wire
        return res

    def _number(self, req: DrainRequest, free: int, res: DrainResult) -> None:
        """Build up to `free` messages within the request's reading budget."""
        budget, up = req.budget, req.uplink
        while (free > 0 and req.build_events is not None
               and self._take_events(up, req.build_events, req.events_batch) is not None):
            free -= 1
        if req.snapshot_interval:
            self._number_snapshots(req, free, res)
            return
        if self.db.execute("SELECT 1 FROM snapshots WHERE uplink=?", (up,)).fetchone():
            self._drop_snapshots(up)  # sends readings now: a later snapshot mode starts afresh
        while free > 0 and budget > 0 and req.build_live is not None:
            taken = self._take_readings(up, req.build_live, req.live_batch, req.watermark, None)
            count = taken[1] if taken else 0
            if taken:
                free, budget = free - 1, budget - count
                res.live += count
            if count < req.live_batch:
                res.live_short = True
                break
        while free > 0 and budget > 0 and req.watermark and req.build_backlog is not None:
            taken = self._take_readings(up, req.build_backlog, req.backlog_batch, 0, req.watermark)
            if taken is None:
                res.backlog_done = True
                break
            free, budget = free - 1, budget - taken[1]

    # --- snapshot mode ---------------------------------------------------------------------
    def _number_snapshots(self, req: DrainRequest, free: int, res: DrainResult) -> None:
        """Snapshot mode: the newest due boundary first (live), then the missed ones in order
        (back-fill), within `free` messages and the request's budget (readings folded plus
        records built); `res.more` when folding stopped at the budget.

        `snapshots` row: `at` the tail's last boundary; `head_at`, `head_chunk` the head's last
        boundary and last chunk folded (NULL while the tail is live); `fold_to` the live
        boundary being folded towards across calls (its state is pruned to it)."""
        up, step = req.uplink, req.snapshot_interval
        if req.history and (now := now_ms()) - self._pruned.get(up, 0) >= history.PRUNE_EVERY:
            history.prune(self.db, up, now - req.history_ms)
            self._pruned[up] = now
        row = self.db.execute("SELECT at, head_at, head_chunk, fold_to FROM snapshots WHERE uplink=?",
                              (up,)).fetchone()
        if row is None:  # a new snapshot uplink starts at the due boundary: nothing before it was missed
            row = (req.snapshot_due - step, None, None, None)
            self.db.execute("INSERT INTO snapshots(uplink, at) VALUES (?, ?)", (up, row[0]))
        at, head_at, head_chunk, fold_to = row
        due = max(req.snapshot_due, fold_to or 0)  # a clock stepped back finishes what it began
        budget = req.budget
        if free > 0 and budget > 0 and req.build_live is not None and due > (at if head_at is None else head_at):
            if head_at is None and _after(at, step) < due:  # boundaries were missed: the head goes ahead
                head_at, head_chunk = at, self._tail_chunk(up)
                self.db.execute("INSERT OR REPLACE INTO snapshot_state SELECT uplink, ?, pid, ts, value, quality, reason "
                                "FROM snapshot_state WHERE uplink=? AND side=?", (HEAD, up, TAIL))
            side = TAIL if head_at is None else HEAD
            reached, used, last = self._fold(up, side, due, step, budget, 0 if side == TAIL else head_chunk,
                                             req.history)
            budget -= used
            if side == HEAD:
                head_chunk = last
            if not reached:
                fold_to, res.more = due, True
            else:
                fold_to = None
                pages, records = self._snapshot(up, side, due, req.build_live, req.live_batch)
                free, budget = free - pages, budget - max(1, records)  # an empty one costs a turn too
                if side == TAIL:
                    at = due
                else:
                    if due != _after(head_at, step) or not self.db.execute(
                            "UPDATE snapshot_live SET last=? WHERE uplink=? AND last=?", (due, up, head_at)).rowcount:
                        self.db.execute("INSERT INTO snapshot_live VALUES (?, ?, ?)", (up, due, due))
                    head_at = due
        while head_at is not None:
            nxt = _after(at, step)
            if nxt > head_at and fold_to is None:  # the tail caught up with the head: one state again
                self._merge_head(up, head_chunk)
                at, head_at, head_chunk = head_at, None, None
                break
            if nxt > head_at or free <= 0 or budget <= 0 or req.build_backlog is None or res.more:
                break
            sent = self.db.execute("SELECT last FROM snapshot_live WHERE uplink=? AND first <= ? AND last >= ?",
                                   (up, nxt, nxt)).fetchone()
            target = nxt if sent is None else sent[0]
            reached, used, _ = self._fold(up, TAIL, target, step, budget, 0, req.history)
            budget -= used
            if not reached:
                res.more = True
                break
            if sent is None:
                pages, records = self._snapshot(up, TAIL, nxt, req.build_backlog, req.live_batch)
                free, budget = free - pages, budget - max(1, records)
            else:  # the head sent these live: the tail only passes them
                self._prune(up, TAIL, target)
                self.db.execute("DELETE FROM snapshot_live WHERE uplink=? AND last=?", (up, target))
            at = target
        if (at, head_at, head_chunk, fold_to) != row:
            self.db.execute("UPDATE snapshots SET at=?, head_at=?, head_chunk=?, fold_to=? WHERE uplink=?",
                            (at, head_at, head_chunk, fold_to, up))

    def _tail_chunk(self, uplink: str) -> int:
        """The last chunk the uplink's tail has folded (every earlier one too)."""
        first = self.db.execute("SELECT MIN(chunk) FROM pending WHERE uplink=?", (uplink,)).fetchone()[0]
        return self.last_reading_id() if first is None else first - 1

    def _fold(self, uplink: str, side: int, target: int, step: int, budget: int,
              after: int, keep: frozenset[str] = frozenset()) -> tuple[bool, int, int]:
        """Fold the uplink's pending chunks after chunk `after`, whole and in order, into its
        `side` state until a chunk holds nothing up to the grace after `target` (or none is
        left: reached) or the budget is spent (at least one chunk is folded). So a reading
        stored behind later ones by less than the grace still counts for its boundary. The
        state keeps per point its newest reading at or before the target and its newest in
        each later interval. The tail's chunks leave its queue, their readings of the `keep`
        tags added to the uplink's minute aggregates (agent/pipeline/history.py). Returns
        (reached, readings folded, last chunk folded)."""
        newest: dict[tuple[int, int], tuple] = {}  # (pid, boundary it counts for) -> newest reading
        horizon = target + snapshot_grace(step)
        used, first, last, reached = 0, None, after, True
        for cid, oldest, blob in self.db.execute(
                "SELECT p.chunk, c.oldest, c.rows FROM pending p JOIN chunks c ON c.id = p.chunk "
                "WHERE p.uplink = ? AND p.chunk > ? ORDER BY p.chunk", (uplink, after)):
            if oldest > horizon:
                break
            if used >= budget:
                reached = False
                break
            rows = unpack_chunk(blob)
            if keep and side == TAIL:
                history.add(self.db, uplink, rows, lambda pid: self._point(pid)[0] in keep)
            for r in rows:
                key = (r[1], target if r[0] <= target else -(-r[0] // step) * step)
                if (best := newest.get(key)) is None or r[0] >= best[0]:
                    newest[key] = r
            used += len(rows)
            first, last = first or cid, cid
        if first is None:
            return reached, 0, last
        self.db.executemany("INSERT OR REPLACE INTO snapshot_state VALUES (?,?,?,?,?,?,?)",
                            ((uplink, side, pid, ts, v, q, reason) for ts, pid, v, q, reason in newest.values()))
        self._prune(uplink, side, target)
        if side == TAIL:
            self._unqueue(uplink, first, last)
        return reached, used, last

    def _prune(self, uplink: str, side: int, upto: int) -> None:
        """Per point, drop the readings older than its newest one at or before `upto`."""
        self.db.execute(
            "DELETE FROM snapshot_state WHERE uplink=? AND side=? AND ts < (SELECT MAX(s.ts) FROM snapshot_state s "
            "WHERE s.uplink = snapshot_state.uplink AND s.side = snapshot_state.side AND s.pid = snapshot_state.pid "
            "AND s.ts <= ?)", (uplink, side, upto))

    def _unqueue(self, uplink: str, first: int, last: int) -> None:
        """The uplink is done with chunks first..last: they leave its queue (and the store when
        no uplink needs them)."""
        self.db.execute("DELETE FROM pending WHERE uplink=? AND chunk >= ? AND chunk <= ?", (uplink, first, last))
        self.db.execute("DELETE FROM chunks WHERE id >= ? AND id <= ? AND NOT EXISTS "
                        "(SELECT 1 FROM pending WHERE chunk = chunks.id)", (first, last))

    def _snapshot(self, uplink: str, side: int, at: int, build: Builder, batch: int) -> tuple[int, int]:
        """Number the snapshot at boundary `at` from the `side` state: each point's newest
        reading at or before it (points without one are left out), in messages of `batch`
        records at most. Returns (messages, records)."""
        self._prune(uplink, side, at)
        point = self._point
        body = [(ts, *point(pid), value, QUALITY_NAME[q], reason) for pid, ts, value, q, reason in self.db.execute(
            "SELECT pid, ts, value, quality, reason FROM snapshot_state WHERE uplink=? AND side=? AND ts <= ? "
            "ORDER BY pid", (uplink, side, at))]
        for i in range(0, len(body), batch):
            page = SnapshotPage(body[i : i + batch], at)
            seq = self._next_seq(uplink)
            self._enqueue(uplink, seq, "snapshot", False, len(page), at, build(seq, page), page)
        return -(-len(body) // batch), len(body)

    def _merge_head(self, uplink: str, head_chunk: int) -> None:
        """The tail has built every boundary the head has: the head's state is the uplink's
        state, and the chunks it folded leave the queue."""
        self.db.execute("DELETE FROM snapshot_state WHERE uplink=? AND side=?", (uplink, TAIL))
        self.db.execute("UPDATE snapshot_state SET side=? WHERE uplink=?", (TAIL, uplink))
        self.db.execute("DELETE FROM snapshot_live WHERE uplink=?", (uplink,))
        first = self.db.execute("SELECT MIN(chunk) FROM pending WHERE uplink=?", (uplink,)).fetchone()[0]
        if first is not None and first <= head_chunk:
            self._unqueue(uplink, first, head_chunk)

    def _drop_snapshots(self, uplink: str) -> None:
        for table in SNAPSHOT_TABLES:
            self.db.execute(f"DELETE FROM {table} WHERE uplink=?", (uplink,))

    def enqueue(self, kind: str, retain: bool, build: Builder, uplink: str = DEFAULT_UPLINK) -> int:
        """Put a ready-made message (meta) into the uplink's outbox with its next seq."""
        with self._tx():
            seq = self._next_seq(uplink)
            self._enqueue(uplink, seq, kind, retain, 0, None, build(seq, []))
        return seq

    def unacked(self, after_seq: int = 0, limit: int = 100, uplink: str = DEFAULT_UPLINK) -> list[tuple[int, str, bool, bytes]]:
        """The uplink's messages waiting for their acknowledgement (set-aside ones excepted)."""
        return [
            (seq, kind, bool(retain), payload)
            for seq, kind, retain, payload in self.db.execute(
                "SELECT seq, kind, retain, payload FROM outbox WHERE uplink=? AND seq > ? AND NOT aside "
                "ORDER BY seq LIMIT ?", (uplink, after_seq, limit))
        ]

    def ack(self, seqs: list[int], uplink: str = DEFAULT_UPLINK) -> None:
        """The far end acknowledged these messages: they leave the store."""
        with self._tx():
            self._ack(uplink, seqs)

    def _ack(self, uplink: str, seqs: list[int]) -> None:
        if self.evidence is not None:
            self.evidence.acked(uplink, self.db.execute(
                "SELECT seq, count, backfill, oldest FROM outbox WHERE uplink=? AND kind != 'events' AND seq IN "
                f"({','.join('?' * len(seqs))})", (uplink, *seqs)))
            self._flush_evidence()
        self.db.executemany("DELETE FROM outbox WHERE uplink=? AND seq=?", ((uplink, s) for s in seqs))
        self.db.execute("UPDATE uplinks SET last_ack_seq=MAX(COALESCE(last_ack_seq, 0), ?), last_ack_at=? "
                        "WHERE name=?", (max(seqs), now_ms(), uplink))

    def reject(self, uplink: str, seq: int, reason: str, max_rejects: int) -> dict | None:
        """The far end refused a message. After `max_rejects` refusals in a row it is set aside
        (kept, no longer sent) and an `uplink_rejected` event raised: returned, else None."""
        with self._tx():
            row = self.db.execute("UPDATE outbox SET rejects = rejects + 1, reason=? WHERE uplink=? AND seq=? "
                                  "RETURNING rejects, count", (reason[:500], uplink, seq)).fetchone()
            if row is None or row[0] < max_rejects:
                return None
            self.db.execute("UPDATE outbox SET aside=1 WHERE uplink=? AND seq=?", (uplink, seq))
            if self.evidence is not None:
                self.evidence.set_aside(uplink, seq)  # its points are credited to none if it goes later
            ts = now_ms()
            event = {"id": f"uplink-rejected-{uplink}-{seq}", "kind": "uplink_rejected", "severity": "alarm",
                     "state": "set_aside", "ts": rfc3339(ts), "source": "gateway", "uplink": uplink,
                     "seq": seq, "count": row[1], "rejects": row[0], "reason": reason[:500]}
            self._add_events([(ts, event)])
        return event

    def rejected(self, uplink: str) -> list[tuple[int, str, int, str | None, bytes]]:
        """The uplink's set-aside messages: (seq, kind, rejects, reason, payload)."""
        return self.db.execute("SELECT seq, kind, rejects, reason, payload FROM outbox WHERE uplink=? AND aside "
                               "ORDER BY seq", (uplink,)).fetchall()

    def retry(self, uplink: str) -> int:
        """Put the uplink's set-aside messages back in line; returns how many."""
        with self._tx():
            return self.db.execute("UPDATE outbox SET aside=0, rejects=0 WHERE uplink=? AND aside",
                                   (uplink,)).rowcount

    # --- bounds -------------------------------------------------------------------------
    def used_bytes(self) -> int:
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def enforce_limits(self, max_bytes: int, max_age_s: float, evidence_age_s: float = EVIDENCE_AGE_S) -> list[dict]:
        """Evict the oldest readings beyond the size or age bound; events are never evicted.
        The evidence record loses what is older than `evidence_age_s`.

        Every eviction is itself stored as an event (and counted), so loss is never silent.
        Returns the eviction events raised.
        """
        if self.evidence is not None:
            with self._tx():
                self.evidence.prune(self.db, evidence_age_s, now_ms())
        raised = []
        cutoff = now_ms() - int(max_age_s * 1000)
        # age: the oldest chunks in insertion order, up to the first one holding a young reading
        young = self.db.execute("SELECT MIN(id) FROM chunks WHERE newest >= ?", (cutoff,)).fetchone()[0]
        old_upto = self.db.execute(
            "SELECT MAX(id) FROM chunks WHERE id < COALESCE(?, 1 << 62)", (young,)
        ).fetchone()[0]
        if old_upto is not None:
            raised.append(self._evict(old_upto, f"age limit {max_age_s:g}s"))
        used = self.used_bytes()
        if used > max_bytes:
            count = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            if count:
                share = min(1.0, (used - 0.9 * max_bytes) / used)
                n = max(1, min(count, int(count * share) + 1))
                upto = self.db.execute("SELECT id FROM chunks ORDER BY id LIMIT 1 OFFSET ?", (n - 1,)).fetchone()[0]
                raised.append(self._evict(upto, f"size limit {max_bytes} bytes"))
        return raised

    def _evict(self, upto_id: int, why: str) -> dict:
        """Drop the chunks up to `upto_id`; each uplink loses what it had not yet taken of them
        (counted per uplink; the event's `count` is the most any uplink lost)."""
        with self._tx():
            first_ts, last_ts, first_id = self.db.execute(
                "SELECT MIN(oldest), MAX(newest), MIN(id) FROM chunks WHERE id <= ?", (upto_id,)).fetchone()
            lost = dict(self.db.execute(
                "SELECT p.uplink, SUM(c.count - p.taken) FROM pending p JOIN chunks c ON c.id = p.chunk "
                "WHERE p.chunk <= ? GROUP BY p.uplink", (upto_id,)))
            self.db.executemany("UPDATE uplinks SET evicted = evicted + ? WHERE name = ?",
                                ((n, name) for name, n in lost.items()))
            if self.evidence is not None:
                self.evidence.evicted(self.db.execute(
                    "SELECT p.uplink, c.oldest, c.count - p.taken FROM pending p JOIN chunks c ON c.id = p.chunk "
                    "WHERE p.chunk <= ?", (upto_id,)))
            self.db.execute("DELETE FROM pending WHERE chunk <= ?", (upto_id,))
            self.db.execute("DELETE FROM chunks WHERE id <= ?", (upto_id,))
            count = max(lost.values(), default=0)
            total = int(self.get_state("evicted_readings", 0)) + count
            self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('evicted_readings', ?)", (total,))
            ts = now_ms()
            event = {
                "id": f"evict-{first_id}-{upto_id}", "kind": "buffer_eviction", "severity": "warning",
                "state": "dropped", "ts": rfc3339(ts), "source": "gateway", "count": count,
                "uplinks": lost, "from_ts": rfc3339(first_ts), "to_ts": rfc3339(last_ts), "reason": why,
            }
            self._add_events([(ts, event)])
        return event

    def history(self, uplink: str, tags: list[str], start_ms: int, end_ms: int,
                step_ms: int) -> list[tuple[int, str, int, float | None, float | None, float | None, int]]:
        """The uplink's minute aggregates summed per `step_ms` interval: (interval start, tag,
        usable values, their sum, least, greatest, bad readings), for intervals starting within
        start_ms..end_ms, in order."""
        wanted = set(tags)
        pids = {pid: tag for pid, tag in self.db.execute("SELECT pid, tag FROM points") if tag in wanted}
        return [(at, pids[pid], *rest) for at, pid, *rest in
                history.query(self.db, uplink, pids, start_ms, end_ms, step_ms)]

    # --- inspection -----------------------------------------------------------------------
    def uplink_stats(self, uplink: str) -> dict:
        """One uplink's queue: readings not yet in a message, messages not acknowledged, set aside."""
        unsent, r_oldest = self.db.execute(
            "SELECT COALESCE(SUM(c.count - p.taken), 0), MIN(COALESCE(p.oldest, c.oldest)) FROM pending p JOIN chunks c "
            "ON c.id = p.chunk WHERE p.uplink = ?", (uplink,)).fetchone()
        o_msgs, o_readings, o_oldest, aside = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN kind='readings' THEN count END), 0), "
            "MIN(CASE WHEN kind IN ('readings', 'snapshot') THEN oldest END), COALESCE(SUM(aside), 0) "
            "FROM outbox WHERE uplink = ?",
            (uplink,)).fetchone()
        events = self.db.execute("SELECT COUNT(*) FROM pending_events WHERE uplink = ?", (uplink,)).fetchone()[0]
        last_ack_seq, last_ack_at, evicted = self.db.execute(
            "SELECT last_ack_seq, last_ack_at, evicted FROM uplinks WHERE name = ?", (uplink,)).fetchone()
        return {
            "readings_buffered": unsent + o_readings,
            "readings_unsent": unsent,
            "messages_unacked": o_msgs - aside,
            "messages_rejected": aside,
            "events_buffered": events,
            "oldest_unsent_ms": min((t for t in (r_oldest, o_oldest) if t is not None), default=None),
            "evicted_readings": evicted,
            "next_seq": self._next_seq(uplink),
            "last_ack_seq": last_ack_seq,
            "last_ack_at": last_ack_at,
        }

    def stats(self) -> dict:
        """The store's figures; the queue figures are the first uplink's (the `[uplink]` one when
        configured), every uplink's under `uplinks`."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        per = {name: self.uplink_stats(name) for name in self.uplinks()}
        first = next(iter(per.values()), {})
        return {
            **{k: v for k, v in first.items() if k != "evicted_readings"},
            "events_buffered": self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
            "db_bytes": page_size * pages,
            "used_bytes": self.used_bytes(),
            "evicted_readings": int(self.get_state("evicted_readings", 0)),
            "stored_readings": int(self.get_state("stored_readings", 0)),
            "uplinks": per,
        }


def _move_aside(path: Path) -> Path:
    """Move a corrupt database (and its WAL) aside for forensics; returns where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.rename(path.with_name(f"{path.name}.corrupt-{stamp}{suffix}"))
    return path.with_name(f"{path.name}.corrupt-{stamp}")


def snapshot_grace(step: int) -> int:
    """Ms after a boundary before its snapshot is built, for an interval of `step` ms."""
    return min(SNAPSHOT_GRACE, step // 2)


def _after(at: int, step: int) -> int:
    """The first boundary (a multiple of `step`) after `at`."""
    return (at // step + 1) * step
