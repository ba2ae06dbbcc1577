"""The watchdog's view of the store thread (issue 14 item 6, issue 19 item 7).

A store call that keeps the store thread busy longer than the watchdog allows (a big eviction,
a slow SD card) must not withhold the pings while the thread makes progress; a store thread
that makes no progress at all (hung disk I/O) must. `Progress.check()` is what the service
pings on (agent/service/run.py sends WATCHDOG=1 only while it returns nothing).

Earlier, Progress looked the store thread up by a name it no longer had, never found it, and
reported every long store call as hung.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from agent.north.base import UplinkStats
from agent.pipeline.store_thread import AsyncStore
from agent.service.health import Progress

STALE = 0.4  # the watchdog's limit in these tests (seconds)
HOLD = 1.6  # how long the store call takes: four times the limit


class StandIn:
    """Just what Progress asks of the agent: its devices, tasks, store and uplink."""

    def __init__(self, store: AsyncStore):
        self.store = store
        self.devices: list = []
        self.tasks: list[asyncio.Task] = []
        self.restarts: dict = {}  # no core task waits for a restart
        self.cfg = SimpleNamespace(devices=[])
        self.uplinks = [SimpleNamespace(name="mqtt", stats=UplinkStats(), progress_allowance=lambda: 0.0)]


def busy(seconds: float) -> int:
    """CPU work on the store thread (what a long eviction looks like)."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    return n


def hung(seconds: float) -> None:
    """No CPU and no I/O on the store thread (what a hung disk looks like)."""
    time.sleep(seconds)


async def watch(store: AsyncStore, job, seconds: float) -> list[list[str]]:  # noqa: ANN001
    """Run `job` on the store thread and collect what Progress finds stuck meanwhile."""
    agent = StandIn(store)
    progress = Progress(agent, STALE)
    progress.check()  # the probe goes in behind nothing
    await asyncio.sleep(0.05)
    running = asyncio.ensure_future(store._run_raw(False, job, seconds))  # a long store call
    found: list[list[str]] = []
    for _ in range(int(seconds / 0.1)):
        agent.uplinks[0].stats.beat = time.monotonic()  # the uplink loop goes round meanwhile
        found.append(progress.check())
        await asyncio.sleep(0.1)
    await asyncio.wait_for(running, 10)
    return found


async def test_a_busy_store_thread_keeps_the_pings(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path)
    await store.open()
    try:
        assert store.thread_id is not None
        found = await watch(store, busy, HOLD)
    finally:
        await store.close()
    assert not any(found), f"a busy store was reported stuck: {[f for f in found if f][:2]}"


async def test_a_hung_store_thread_stops_the_pings(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path)
    await store.open()
    try:
        found = await watch(store, hung, HOLD)
    finally:
        await store.close()
    stuck = [p for f in found for p in f if p.startswith("store:")]
    assert stuck, "a store thread that made no progress was not reported"
    assert "made no progress" in stuck[-1], stuck[-1]
