"""The checks inside `hazgate run`: fed by every poll, their events stored and published."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from agent.model import Point, Reading
from agent.pipeline.checks.checker import HELD_MAX, Checker
from agent.pipeline.checks.rules import Rules

log = logging.getLogger("hazgate.checks")

STORE_WAIT = 10.0  # seconds to wait for the store before checking without the saved state
STORE_RETRY = 1.0


class CheckStage:
    """The checks inside `hazgate run`: `feed` (from the poll sink, never waits) and a writer task
    that stores events with the active state in one transaction (an urgent store call), then
    tells the uplink (`on_events`) to publish them."""

    def __init__(self, rules: Rules, points: list[Point], store: Any, on_events: Callable[[], None]):
        self.rules, self.points, self.store, self.on_events = rules, points, store, on_events
        self.checker: Checker | None = None  # built once the saved active state is loaded
        self._ready = asyncio.Event()
        self.errors = 0

    def feed(self, every: list[Reading]) -> None:
        c = self.checker
        if c is None:
            return
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
            await asyncio.wait_for(self.store.ready.wait(), STORE_WAIT)
            return await self.store.call("active")
        except (TimeoutError, sqlite3.Error) as exc:
            log.error("checks start without the saved active alarms and bypasses: the store is not available",
                      extra={"fields": {"error": str(exc) or type(exc).__name__}})
            return []

    async def run(self) -> None:
        self.checker = Checker(self.rules, self.points, await self._load())
        c = self.checker
        log.info("checks running", extra={"fields": {
            "alarms": len(c.alarms), "detectors": len(c.detectors), "interlocks": len(c.interlocks)}})
        if c.pending:
            self._ready.set()
        failed = False
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch = c.take()
            try:
                await self.store.call_urgent("record_checks", *batch)
            except sqlite3.Error as exc:
                c.put_back(*batch)
                if not failed:
                    log.error("store refuses check events; holding them in memory",
                              extra={"fields": {"error": str(exc), "hold_max": HELD_MAX}})
                failed = True
                await asyncio.sleep(STORE_RETRY)
                self._ready.set()
                continue
            failed = False
            if batch[0]:
                self.on_events()

    async def flush(self) -> None:
        """On stop: what the last polls raised goes to disk (published on the next start)."""
        c = self.checker
        if c is not None and c.pending:
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("record_checks", *c.take())
