"""The store's own thread: every store call runs there, in order, so a commit never stalls
the event loop; urgent calls (events, and the uplink step that publishes them) go first, the
intake's commits of readings next, then everything else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

from agent.pipeline.store import Store

T = TypeVar("T")
URGENT, INTAKE, ORDINARY, LAST = 0, 1, 2, 3  # the order calls waiting together run in


class StoreUnavailable(sqlite3.OperationalError):
    """The store is not open (yet): the data dir is missing, read-only or the file unusable."""


class AsyncStore:
    """Runs every store call on one dedicated thread, so a commit never stalls the event loop.

    Calls run in the order they were made, except that urgent ones (events, and the uplink
    step that publishes them) go before every other call still waiting: an alarm never
    queues behind a batch of readings; and the intake's commits of readings go before the
    ordinary calls (the uplinks' turns, status figures): a reading waits for its commit behind
    at most the one call running, however many uplinks drain a back-fill.
    """

    def __init__(self, data_dir: Path, timezone: tzinfo | None = None):
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name="store", daemon=True)
        self._thread.start()
        self._store: Store | None = None
        self._data_dir = data_dir
        self._timezone = timezone  # the evidence record's days are local days
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

    async def open(self, uplinks: list[tuple[str, bool]] | None = None) -> None:
        """Open the store with the configured uplinks, (name, carries events), before anyone
        may use it; raises sqlite3.Error or OSError when it cannot be opened."""
        store = await self._run_raw(ORDINARY, Store, self._data_dir, False, self._timezone)
        try:
            if uplinks is not None:
                await self._run_raw(ORDINARY, store.set_uplinks, uplinks)
            self.opened_upto = await self._run_raw(ORDINARY, store.last_reading_id)
        except BaseException:
            await self._run_raw(ORDINARY, store.close)
            raise
        self._store = store
        self.ready.set()

    async def close_quietly(self) -> None:
        """Forget a half-opened store without giving up the worker thread."""
        if self._store is not None:
            store, self._store = self._store, None
            self.ready.clear()
            with contextlib.suppress(sqlite3.Error):
                await self._run_raw(ORDINARY, store.close)

    async def _run_raw(self, rank: int, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread.is_alive():
            raise StoreUnavailable(f"store in {self._data_dir} is closed")
        fut: Future = Future()
        self._jobs.put((rank, next(self._order), (fut, fn, args)))
        return await asyncio.wrap_future(fut)

    async def call(self, name: str, *args: Any) -> Any:
        return await self._call(ORDINARY, name, args)

    async def call_urgent(self, name: str, *args: Any) -> Any:
        """A call that goes before every other one still waiting."""
        return await self._call(URGENT, name, args)

    async def call_intake(self, name: str, *args: Any) -> Any:
        """A commit of polled readings: after the urgent calls waiting, before the ordinary ones."""
        return await self._call(INTAKE, name, args)

    async def _call(self, rank: int, name: str, args: tuple) -> Any:
        if self._store is None:
            raise StoreUnavailable(f"store in {self._data_dir} is not open")
        return await self._run_raw(rank, getattr(self._store, name), *args)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            self.ready.clear()
            await self._run_raw(ORDINARY, store.close)
        self._jobs.put((LAST, next(self._order), None))  # after everything still waiting
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
