"""The durable outbox (SQLite, WAL): every reading and event is committed here before it is
published, and leaves only when the broker has acknowledged the message that carried it.

Flow inside the database:
  chunks (readings) / events  --take_*-->  outbox (message with its seq and payload)  --ack-->  gone
A message gets its sequence number in the same transaction that moves its rows into the
outbox, so a message re-sent after a lost acknowledgement keeps its number and content.
Readings are stored packed, up to CHUNK_ROWS to a row of the `chunks` table (one SQLite row
per poll or so instead of one per reading: the per-row cost of SQLite was most of the agent's
CPU). Chunks keep insertion order (AUTOINCREMENT ids, never reused): draining never sorts by
time; a message may take the first part of a chunk (`taken` counts what left).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from agent.common.timefmt import now_ms, rfc3339
from agent.model import QUALITY_NAME

T = TypeVar("T")
CHUNK_ROWS = 500  # readings packed into one row of `chunks` (see pack_chunk)
DB_NAME = "hazgate.db"
SEQ_MARK = "seq.published"
log = logging.getLogger("hazgate.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS points(
  pid INTEGER PRIMARY KEY, tag TEXT NOT NULL, unit TEXT NOT NULL, type TEXT NOT NULL,
  UNIQUE(tag, unit, type));
CREATE TABLE IF NOT EXISTS chunks(
  id INTEGER PRIMARY KEY AUTOINCREMENT, oldest INTEGER NOT NULL, newest INTEGER NOT NULL,
  count INTEGER NOT NULL, taken INTEGER NOT NULL DEFAULT 0, rows BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox(
  seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, retain INTEGER NOT NULL,
  created INTEGER NOT NULL, count INTEGER NOT NULL, oldest INTEGER, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS devices(
  name TEXT PRIMARY KEY, link TEXT NOT NULL, reason TEXT, last_good INTEGER, changed INTEGER);
CREATE TABLE IF NOT EXISTS active(
  key TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, start INTEGER NOT NULL, data BLOB);
"""

def pack_chunk(stamps: Sequence[int], pids: Sequence[int], values: Sequence[Any], qualities: Sequence[int],
               reasons: Sequence[str | None]) -> bytes:
    """Readings, given by column, as one JSON blob: the first timestamp and offsets from it,
    point ids, values, then quality and reason, each a single value when the whole chunk
    shares it (the usual case). About 24 bytes per float reading."""
    t0 = stamps[0]
    quality = qualities[0] if qualities.count(qualities[0]) == len(qualities) else qualities
    reason = None if reasons.count(None) == len(reasons) else reasons
    return orjson.dumps([t0, [t - t0 for t in stamps], pids, values, quality, reason])


def unpack_chunk(blob: bytes) -> list[tuple[int, int, Any, int, str | None]]:
    t0, offsets, pids, values, quality, reason = orjson.loads(blob)
    n = len(pids)
    return list(zip([t0 + d for d in offsets], pids, values,
                    quality if isinstance(quality, list) else itertools.repeat(quality, n),
                    reason if reason is not None else itertools.repeat(None, n), strict=True))


@dataclass
class StoreBounds:
    """`[store]`: the most the store may hold; beyond either bound the oldest readings go."""

    max_bytes: int = 1 << 30
    max_age: float = 30 * 86400.0


# A builder turns (seq, rows) into the message payload; rows as selected by the take_* method.
Builder = Callable[[int, list[tuple]], bytes]
EVENTS_PER_MESSAGE = 100


@dataclass(slots=True)
class DrainRequest:
    """What the uplink asks of one `Store.drain` call."""
    acks: list[int]  # seqs the broker acknowledged since the last call
    sent_upto: int  # highest seq already handed to this connection
    room: int  # free places in the in-flight window
    build_events: Builder
    build_live: Builder | None  # None: live readings are not due yet
    live_batch: int
    watermark: int  # readings up to this id are backlog; 0: no backlog
    build_backlog: Builder | None
    backlog_batch: int
    budget: int  # readings to number at most in this call (keeps the store thread's turns short)


@dataclass(slots=True)
class DrainResult:
    messages: list[tuple[int, str, bool, bytes]] = field(default_factory=list)  # (seq, kind, retain, payload)
    error: sqlite3.Error | None = None  # the store refused writes: nothing new was numbered
    live_short: bool = False  # live readings are exhausted (the last batch was not full)
    backlog_done: bool = False


class Store:
    """Synchronous store; use from one thread at a time (AsyncStore runs it on its own thread)."""

    def __init__(self, data_dir: Path, readonly: bool = False):
        self.path = data_dir / DB_NAME
        self._pids: dict[tuple[str, str, str], int] = {}
        self._points: dict[int, tuple[str, str, str]] = {}  # pid -> (tag, unit, type)
        self.mark_path = data_dir / SEQ_MARK
        self._published = self._read_mark()
        if readonly:  # inspection beside a running agent: WAL lets readers in at any time
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        self.set_aside: Path | None = None  # where a corrupt store was moved, if it was
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "corrupt" not in str(exc) and "not a database" not in str(exc):
                raise  # disk full, read-only, locked: not the file's fault, keep it
            self.db.close()
            self._set_aside(str(exc))
            self._open()
        # A database behind the mark (new, or rolled back) continues above it: _next_seq()
        # never returns a number at or below one that may have been on the wire.
        if not self.mark_path.exists():  # created while there is space; rewritten in place
            with open(self.mark_path, "wb") as f:
                f.write(f"{0:020d}\n".encode())
                f.flush()
                os.fsync(f.fileno())
        if self.set_aside is not None:
            self.add_event(now_ms(), {
                "id": f"store-reset-{self._next_seq()}", "kind": "store_reset", "severity": "alarm",
                "state": "recovered", "ts": rfc3339(now_ms()), "source": "gateway",
                "reason": "local store was corrupt; readings buffered in it could not be sent",
                "moved_to": self.set_aside.name, "next_seq": self._next_seq(),
            })

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we go on. NORMAL could roll back the last commits
        # on power loss, and with them sequence numbers already used on the wire.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"database disk image is corrupt: {check}")
        self._migrate_readings()

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

    def _set_aside(self, why: str) -> None:
        """Move a corrupt store (and its WAL) aside for forensics; the agent starts a new one."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                src.rename(self.path.with_name(f"{self.path.name}.corrupt-{stamp}{suffix}"))
        self.set_aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("store was corrupt: moved aside, starting a new one", extra={"fields": {
            "moved_to": str(self.set_aside), "error": why}})

    # The published mark: a small file, synced before any message goes to the broker, holding
    # the highest seq ever handed out. If the database is lost or rolled back (a torn write),
    # numbering continues above it: receivers may see a gap (what was lost), never an old
    # number carrying new content.
    def _read_mark(self) -> int:
        try:
            return int(self.mark_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def mark_published(self, seq: int) -> None:
        """Record, durably, that messages up to `seq` may now be published.

        The file is rewritten in place at a fixed width, so this works on a full disk too.
        """
        if seq <= self._published:
            return
        mode = "r+b" if self.mark_path.exists() else "wb"
        with open(self.mark_path, mode) as f:
            f.write(f"{seq:020d}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        self._published = seq

    def reserve_seq(self) -> int:
        """A number for a message built outside the database (it refuses writes), marked used."""
        seq = self._next_seq()
        self.mark_published(seq)
        return seq

    def close(self) -> None:
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
            return self.last_reading_id()

    def _add_chunk(self, rows: list, pids: dict[str, int] | None = None) -> None:
        stamps, keys, values, qualities, reasons = zip(*rows, strict=True)
        if pids is not None:
            keys = tuple(pids[tag] for tag in keys)
        self.db.execute("INSERT INTO chunks(oldest, newest, count, rows) VALUES (?,?,?,?)",
                        (min(stamps), max(stamps), len(rows), pack_chunk(stamps, keys, values, qualities, reasons)))

    def add_event(self, ts_ms: int, body: dict) -> None:
        with self._tx():
            self.db.execute("INSERT INTO events(ts, body) VALUES (?, ?)", (ts_ms, orjson.dumps(body)))

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

    def queued(self) -> Iterator[tuple[int, str, str, str, Any, str, str | None]]:
        """Readings not yet in a message, oldest first: (ts_ms, tag, unit, type, value, quality, reason)."""
        for taken, blob in self.db.execute("SELECT taken, rows FROM chunks ORDER BY id"):
            for ts, pid, value, q, reason in unpack_chunk(blob)[taken:]:
                yield (ts, *self._point(pid), value, QUALITY_NAME[q], reason)

    # --- active alarms, bypasses and other conditions (agent/checks) ---------------------
    def record_checks(self, events: list[tuple[int, dict]], upserts: list[tuple[str, str, str, int, dict]],
                      deletes: list[str]) -> None:
        """Events raised by the checks and the active conditions they start or end, in one
        transaction: a restart never re-announces a condition whose event is stored, nor
        forgets one. upserts: (key, kind, subject, start_ms, data); deletes: keys."""
        with self._tx():
            self.db.executemany("INSERT INTO events(ts, body) VALUES (?, ?)",
                                ((ts, orjson.dumps(body)) for ts, body in events))
            self.db.executemany("INSERT OR REPLACE INTO active(key, kind, subject, start, data) VALUES (?,?,?,?,?)",
                                ((k, kind, subj, start, orjson.dumps(data)) for k, kind, subj, start, data in upserts))
            self.db.executemany("DELETE FROM active WHERE key = ?", ((k,) for k in deletes))

    def active(self) -> list[tuple[str, str, str, int, dict]]:
        """Active conditions, oldest first: (key, kind, subject, start_ms, data)."""
        try:
            rows = self.db.execute("SELECT key, kind, subject, start, data FROM active ORDER BY start, key").fetchall()
        except sqlite3.OperationalError:  # read-only view of a store made before the table existed
            return []
        return [(k, kind, subj, start, orjson.loads(data) if data else {}) for k, kind, subj, start, data in rows]

    # --- building messages -------------------------------------------------------------
    def _next_seq(self) -> int:
        return max(int(self.get_state("next_seq", 1)), self._published + 1)

    def _enqueue(self, seq: int, kind: str, retain: bool, count: int, oldest: int | None, payload: bytes) -> None:
        self.db.execute(
            "INSERT INTO outbox(seq, kind, retain, created, count, oldest, payload) VALUES (?,?,?,?,?,?,?)",
            (seq, kind, int(retain), now_ms(), count, oldest, payload),
        )
        self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('next_seq', ?)", (seq + 1,))

    def take_readings(self, build: Builder, limit: int, after_id: int = 0, upto_id: int | None = None) -> tuple[int, int] | None:
        """Move up to `limit` readings with after_id < id <= upto_id into one outbox message.

        Rows handed to `build`: (ts_ms, tag, unit, type, value, quality name, reason).
        Returns (seq, readings) or None when there is nothing to take.
        """
        with self._tx():
            return self._take_readings(build, limit, after_id, upto_id)

    def _take_readings(self, build: Builder, limit: int, after_id: int, upto_id: int | None) -> tuple[int, int] | None:
        upto = upto_id if upto_id is not None else 2**62
        body: list[tuple] = []
        point = self._point
        last_whole = None  # the last chunk taken whole
        for cid, count, taken, blob in self.db.execute(
                "SELECT id, count, taken, rows FROM chunks WHERE id > ? AND id <= ? ORDER BY id", (after_id, upto)):
            stored = unpack_chunk(blob)
            end = min(count, taken + limit - len(body))
            body.extend((ts, *point(pid), value, QUALITY_NAME[q], reason)
                        for ts, pid, value, q, reason in stored[taken:end])
            if end < count:  # the rest stays for the next message
                self.db.execute("UPDATE chunks SET taken=?, oldest=? WHERE id=?",
                                (end, min(r[0] for r in stored[end:]), cid))
                break
            last_whole = cid
            if len(body) >= limit:
                break
        if not body:
            return None
        seq = self._next_seq()
        self._enqueue(seq, "readings", False, len(body), min(r[0] for r in body), build(seq, body))
        if last_whole is not None:
            self.db.execute("DELETE FROM chunks WHERE id > ? AND id <= ?", (after_id, last_whole))
        return seq, len(body)

    def take_events(self, build: Builder, limit: int = EVENTS_PER_MESSAGE) -> int | None:
        """Move pending events into one outbox message; rows handed to `build`: event dicts."""
        with self._tx():
            return self._take_events(build, limit)

    def _take_events(self, build: Builder, limit: int) -> int | None:
        rows = self.db.execute("SELECT id, ts, body FROM events ORDER BY id LIMIT ?", (limit,)).fetchall()
        if not rows:
            return None
        seq = self._next_seq()
        self._enqueue(seq, "events", False, len(rows), rows[0][1], build(seq, [orjson.loads(r[2]) for r in rows]))
        self.db.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
        return seq

    def drain(self, req: DrainRequest) -> DrainResult:
        """One uplink step in one store call and one transaction: record the acknowledgements,
        number new messages (events, then live readings, then backlog) for the free window,
        and hand back every message not yet given to this connection, oldest first, with the
        published mark synced past them (so they may go on the wire).

        A store that refuses writes (disk full) numbers nothing new; messages numbered before
        still come back, and the error with them.
        """
        res = DrainResult()
        try:
            with self._tx():
                if req.acks:
                    self._ack(req.acks)
                waiting = self.db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM outbox WHERE seq > ? LIMIT ?)",
                                          (req.sent_upto, req.room)).fetchone()[0]
                self._number(req, req.room - waiting, res)
        except sqlite3.Error as exc:
            res.error = exc
        res.messages = self.unacked(req.sent_upto, req.room)
        if res.messages:
            self.mark_published(res.messages[-1][0])  # durably, before the wire
        return res

    def _number(self, req: DrainRequest, free: int, res: DrainResult) -> None:
        """Build up to `free` messages within the request's reading budget."""
        budget = req.budget
        while free > 0 and self._take_events(req.build_events, EVENTS_PER_MESSAGE) is not None:
            free -= 1
        while free > 0 and budget > 0 and req.build_live is not None:
            taken = self._take_readings(req.build_live, req.live_batch, req.watermark, None)
            count = taken[1] if taken else 0
            if taken:
                free, budget = free - 1, budget - count
            if count < req.live_batch:
                res.live_short = True
                break
        while free > 0 and budget > 0 and req.watermark and req.build_backlog is not None:
            taken = self._take_readings(req.build_backlog, req.backlog_batch, 0, req.watermark)
            if taken is None:
                res.backlog_done = True
                break
            free, budget = free - 1, budget - taken[1]

    def enqueue(self, kind: str, retain: bool, build: Builder) -> int:
        """Put a ready-made message (meta) into the outbox with the next seq."""
        with self._tx():
            seq = self._next_seq()
            self._enqueue(seq, kind, retain, 0, None, build(seq, []))
        return seq

    def unacked(self, after_seq: int = 0, limit: int = 100) -> list[tuple[int, str, bool, bytes]]:
        return [
            (seq, kind, bool(retain), payload)
            for seq, kind, retain, payload in self.db.execute(
                "SELECT seq, kind, retain, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
        ]

    def ack(self, seqs: list[int]) -> None:
        """The broker acknowledged these messages: they leave the store."""
        with self._tx():
            self._ack(seqs)

    def _ack(self, seqs: list[int]) -> None:
        self.db.executemany("DELETE FROM outbox WHERE seq = ?", ((s,) for s in seqs))
        self.db.executemany(
            "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
            (("last_ack_seq", max(seqs)), ("last_ack_at", now_ms())),
        )

    # --- bounds -------------------------------------------------------------------------
    def used_bytes(self) -> int:
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def enforce_limits(self, max_bytes: int, max_age_s: float) -> list[dict]:
        """Evict the oldest readings beyond the size or age bound; events are never evicted.

        Every eviction is itself stored as an event (and counted), so loss is never silent.
        Returns the eviction events raised.
        """
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
        with self._tx():
            count, first_ts, last_ts, first_id = self.db.execute(
                "SELECT SUM(count - taken), MIN(oldest), MAX(newest), MIN(id) FROM chunks WHERE id <= ?", (upto_id,)
            ).fetchone()
            self.db.execute("DELETE FROM chunks WHERE id <= ?", (upto_id,))
            total = int(self.get_state("evicted_readings", 0)) + count
            self.db.execute("INSERT OR REPLACE INTO state(key, value) VALUES ('evicted_readings', ?)", (total,))
            ts = now_ms()
            event = {
                "id": f"evict-{first_id}-{upto_id}", "kind": "buffer_eviction", "severity": "warning",
                "state": "dropped", "ts": rfc3339(ts), "source": "gateway", "count": count,
                "from_ts": rfc3339(first_ts), "to_ts": rfc3339(last_ts), "reason": why,
            }
            self.db.execute("INSERT INTO events(ts, body) VALUES (?, ?)", (ts, orjson.dumps(event)))
        return event

    # --- inspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        r_count, r_oldest = self.db.execute("SELECT COALESCE(SUM(count - taken), 0), MIN(oldest) FROM chunks").fetchone()
        o_msgs, o_readings, o_oldest = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(count), 0), MIN(oldest) FROM outbox WHERE kind='readings'"
        ).fetchone()
        events = self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        outbox_events = self.db.execute("SELECT COUNT(*) FROM outbox WHERE kind='events'").fetchone()[0]
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        oldest = min((t for t in (r_oldest, o_oldest) if t is not None), default=None)
        return {
            "readings_buffered": r_count + o_readings,
            "readings_unsent": r_count,
            "messages_unacked": o_msgs + outbox_events,
            "events_buffered": events,
            "oldest_unsent_ms": oldest,
            "db_bytes": page_size * pages,
            "used_bytes": self.used_bytes(),
            "evicted_readings": int(self.get_state("evicted_readings", 0)),
            "stored_readings": int(self.get_state("stored_readings", 0)),
            "next_seq": self._next_seq(),
            "last_ack_seq": self.get_state("last_ack_seq"),
            "last_ack_at": self.get_state("last_ack_at"),
        }


class StoreUnavailable(sqlite3.OperationalError):
    """The store is not open (yet): the data dir is missing, read-only or the file unusable."""


class AsyncStore:
    """Runs every store call on one dedicated thread, so a commit never stalls the event loop.

    Calls run in the order they were made, except that urgent ones (events, and the uplink
    step that publishes them) go before every ordinary call still waiting: an alarm never
    queues behind a batch of readings.
    """

    def __init__(self, data_dir: Path):
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name="store", daemon=True)
        self._thread.start()
        self._store: Store | None = None
        self._data_dir = data_dir
        self.ready = asyncio.Event()
        self.opened_upto = 0  # the newest reading id when the store was opened: earlier runs' readings

    @property
    def thread_id(self) -> int | None:
        """The kernel's id of the store thread (its progress is read from /proc)."""
        return self._thread.native_id

    def _work(self) -> None:
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

    async def open(self) -> None:
        """Open the store; raises sqlite3.Error or OSError when it cannot be opened."""
        store = await self._run_raw(False, Store, self._data_dir)
        self.opened_upto = await self._run_raw(False, store.last_reading_id)
        self._store = store
        self.ready.set()

    async def close_quietly(self) -> None:
        """Forget a half-opened store without giving up the worker thread."""
        if self._store is not None:
            store, self._store = self._store, None
            self.ready.clear()
            with contextlib.suppress(sqlite3.Error):
                await self._run_raw(False, store.close)

    async def _run_raw(self, urgent: bool, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread.is_alive():
            raise StoreUnavailable(f"store in {self._data_dir} is closed")
        fut: Future = Future()
        self._jobs.put((0 if urgent else 1, next(self._order), (fut, fn, args)))
        return await asyncio.wrap_future(fut)

    async def call(self, name: str, *args: Any) -> Any:
        return await self._call(False, name, args)

    async def call_urgent(self, name: str, *args: Any) -> Any:
        """A call that goes before the ordinary ones still waiting."""
        return await self._call(True, name, args)

    async def _call(self, urgent: bool, name: str, args: tuple) -> Any:
        if self._store is None:
            raise StoreUnavailable(f"store in {self._data_dir} is not open")
        return await self._run_raw(urgent, getattr(self._store, name), *args)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            self.ready.clear()
            await self._run_raw(False, store.close)
        self._jobs.put((2, next(self._order), None))  # after everything still waiting
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
