"""The checks inside `hazgate run`: fed by every poll, their events stored and published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.model import Point, Reading
from agent.pipeline.checks.checker import HELD_MAX, Checker
from agent.pipeline.checks.rules import Rules
from agent.pipeline.declarations import Ledger, in_force

log = logging.getLogger("hazgate.checks")

STORE_WAIT = 10.0  # seconds to wait for the store before checking without the saved state
STORE_RETRY = 1.0
LEDGER_LOOK = 0.2  # seconds between looks at the declarations file (one stat)


class CheckStage:
    """The checks inside `hazgate run`: `feed` (from the poll sink, never waits) and a writer task
    that stores events with the active state in one transaction (an urgent store call), then
    tells the uplink (`on_events`) to publish them.

    It also reads the declarations file when it changes: new declarations go to the checker,
    and `declared` (the set handed in, which the normalizers read) is kept to the stops in force."""

    def __init__(self, rules: Rules, points: list[Point], store: Any, on_events: Callable[[], None],
                 data_dir: Path | None = None, declared: set[str] | None = None,
                 on_declared: Callable[[], None] | None = None):
        self.rules, self.points, self.store, self.on_events = rules, points, store, on_events
        self.checker: Checker | None = None  # built once the saved active state is loaded
        self._ready = asyncio.Event()
        self.errors = 0
        self.data_dir = data_dir
        self.declared = declared if declared is not None else set()
        self.on_declared = on_declared  # told when the stops in force change
        self._ledger: Ledger | None = None
        self._ledger_stamp = 0
        self._ledger_next = 0.0
        self._ledger_failed = False
        self._announcing: list[int] = []  # declaration ids whose events wait to be stored
        if data_dir is not None:  # the stops in force apply from the first poll, before the checks start
            with contextlib.suppress(sqlite3.Error, OSError):  # told by the first look
                self._ledger = Ledger(data_dir)
                self.declared.update(self._ledger.active())

    def feed(self, every: list[Reading]) -> None:
        c = self.checker
        if c is None:
            return
        if self.data_dir is not None and time.monotonic() >= self._ledger_next:
            self._look(c)
        try:
            changed = c.process(every)
        except Exception:  # a bug in a check must never cost the poll its readings
            self.errors += 1
            if self.errors <= 10:
                log.exception("check failed", extra={"fields": {"errors": self.errors}})
            changed = c.pending
        if changed:
            self._ready.set()

    async def _load(self) -> list:
        try:
            async with asyncio.timeout(STORE_WAIT):
                await self.store.ready.wait()
            return await self.store.call("active")
        except (TimeoutError, sqlite3.Error) as exc:
            log.error("checks start without the saved active alarms and bypasses: the store is not available",
                      extra={"fields": {"error": str(exc) or type(exc).__name__}})
            return []

    def _look(self, c: Checker) -> None:
        """The declarations file, read again when it changed since the last look."""
        self._ledger_next = time.monotonic() + LEDGER_LOOK
        try:
            if self._ledger is None:
                self._ledger = Ledger(self.data_dir)  # type: ignore[arg-type]
            stamp = self._ledger.changed_at()
            if stamp == self._ledger_stamp:
                return
            rows = self._ledger.rows()
        except (sqlite3.Error, OSError) as exc:
            if not self._ledger_failed:
                log.error("cannot read the declarations file; the checks go on without new declarations",
                          extra={"fields": {"data_dir": str(self.data_dir), "error": str(exc)}})
            self._ledger_failed = True
            return
        self._ledger_failed = False
        self._ledger_stamp = stamp
        active = in_force(rows)
        self._announcing += c.declare(rows, active)
        if self.declared != active.keys():
            self.declared.clear()
            self.declared.update(active)
            if self.on_declared is not None:
                self.on_declared()
        if c.pending:
            self._ready.set()

    def _announced(self, ids: list[int]) -> None:
        if not ids or self._ledger is None:
            return
        try:
            self._ledger.mark_announced(ids)
        except sqlite3.Error as exc:  # announced again after a restart, under the same event ids
            log.warning("cannot mark declarations announced", extra={"fields": {"error": str(exc)}})

    async def run(self) -> None:
        self.checker = Checker(self.rules, self.points, await self._load())
        c = self.checker
        if self.data_dir is not None:
            self._look(c)
        log.info("checks running", extra={"fields": {
            "alarms": len(c.alarms), "detectors": len(c.detectors), "interlocks": len(c.interlocks)}})
        if c.pending:
            self._ready.set()
        failed = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch = c.take()
            ids, self._announcing = self._announcing, []
            try:
                await self.store.call_urgent("record_checks", *batch)
            except sqlite3.Error as exc:
                c.put_back(*batch)
                self._announcing = ids + self._announcing
                if not failed:
                    log.error("store refuses check events; holding them in memory",
                              extra={"fields": {"error": str(exc), "hold_max": HELD_MAX}})
                failed = True
                await asyncio.sleep(STORE_RETRY)
                self._ready.set()
                continue
            failed = False
            self._announced(ids)
            if batch[0]:
                self.on_events()

    async def flush(self) -> None:
        """On stop: what the last polls raised goes to disk (published on the next start)."""
        c = self.checker
        if c is not None and c.pending:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("record_checks", *c.take())
                self._announced(self._announcing)
        if self._ledger is not None:
            self._ledger.close()
