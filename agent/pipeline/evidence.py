"""The evidence record behind `hazgate report`: compact facts kept apart from the readings.

It lives in its own SQLite file, `evidence.db` beside the store, attached to the store's
connection as `ev`: reading eviction and a store reset never touch it, and it does not count
against the store's size bound. Rows older than `[store] evidence_max_age` (400 days by
default) are pruned with the store's bounds.

- `intervals`: one row per condition of an interlock or gas detector, from the checks' events
  (start, end or NULL while it lasts, detail such as the bypass's `overdue`).
- `days`: per local day and point, the readings stored by quality, the first and last
  collection time and the longest hole between two readings.
- `delivered`: per local day, uplink and point, the readings the far end acknowledged, on time
  and back-filled (counted when the message is taken, credited when it is acknowledged).
- `evicted`: per local day and uplink, the readings a store bound dropped before it had them.
- `runs`: when the agent ran (its start and its last flush).

Counts are kept in memory and flushed at most FLUSH_S apart inside the store's own
transactions (and when the store closes): an agent killed outright loses at most that much of
the counts, never a reading or an interval.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import orjson

from agent.common.timefmt import now_ms

EVIDENCE_NAME = "evidence.db"
EVIDENCE_AGE_S = 400 * 86400.0  # the default `[store] evidence_max_age`
FLUSH_S = 5.0  # counts kept in memory at most this long

SCHEMA = """
CREATE TABLE IF NOT EXISTS ev.intervals(
  kind TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER,
  detail BLOB, PRIMARY KEY(kind, subject, state, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.days(
  day INTEGER NOT NULL, tag TEXT NOT NULL, stored INTEGER NOT NULL, good INTEGER NOT NULL,
  uncertain INTEGER NOT NULL, bad INTEGER NOT NULL, first_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL,
  hole_ms INTEGER NOT NULL, PRIMARY KEY(day, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.delivered(
  day INTEGER NOT NULL, uplink TEXT NOT NULL, tag TEXT NOT NULL, on_time INTEGER NOT NULL,
  backfilled INTEGER NOT NULL, PRIMARY KEY(day, uplink, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.evicted(
  day INTEGER NOT NULL, uplink TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY(day, uplink)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ev.runs(start INTEGER PRIMARY KEY, last INTEGER NOT NULL);
"""

# event kind -> (subject kind, the event states that open or update the interval, those that end it)
INTERVAL_EVENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "interlock_bypass": ("interlock", ("on", "overdue"), ("off",)),
    "interlock_out_of_service": ("interlock", ("raised",), ("cleared",)),
    "interlock_trip": ("interlock", ("tripped", "spurious"), ("reset",)),
    "interlock_unknown": ("interlock", ("raised",), ("cleared",)),
    "detector_fault": ("detector", ("raised",), ("cleared",)),
    "gas_alarm": ("detector", ("raised", "escalated", "deescalated"), ("cleared",)),
}
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


def ms_of(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class Evidence:
    """The evidence record's writer, owned by a writable Store and used inside its transactions."""

    def __init__(self, days: DayClock, opened_ms: int):
        self.days = days
        self.opened = opened_ms
        self._stored: dict[tuple[int, Any], list[int]] = {}  # (day, pid or tag) -> [n, good, unc, bad, first, last, hole]
        self._delivered: Counter[tuple[int, str, int, bool]] = Counter()  # (day, uplink, pid, backfill) -> n
        self._flushed = time.monotonic()

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
    def stored(self, rows: Iterable[tuple]) -> None:
        """Count readings as stored: (ts_ms, pid or tag, value, quality code, reason)."""
        acc, day = self._stored, self.days.day
        for ts, key, _v, q, _r in rows:
            c = acc.get(k := (day(ts), key))
            if c is None:
                acc[k] = c = [0, 0, 0, 0, ts, ts, 0]
            c[0] += 1
            c[1 + q] += 1
            if ts > c[5]:
                if ts - c[5] > c[6]:
                    c[6] = ts - c[5]
                c[5] = ts
            elif ts < c[4]:
                c[4] = ts

    def tally(self, rows: Iterable[tuple]) -> bytes:
        """What a message carries, per day and point, kept with it until it is acknowledged."""
        day = self.days.day
        return orjson.dumps([[d, pid, n] for (d, pid), n in Counter((day(r[0]), r[1]) for r in rows).items()])

    def delivered(self, uplink: str, tallies: Iterable[tuple[bytes | None, int]]) -> None:
        """Messages acknowledged: (their tally, whether they were back-fill)."""
        acc = self._delivered
        for blob, backfill in tallies:
            if blob:
                for d, pid, n in orjson.loads(blob):
                    acc[(d, uplink, pid, bool(backfill))] += n

    def evicted(self, db: sqlite3.Connection, lost: Iterable[tuple[str, int, int]]) -> None:
        """Readings a bound dropped, (uplink, the oldest collection time of their chunk, count):
        counted on the day they were collected (a chunk holds one poll or so)."""
        per: Counter[tuple[int, str]] = Counter()
        for uplink, oldest, n in lost:
            per[(self.days.day(oldest), uplink)] += n
        db.executemany("INSERT INTO ev.evicted VALUES (?,?,?) ON CONFLICT DO UPDATE SET count = count + excluded.count",
                       ((day, uplink, n) for (day, uplink), n in per.items() if n))

    def flush(self, db: sqlite3.Connection, tag_of: Callable[[Any], str], force: bool = False) -> None:
        """Write the counts kept in memory (inside the caller's transaction) when due."""
        if not force and time.monotonic() - self._flushed < FLUSH_S:
            return
        self._flushed = time.monotonic()
        db.executemany(
            "INSERT INTO ev.days VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
            "stored = stored + excluded.stored, good = good + excluded.good, "
            "uncertain = uncertain + excluded.uncertain, bad = bad + excluded.bad, "
            "hole_ms = MAX(hole_ms, excluded.hole_ms, excluded.first_ts - last_ts), "
            "first_ts = MIN(first_ts, excluded.first_ts), last_ts = MAX(last_ts, excluded.last_ts)",
            ((d, tag_of(key), *c) for (d, key), c in self._stored.items()))
        db.executemany(
            "INSERT INTO ev.delivered VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET "
            "on_time = on_time + excluded.on_time, backfilled = backfilled + excluded.backfilled",
            ((d, up, tag_of(pid), 0 if back else n, n if back else 0)
             for (d, up, pid, back), n in self._delivered.items()))
        db.execute("INSERT OR REPLACE INTO ev.runs VALUES (?, ?)", (self.opened, now_ms()))
        self._stored, self._delivered = {}, Counter()

    # --- conditions, from the checks' events -----------------------------------------------
    def conditions(self, db: sqlite3.Connection, events: Iterable[tuple[int, dict]]) -> None:
        """Open, update or end the interval each interlock and detector event concerns."""
        for ts, body in events:
            spec = INTERVAL_EVENTS.get(body.get("kind", ""))
            if spec is None or "start" not in body:
                continue
            kind, opens, ends = spec
            ev_kind, state = body["kind"], body.get("state")
            if state not in opens and state not in ends:
                continue
            if kind == "interlock":
                subject, what = body.get("interlock"), INTERLOCK_STATE[ev_kind]
            else:
                subject, what = body.get("tag"), body.get("cause", "alarm") if ev_kind == "detector_fault" else "alarm"
            if not subject:
                continue
            key = (kind, subject, what, ms_of(body["start"]))
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
        for table in ("days", "delivered", "evicted"):
            db.execute(f"DELETE FROM ev.{table} WHERE day < ?", (day,))
        db.execute("DELETE FROM ev.runs WHERE last < ?", (cutoff,))


def merge_detail(detail: dict, body: dict) -> dict:
    """What an interval keeps of its events: the bypass tag and whether it went overdue, the
    trip's kind (tripped or spurious), a gas alarm's highest level and value."""
    kind, state = body["kind"], body["state"]
    if kind == "interlock_bypass":
        detail.setdefault("tag", body.get("tag"))
        if "bypass_max_s" in body:
            detail["bypass_max_s"] = body["bypass_max_s"]
        if state == "overdue":
            detail["overdue"] = True
    elif kind == "interlock_trip" and state in ("tripped", "spurious"):
        detail["trip"] = state
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


def read_delivered(db: sqlite3.Connection, first: int, last: int) -> list[tuple[int, str, str, int, int]]:
    return db.execute("SELECT * FROM ev.delivered WHERE day BETWEEN ? AND ?", (first, last)).fetchall()


def read_evicted(db: sqlite3.Connection, first: int, last: int) -> list[tuple[int, str, int]]:
    return db.execute("SELECT * FROM ev.evicted WHERE day BETWEEN ? AND ?", (first, last)).fetchall()
