"""`hazgate run`: wires devices, store and uplink together and runs until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3

from agent import __version__
from agent.config import DeviceConfig, GatewayConfig
from agent.messages import now_ms
from agent.normalize import QUALITY_CODE, Reading
from agent.scheduler import DeviceTask
from agent.store import AsyncStore
from agent.uplink import Uplink
from drivers.base import make_driver

log = logging.getLogger("hazgate.agent")
STOP_TIMEOUT = 5.0
MAINTENANCE_INTERVAL = 5.0
HELD_MAX = 500_000  # readings kept in memory while the store refuses writes (disk full, read-only)


class Agent:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.store = AsyncStore(cfg.data_dir)
        self.started_ms = now_ms()
        self.uplink = Uplink(cfg, self.store, self.started_ms, on_state=self._uplink_state)
        self.devices: list[DeviceTask] = []
        self._pids: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._pending: list[tuple] = []  # polled rows not yet committed (bounded by HELD_MAX)
        self._written = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self.held_dropped = 0
        self.store_error: str | None = None

    def _uplink_state(self, state: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.store.call("set_state", {"uplink_state": state, "uplink_changed": now_ms()})
        )
        self._background.add(task)  # keep a reference until done
        task.add_done_callback(self._background.discard)

    async def _on_link(self, name: str, link: str, reason: str | None, last_good: int | None) -> None:
        await self.store.call("set_device", name, link, reason, last_good)

    async def _sink(self, device: DeviceConfig, every: list[Reading], report: list[Reading]) -> None:
        """Queue a poll's readings for the writer; never waits for the disk."""
        if not report:
            return
        pids = self._pids
        self._pending.extend((r.ts_ms, pids[r.point.tag], r.value, QUALITY_CODE[r.quality], r.reason) for r in report)
        overflow = len(self._pending) - HELD_MAX
        if overflow > 0:
            del self._pending[:overflow]
            self.held_dropped += overflow
            log.error("store unavailable: dropped oldest held readings", extra={"fields": {
                "dropped": overflow, "dropped_total": self.held_dropped}})
        self._written.set()

    async def _writer(self) -> None:
        """Group commit: everything polled since the last commit goes in one transaction."""
        while True:
            await self._written.wait()
            self._written.clear()
            rows, self._pending = self._pending, []
            try:
                await self.store.call("add_readings", rows)
            except sqlite3.Error as exc:
                self._pending[0:0] = rows  # keep order; retried on the next poll or in a second
                if self.store_error is None:
                    log.error("store refuses writes; holding readings in memory", extra={"fields": {
                        "db": str(self.cfg.data_dir), "error": str(exc), "hold_max": HELD_MAX}})
                self.store_error = str(exc)
                await asyncio.sleep(1.0)
                self._written.set()
                continue
            if self.store_error:
                log.warning("store writable again", extra={"fields": {"flushed": len(rows)}})
                self.store_error = None

    async def _maintain(self) -> None:
        """Enforce the store's size and age bounds; report every eviction."""
        limits = self.cfg.store
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            try:
                await self.store.call("heartbeat", [
                    (d.device.name, d.link, d.reason, d.last_good_ms) for d in self.devices])
                events = await self.store.call("enforce_limits", limits.max_bytes, limits.max_age)
            except sqlite3.Error as exc:
                log.warning("store maintenance failed", extra={"fields": {"error": str(exc)}})
                continue
            for ev in events:
                log.warning("buffer eviction", extra={"fields": {
                    "count": ev["count"], "from": ev["from_ts"], "to": ev["to_ts"], "reason": ev["reason"]}})
            if events:
                self.uplink.wake.set()

    async def start(self) -> None:
        await self.store.open()
        for p in self.cfg.all_points():
            self._pids[p.tag] = await self.store.call("pid", p.tag, p.unit, p.type)
        await self.store.call("set_state", {"started_at": self.started_ms, "version": __version__})
        for dev in self.cfg.devices:
            task = DeviceTask(dev, make_driver(dev), self._sink, self._on_link)
            self.devices.append(task)
            self._tasks.append(asyncio.create_task(task.run(), name=f"device:{dev.name}"))
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        self._tasks.append(asyncio.create_task(self._maintain(), name="maintenance"))
        self._tasks.append(asyncio.create_task(self._writer(), name="writer"))
        log.info("agent started", extra={"fields": {
            "gateway": self.cfg.gateway_id, "devices": len(self.devices),
            "points": len(self._pids), "version": __version__}})

    async def stop(self) -> None:
        for t in self._tasks:
            if t.get_name().startswith("device:"):
                t.cancel()
        await asyncio.gather(*(t for t in self._tasks if t.get_name().startswith("device:")), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.uplink.stop(), STOP_TIMEOUT)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        for d in self.devices:
            await d.driver.close()
        if self._pending:  # the last polls: on disk before we go
            with contextlib.suppress(sqlite3.Error):
                await self.store.call("add_readings", self._pending)
        await self.store.close()
        log.info("agent stopped")


async def run_agent(cfg: GatewayConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
    return 0
