"""Minute aggregates an uplink keeps for its platform's history requests (HJ 212 minute and
hour data, CN 2051 / 2061): per point and minute, the count of usable values (good or
uncertain numbers, bools as 1 / 0), their sum, least and greatest, and the count of bad
readings. A snapshot uplink's tail adds every reading it folds, each once, for the tags its
drain request names (`DrainRequest.history`); `query` sums the minutes into the platform's
intervals. Rows older than the uplink's history bound are pruned at most once an hour."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable

MINUTE = 60_000
PRUNE_EVERY = 3_600_000  # ms between prunes of one uplink's old minutes
BAD = 2  # quality code as stored

SCHEMA = """
CREATE TABLE IF NOT EXISTS minute_stats(
  uplink TEXT NOT NULL, pid INTEGER NOT NULL, minute INTEGER NOT NULL, n INTEGER NOT NULL,
  total REAL, low REAL, high REAL, bad INTEGER NOT NULL, PRIMARY KEY(uplink, pid, minute)) WITHOUT ROWID;
"""

Bucket = tuple[int, int, float | None, float | None, float | None, int]  # n, total, low, high, bad after the key


def add(db: sqlite3.Connection, uplink: str, rows: Iterable[tuple], kept: Callable[[int], bool]) -> None:
    """Fold readings (ts_ms, pid, value, quality code, reason) of the kept points into their minutes."""
    acc: dict[tuple[int, int], list] = {}
    for ts, pid, value, q, _reason in rows:
        if not kept(pid):
            continue
        cell = acc.setdefault((pid, ts // MINUTE * MINUTE), [0, 0.0, None, None, 0])
        usable = q != BAD and isinstance(value, int | float) and math.isfinite(value)
        if not usable:
            cell[4] += 1
            continue
        v = float(value)
        cell[0] += 1
        cell[1] += v
        cell[2] = v if cell[2] is None else min(cell[2], v)
        cell[3] = v if cell[3] is None else max(cell[3], v)
    db.executemany(
        "INSERT INTO minute_stats VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(uplink, pid, minute) DO UPDATE SET "
        "n = n + excluded.n, total = COALESCE(total, 0) + COALESCE(excluded.total, 0), "
        "low = COALESCE(MIN(low, excluded.low), low, excluded.low), "
        "high = COALESCE(MAX(high, excluded.high), high, excluded.high), bad = bad + excluded.bad",
        ((uplink, pid, minute, n, total if n else None, low, high, bad)
         for (pid, minute), (n, total, low, high, bad) in acc.items()))


def prune(db: sqlite3.Connection, uplink: str, before_ms: int) -> None:
    db.execute("DELETE FROM minute_stats WHERE uplink=? AND minute < ?", (uplink, before_ms))


def query(db: sqlite3.Connection, uplink: str, pids: Iterable[int], start_ms: int, end_ms: int,
          step_ms: int) -> list[tuple[int, int, int, float | None, float | None, float | None, int]]:
    """(interval start, pid, n, total, low, high, bad) per point and `step_ms` interval (a
    multiple of a minute, aligned to the epoch) with start_ms <= start <= end_ms, in order."""
    wanted = list(pids)
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    first = -(-start_ms // step_ms) * step_ms
    return db.execute(
        f"SELECT minute / ? * ? AS at, pid, SUM(n), SUM(total), MIN(low), MAX(high), SUM(bad) FROM minute_stats "
        f"WHERE uplink = ? AND pid IN ({marks}) AND minute >= ? AND minute < ? GROUP BY at, pid ORDER BY at, pid",
        (step_ms, step_ms, uplink, *wanted, first, end_ms // step_ms * step_ms + step_ms)).fetchall()
