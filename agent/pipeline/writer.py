"""The store's intake: what the polls report is queued here (never waiting for the disk) and
written in group commits on a short deadline: a commit starts once the oldest reading waiting
has waited COMMIT_DEADLINE, or at once when WRITE_CHUNK readings wait, so polls that end close
together share one commit (one fsync) and no reading waits long for its own. The commits go
before the uplinks' store calls (AsyncStore.call_intake). While the store refuses writes (disk
full, read-only) readings wait in memory, up to HELD_MAX; an uplink may send them straight from
here (`take`/`give_back`).

A power cut or SIGKILL loses what is not yet committed: at most the poll in progress and what
the last COMMIT_DEADLINE (plus the commit itself) handed over (docs/operations.md section 4,
"The durability window")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

from agent.common.timefmt import rfc3339
from agent.model import QUALITY_CODE, QUALITY_NAME, Point, Reading
from agent.pipeline.store_thread import AsyncStore

log = logging.getLogger("hazgate.agent")

WRITE_CHUNK = 5_000  # rows per commit (about 15 ms of the store thread here)
COMMIT_DEADLINE = 0.025  # seconds a handed-over reading waits at most for its commit to start
HELD_MAX = 500_000  # readings kept in memory while the store refuses writes (disk full, read-only)
STORE_RETRY = 5.0

# (kind, severity, state, fields) -> stored ahead of waiting readings and published
GatewayEvent = Callable[..., Awaitable[None]]


class Writer:
    def __init__(self, store: AsyncStore, points: list[Point], gateway_event: GatewayEvent):
        self.store = store
        self.gateway_event = gateway_event
        self._pending: list[tuple] = []  # polled rows not yet committed (bounded by HELD_MAX)
        self._written = asyncio.Event()
        self._full = asyncio.Event()  # WRITE_CHUNK readings wait: commit now
        self._since = 0.0  # monotonic time the oldest reading waiting was handed over
        self._pids: dict[str, int] = {}
        self._points = {p.tag: p for p in points}  # unit and type of a tag's rows (the points are kept anyway)
        self.held_dropped = 0
        self._dropped = [0, 0, 0]  # readings dropped from memory not yet reported: count, first ts, last ts
        self.store_error: str | None = None

    @property
    def held(self) -> int:
        """Readings polled but not yet in the store."""
        return len(self._pending)

    async def register(self, points: list[Point]) -> None:
        """Point ids for these points (new ones registered); raises sqlite3.Error, changing nothing.
        Removed tags stay known: their last readings may still be queued."""
        pids = await self.store.call("pids", [(p.tag, p.unit, p.type) for p in points])
        known = self._points
        if any((q := known.get(p.tag)) is not None and (q.unit, q.type) != (p.unit, p.type) for p in points):
            # a tag changed unit or type: what was polled under the old table is written first
            for _ in range(100):
                if not self._pending:
                    break
                await asyncio.sleep(0.02)
        self._pids = {**self._pids, **pids}
        self._points = {**self._points, **{p.tag: p for p in points}}

    def add(self, report: list[Reading]) -> None:
        """Queue a poll's readings; never waits for the disk."""
        if not self._pending:
            self._since = time.monotonic()
        code = QUALITY_CODE
        self._pending += [(r.ts_ms, r.point.tag, r.value, code[r.quality], r.reason) for r in report]
        if len(self._pending) >= WRITE_CHUNK:
            self._full.set()
        overflow = len(self._pending) - HELD_MAX
        if overflow > 0:
            dropped = self._pending[:overflow]
            del self._pending[:overflow]
            self._note_dropped(dropped)
        self._written.set()

    def take(self, limit: int) -> list[tuple]:
        """For an uplink while the store refuses writes: the oldest held readings, in the
        store's row format (ts, tag, unit, type, value, quality, reason)."""
        rows, self._pending[:limit] = self._pending[:limit], []
        known = self._points
        return [(ts, tag, known[tag].unit, known[tag].type, v, QUALITY_NAME[q], r) for ts, tag, v, q, r in rows]

    def give_back(self, rows: list[tuple]) -> None:
        self._pending[0:0] = [(ts, tag, v, QUALITY_CODE[q], r) for ts, tag, _u, _t, v, q, r in rows]

    def _note_dropped(self, rows: list[tuple]) -> None:
        first = self._dropped[1] if self._dropped[0] else rows[0][0]
        self._dropped = [self._dropped[0] + len(rows), first, rows[-1][0]]
        self.held_dropped += len(rows)
        if self._dropped[0] == len(rows):  # first drop of this episode
            log.error("store unavailable and memory bound reached: dropping the oldest held readings",
                      extra={"fields": {"hold_max": HELD_MAX}})

    async def _gather(self) -> None:
        """Until the oldest reading waiting has waited COMMIT_DEADLINE or a chunk's worth waits."""
        wait = self._since + COMMIT_DEADLINE - time.monotonic()
        if wait > 0 and len(self._pending) < WRITE_CHUNK:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._full.wait()

    async def run(self) -> None:
        """Group commit: what was polled up to the deadline goes in one transaction, at most
        WRITE_CHUNK rows, so one commit never keeps the store thread (and events) waiting long."""
        while True:
            await self._written.wait()
            await self._gather()
            self._written.clear()  # after the gathering: what came meanwhile goes in this commit
            rows, self._pending = self._pending[:WRITE_CHUNK], self._pending[WRITE_CHUNK:]
            if self._pending:
                self._written.set()  # the rest in the next turn, at once: it has waited too
            if not rows:  # an uplink took them (store refusing writes)
                continue
            try:
                # shielded: a stop that cancels the writer while this waits its turn does not
                # lose the rows; the store thread still writes them, before flush() writes the rest
                await asyncio.shield(self.store.call_intake("add_readings", rows, self._pids))
            except sqlite3.Error as exc:
                self._pending[0:0] = rows  # keep order; retried on the next poll or in a second
                self._since = time.monotonic()
                if self.store_error is None:
                    log.error("store refuses writes; holding readings in memory", extra={"fields": {
                        "error": str(exc), "hold_max": HELD_MAX}})
                self.store_error = str(exc)
                await asyncio.sleep(STORE_RETRY)
                self._written.set()
                continue
            if self.store_error:
                log.warning("store writable again", extra={"fields": {"flushed": len(rows)}})
                self.store_error = None
            if self._dropped[0]:  # retried after the next write when the store refuses it
                with contextlib.suppress(sqlite3.Error):
                    await self._report_dropped()

    async def _report_dropped(self) -> None:
        """Loss is never silent: readings dropped from memory become an event on the wire."""
        count, first, last = self._dropped
        await self.gateway_event(
            "readings_dropped", "alarm", "dropped", count=count, from_ts=rfc3339(first),
            to_ts=rfc3339(last), reason=f"store unavailable and more than {HELD_MAX} readings waiting in memory")
        self._dropped = [0, 0, 0]

    async def flush(self) -> None:
        """On stop: the last polls go to disk before the store closes."""
        if self._pending:
            try:
                await self.store.call_intake("add_readings", self._pending, self._pids)
            except (sqlite3.Error, KeyError):
                return
            self._pending = []
