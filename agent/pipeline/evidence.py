"""The evidence record behind `hazgate report`: compact facts kept apart from the readings.

It lives in its own SQLite file, `evidence.db` beside the store, attached to the store's
connection as `ev`: reading eviction and a store reset never touch it, and it does not count
against the store's size bound. Rows older than `[store] evidence_max_age` (400 days by
default) are pruned with the store's bounds.

- `intervals`: one row per condition of an interlock or gas detector, from the checks' events
  (start, end or NULL while it lasts, detail such as the bypass's `overdue`).
- `days`: per local day and point, the readings stored by quality, the first and last
  collection time and the longest hole between two readings.
- `delivered`: per local day, uplink and point, the readings the far end acknowledged (each
  message's points are counted in memory when it is numbered and credited when it is
  acknowledged; a message numbered before a restart and acknowledged after it is credited to
  no point, so these counts may fall short, never over).
- `uplink_days`: per local day (of a message's oldest reading) and uplink, the readings
  acknowledged on time and back-filled (from the outbox row, exact), and those a store bound
  dropped before the uplink had them (on the day they were collected).
- `runs`: when the agent ran (its start and its last flush).

Counts are kept in memory and written every FLUSH_S (a minute), FLUSH_ROWS rows per store
transaction, and when the store closes: an agent killed outright loses at most that much of
the counts, never a reading or an interval. The runs' ends are written with every heartbeat.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, tzinfo
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from agent.common.timefmt import now_ms

EVIDENCE_NAME = "evidence.db"
EVIDENCE_AGE_S = 400 * 86400.0  # the default `[store] evidence_max_age`
FLUSH_S = 60.0  # counts kept in memory at most this long (a 10 000-point flush is 20 000 upserts)
FLUSH_ROWS = 1000  # evidence rows written in one store transaction at most
INFLIGHT_MAX = 4096  # messages whose points wait for their acknowledgement, at most (the oldest go)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ev.intervals(
  kind TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER,
  detail BLOB, PRIMARY KEY(kind, subject, state, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.days(
  day INTEGER NOT NULL, tag TEXT NOT NULL, stored INTEGER NOT NULL, good INTEGER NOT NULL,
  uncertain INTEGER NOT NULL, bad INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
  hole_ms INTEGER NOT NULL, PRIMARY KEY(day, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.delivered(
  day INTEGER NOT NULL, uplink TEXT NOT NULL, tag TEXT NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY(day, uplink, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.uplink_days(
  day INTEGER NOT NULL, uplink TEXT NOT NULL, on_time INTEGER NOT NULL, backfilled INTEGER NOT NULL,
  evicted INTEGER NOT NULL, PRIMARY KEY(day, uplink)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.runs(start INTEGER PRIMARY KEY, last INTEGER NOT NULL);
"""

UPSERT_DAYS = (
    "INSERT INTO ev.days VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
    "stored = stored + excluded.stored, good = good + excluded.good, uncertain = uncertain + excluded.uncertain, "
    "bad = bad + excluded.bad, hole_ms = MAX(hole_ms, excluded.hole_ms, excluded.first_ts - last_ts), "
    "first_ts = MIN(first_ts, excluded.first_ts), last_ts = MAX(last_ts, excluded.last_ts)")
UPSERT_DELIVERED = "INSERT INTO ev.delivered VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET count = count + excluded.count"
UPSERT_UPLINK_DAYS = (
    "INSERT INTO ev.uplink_days VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET on_time = on_time + excluded.on_time, "
    "backfilled = backfilled + excluded.backfilled, evicted = evicted + excluded.evicted")

# event kind -> (subject kind, the event states that open or update the interval, those that end it)
INTERVAL_EVENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "interlock_bypass": ("interlock", ("on", "overdue"), ("off",)),
    "interlock_out_of_service": ("interlock", ("raised",), ("cleared",)),
    "interlock_trip": ("interlock", ("tripped", "spurious"), ("reset",)),
    "interlock_unknown": ("interlock", ("raised",), ("cleared",)),
    "detector_fault": ("detector", ("raised",), ("cleared",)),
    "gas_alarm": ("detector", ("raised", "escalated", "deescalated"), ("cleared",)),
    "declaration": ("", ("stopped", "expired"), ("restored",)),  # an interlock's or a point's, by its body
}
DECLARED = {"interlock": "declared", "detector": "declared_stop"}  # the interval a declared stop records
INTERLOCK_STATE = {"interlock_bypass": "bypassed", "interlock_out_of_service": "out_of_service",
                   "interlock_trip": "tripped", "interlock_unknown": "unknown"}


class DayClock:
    """Local calendar days as YYYYMMDD numbers, in the gateway's time zone (None: the system's)."""

    def __init__(self, tz: tzinfo | None = None):
        self.tz = tz
        self._lo, self._hi, self._day = 0, -1, 0

    def day(self, ts_ms: int) -> int:
        if not self._lo <= ts_ms < self._hi:
            self._day, self._lo, self._hi = self.span(ts_ms)
        return self._day

    def span(self, ts_ms: int) -> tuple[int, int, int]:
        """(day, its first ms, the next day's first ms) of the day holding `ts_ms`."""
        local = datetime.fromtimestamp(ts_ms / 1000, self.tz).astimezone(self.tz)
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=1, hours=3)).replace(hour=0)  # a DST day is 23 or 25 h long
        return (start.year * 10000 + start.month * 100 + start.day,
                int(start.timestamp() * 1000), int(end.timestamp() * 1000))


def day_text(day: int) -> str:
    """YYYYMMDD as YYYY-MM-DD."""
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"


def ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class DayCounts:
    """One day's readings per point (pid or tag): count, uncertain, bad, first and last
    collection time, longest hole between two readings."""

    __slots__ = ("n", "unc", "bad", "first", "last", "hole")

    def __init__(self) -> None:
        self.n: dict[Any, int] = {}
        self.unc: Counter[Any] = Counter()
        self.bad: Counter[Any] = Counter()
        self.first: dict[Any, int] = {}
        self.last: dict[Any, int] = {}
        self.hole: dict[Any, int] = {}

    def add(self, rows: list[tuple]) -> None:
        """(ts_ms, key, value, quality code, reason) rows; quality codes: 1 uncertain, 2 bad."""
        n, first, last, hole = self.n, self.first, self.last, self.hole
        all_good = not any(map(itemgetter(3), rows))
        for r in rows:
            ts, k = r[0], r[1]
            p = last.get(k)
            if p is None:
                n[k], first[k], last[k], hole[k] = 1, ts, ts, 0
            else:
                n[k] += 1
                if ts > p:
                    if ts - p > hole[k]:
                        hole[k] = ts - p
                    last[k] = ts
                elif ts < first[k]:
                    first[k] = ts
            if not all_good and r[3]:
                (self.unc if r[3] == 1 else self.bad)[k] += 1

    def rows(self, day: int, tag_of: Callable[[Any], str]) -> Iterator[tuple]:
        """(day, tag, stored, good, uncertain, bad, first, last, hole) per point."""
        for k, n in self.n.items():
            unc, bad = self.unc.get(k, 0), self.bad.get(k, 0)
            yield day, tag_of(k), n, n - unc - bad, unc, bad, self.first[k], self.last[k], self.hole[k]


class Evidence:
    """The evidence record's writer, owned by a writable Store and used inside its transactions."""

    def __init__(self, days: DayClock, opened_ms: int):
        self.days = days
        self.opened = opened_ms
        self._stored: dict[int, DayCounts] = {}
        # (uplink, seq) -> [(day, the tag of each reading)]: counted when acknowledged (Counter
        # counts a list in C; merging one Counter into another is a Python loop)
        self._inflight: dict[tuple[str, int], list[tuple[int, list[str]]]] = {}
        self._delivered: dict[tuple[int, str], Counter[str]] = {}  # (day, uplink) -> tag -> readings
        self._uplinks: dict[tuple[int, str], list[int]] = {}  # (day, uplink) -> [on time, back-filled, evicted]
        self._flushed = time.monotonic()
        self._writing: list[tuple[str, Iterator[tuple]]] = []  # (upsert, rows) handed over, not yet written

    @staticmethod
    def attach(db: sqlite3.Connection, data_dir: Path, readonly: bool) -> bool:
        """Attach evidence.db as `ev` (created when writable); False when read-only and absent."""
        path = data_dir / EVIDENCE_NAME
        if readonly:
            if not path.exists():
                return False
            db.execute("ATTACH DATABASE ? AS ev", (f"file:{path}?mode=ro",))
            return True
        db.execute("ATTACH DATABASE ? AS ev", (str(path),))
        db.execute("PRAGMA ev.journal_mode=WAL")
        db.execute("PRAGMA ev.synchronous=FULL")
        db.executescript(SCHEMA)
        check = db.execute("PRAGMA ev.quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"evidence database is corrupt: {check}")
        return True

    # --- readings stored and delivered ---------------------------------------------------
    def stored(self, rows: list[tuple]) -> None:
        """Count readings as stored: (ts_ms, pid or tag, value, quality code, reason). A call's
        readings are of one day except around midnight; then they are split by day."""
        if not rows:
            return
        stamps = list(map(itemgetter(0), rows))
        day = self.days.day
        first = day(min(stamps))
        if first == day(max(stamps)):
            self._day(first).add(rows)
            return
        split: dict[int, list[tuple]] = {}
        for r in rows:
            split.setdefault(day(r[0]), []).append(r)
        for d, part in split.items():
            self._day(d).add(part)

    def _day(self, day: int) -> DayCounts:
        if (c := self._stored.get(day)) is None:
            c = self._stored[day] = DayCounts()
        return c

    def taken(self, uplink: str, seq: int, rows: list[tuple]) -> None:
        """A message was numbered: its points per day, (ts_ms, tag, ...) rows, wait for its
        acknowledgement; each reading's tag is kept, and counted in C when it is acknowledged."""
        day = self.days.day
        stamps = list(map(itemgetter(0), rows))
        first, last = day(min(stamps)), day(max(stamps))
        if first == last:
            per = [(first, list(map(itemgetter(1), rows)))]
        else:
            split: dict[int, list[str]] = {}
            for r in rows:
                split.setdefault(day(r[0]), []).append(r[1])
            per = list(split.items())
        inflight = self._inflight
        inflight[(uplink, seq)] = per
        if len(inflight) > INFLIGHT_MAX:
            del inflight[next(iter(inflight))]

    def set_aside(self, uplink: str, seq: int) -> None:
        self._inflight.pop((uplink, seq), None)

    def acked(self, uplink: str, messages: Iterable[tuple[int, int, int, int | None]]) -> None:
        """Messages acknowledged: (seq, readings, back-fill, oldest collection time)."""
        day = self.days.day
        for seq, count, backfill, oldest in messages:
            for d, tags in self._inflight.pop((uplink, seq), ()):
                if (c := self._delivered.get((d, uplink))) is None:
                    self._delivered[(d, uplink)] = Counter(tags)
                else:
                    c.update(tags)
            if oldest is not None and count:
                self._uplink_day(day(oldest), uplink)[1 if backfill else 0] += count

    def evicted(self, lost: Iterable[tuple[str, int, int]]) -> None:
        """Readings a bound dropped, (uplink, the oldest collection time of their chunk, count):
        counted on the day they were collected (a chunk holds one poll or so)."""
        for uplink, oldest, n in lost:
            self._uplink_day(self.days.day(oldest), uplink)[2] += n

    def _uplink_day(self, day: int, uplink: str) -> list[int]:
        if (c := self._uplinks.get((day, uplink))) is None:
            c = self._uplinks[(day, uplink)] = [0, 0, 0]
        return c

    def flush(self, db: sqlite3.Connection, tag_of: Callable[[Any], str], force: bool = False) -> None:
        """Write the counts kept in memory, inside the caller's transaction: when due, they are
        handed over for writing, FLUSH_ROWS rows a call (a 10 000-point gateway's counts take
        several of the store's transactions, so none of them stalls an event); `force`: all."""
        if force:
            self._write(db, None)
        if not self._writing and (force or time.monotonic() - self._flushed >= FLUSH_S):
            self._flushed = time.monotonic()
            stored, delivered, uplinks = self._stored, self._delivered, self._uplinks
            self._stored, self._delivered, self._uplinks = {}, {}, {}
            self._writing = [
                (UPSERT_DAYS, (row for d, counts in stored.items() for row in counts.rows(d, tag_of))),
                (UPSERT_DELIVERED, ((d, up, tag, n) for (d, up), c in delivered.items() for tag, n in c.items())),
                (UPSERT_UPLINK_DAYS, ((d, up, *c) for (d, up), c in uplinks.items())),
            ]
        self._write(db, None if force else FLUSH_ROWS)
        if force:
            self.beat(db)

    def beat(self, db: sqlite3.Connection) -> None:
        """The agent runs now (the store's heartbeat, every 5 s)."""
        db.execute("INSERT OR REPLACE INTO ev.runs VALUES (?, ?)", (self.opened, now_ms()))

    def _write(self, db: sqlite3.Connection, budget: int | None) -> None:
        while self._writing and (budget is None or budget > 0):
            sql, rows = self._writing[0]
            part = list(rows if budget is None else islice(rows, budget))
            db.executemany(sql, part)
            if budget is not None:
                budget -= len(part)
                if budget == 0:
                    return
            self._writing.pop(0)

    # --- conditions, from the checks' events -----------------------------------------------
    def conditions(self, db: sqlite3.Connection, events: Iterable[tuple[int, dict]]) -> None:
        """Open, update or end the interval each interlock and detector event concerns."""
        for ts, body in events:
            spec = INTERVAL_EVENTS.get(body.get("kind", ""))
            began = body.get("start") or body.get("since")  # a declaration's: since
            if spec is None or not began:
                continue
            kind, opens, ends = spec
            ev_kind, state = body["kind"], body.get("state")
            if state not in opens and state not in ends:
                continue
            if ev_kind == "declaration":  # a declared stop: of an interlock (its bypass is declared) or a point
                kind = "interlock" if body.get("interlock") else "detector"
                subject, what = body.get("interlock") or body.get("tag"), DECLARED[kind]
            elif kind == "interlock":
                subject, what = body.get("interlock"), INTERLOCK_STATE[ev_kind]
            else:
                subject, what = body.get("tag"), body.get("cause", "alarm") if ev_kind == "detector_fault" else "alarm"
            if not subject:
                continue
            key = (kind, subject, what, ms_of(began))
            row = db.execute("SELECT detail FROM ev.intervals WHERE kind=? AND subject=? AND state=? AND start=?",
                             key).fetchone()
            detail = merge_detail(orjson.loads(row[0]) if row and row[0] else {}, body)
            end = ts if state in ends else None
            db.execute("INSERT INTO ev.intervals VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                       "end = excluded.end, detail = excluded.detail", (*key, end, orjson.dumps(detail)))

    def prune(self, db: sqlite3.Connection, keep_s: float, now: int) -> None:
        cutoff = now - int(keep_s * 1000)
        day = self.days.day(cutoff)
        db.execute("DELETE FROM ev.intervals WHERE end IS NOT NULL AND end < ?", (cutoff,))
        for table in ("days", "delivered", "uplink_days"):
            db.execute(f"DELETE FROM ev.{table} WHERE day < ?", (day,))
        db.execute("DELETE FROM ev.runs WHERE last < ?", (cutoff,))


def merge_detail(detail: dict, body: dict) -> dict:
    """What an interval keeps of its events: the bypass tag and whether it went overdue, the
    trip's kind (tripped or spurious), a gas alarm's highest level and value, a declared stop's
    declaration (id, by, reason, until) and whether it expired."""
    kind, state = body["kind"], body["state"]
    if kind == "interlock_bypass":
        detail.setdefault("tag", body.get("tag"))
        if "bypass_max_s" in body:
            detail["bypass_max_s"] = body["bypass_max_s"]
        if state == "overdue":
            detail["overdue"] = True
    elif kind == "interlock_trip" and state in ("tripped", "spurious"):
        detail["trip"] = state
    elif kind == "declaration":
        for key in ("declaration", "by", "reason", "until"):  # the stop's, not the restore's
            detail.setdefault(key, body.get(key))
        if state == "expired":
            detail["expired"] = True
    elif kind == "gas_alarm":
        level = body.get("alarm_level") or 0
        detail["level"] = max(detail.get("level", 0), level)
        detail.setdefault("limit_name", body.get("level"))
        value = body.get("value")
        if isinstance(value, int | float) and (detail.get("peak") is None or value > detail["peak"]):
            detail["peak"] = value
    return detail


# --- reading it back (hazgate report) ------------------------------------------------------
def read_intervals(db: sqlite3.Connection, frm: int, to: int) -> list[tuple[str, str, str, int, int | None, dict]]:
    """Intervals that overlap [frm, to): (kind, subject, state, start, end or None, detail)."""
    return [(k, s, st, a, b, orjson.loads(d) if d else {}) for k, s, st, a, b, d in db.execute(
        "SELECT kind, subject, state, start, end, detail FROM ev.intervals WHERE start < ? AND (end IS NULL OR end > ?) "
        "ORDER BY start", (to, frm))]


def read_runs(db: sqlite3.Connection, frm: int, to: int) -> list[tuple[int, int]]:
    return db.execute("SELECT start, last FROM ev.runs WHERE start < ? AND last > ? ORDER BY start",
                      (to, frm)).fetchall()


def read_days(db: sqlite3.Connection, first: int, last: int) -> list[tuple]:
    """(day, tag, stored, good, uncertain, bad, first_ts, last_ts, hole_ms), days first..last."""
    return db.execute("SELECT * FROM ev.days WHERE day BETWEEN ? AND ? ORDER BY tag, day", (first, last)).fetchall()


def read_delivered(db: sqlite3.Connection, first: int, last: int) -> list[tuple[int, str, str, int]]:
    """(day, uplink, tag, readings acknowledged)."""
    return db.execute("SELECT * FROM ev.delivered WHERE day BETWEEN ? AND ?", (first, last)).fetchall()


def read_uplink_days(db: sqlite3.Connection, first: int, last: int) -> list[tuple[int, str, int, int, int]]:
    """(day, uplink, on time, back-filled, evicted)."""
    return db.execute("SELECT * FROM ev.uplink_days WHERE day BETWEEN ? AND ?", (first, last)).fetchall()
