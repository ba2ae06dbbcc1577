"""The assembly: builds every part of `hazgate run` from its typed spec, wires them through
constructors, and runs them until told to stop (agent/service/ runs it as a service)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from agent import __version__
from agent.common.clock import ClockWatch
from agent.common.memory import trim_malloc
from agent.common.timefmt import now_ms, rfc3339
from agent.config.gateway import GatewayConfig
from agent.model import Reading
from agent.north.adapters import make_uplink
from agent.north.base import UplinkContext
from agent.pipeline.checks.stage import CheckStage
from agent.pipeline.metered import MeteredDriver
from agent.pipeline.scheduler import DeviceTask, phases
from agent.pipeline.store_thread import AsyncStore
from agent.pipeline.writer import STORE_RETRY, Writer
from drivers.base import DeviceSpec
from drivers.registry import make_driver

log = logging.getLogger("hazgate.agent")
STOP_TIMEOUT = 5.0
MAINTENANCE_INTERVAL = 5.0
UNKNOWN_AGE_S = 1e9
RESTART_MIN, RESTART_MAX = 1.0, 60.0  # a core task that ended starts again after this, doubling
RESTART_RESET = 60.0  # a run this long before it ended counts as healthy: the back-off starts over


@dataclass
class TaskRestarts:
    """One core task that ended, as its supervisor tells it: how often, why, and (while it
    waits to be started again) when it runs again."""

    count: int = 0
    error: str = ""
    ended_at: float = 0.0  # wall clock of the last end
    restart_at: float | None = None  # monotonic; None while the task runs

    def ended(self, error: str, delay: float) -> None:
        self.count += 1
        self.error, self.ended_at, self.restart_at = error, time.time(), time.monotonic() + delay

    def restarted(self) -> None:
        self.restart_at = None


class Agent:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self._all_points = cfg.all_points()  # one list per config: uplinks index it once
        self.store = AsyncStore(cfg.data_dir, cfg.timezone)
        self.started_ms = now_ms()
        self.clock = ClockWatch(cfg.clock, self._clock_stepped, self._clock_sync_changed)
        self.writer = Writer(self.store, cfg.all_points(), self._gateway_event_now)
        self.declared: set[str] = set()  # tags and interlocks under a declared stop: the checks keep it
        self._devices = cfg.device_of()
        ctx = UplinkContext(
            gateway=cfg.gateway_id, enterprise=cfg.enterprise_code, version=__version__,
            started_ms=self.started_ms, store=self.store, clock=self.clock, points=self._points,
            held=self.writer, on_state=self._uplink_state, events_stored=self.events_stored,
            timezone=cfg.timezone, uplinks=self._uplinks_summary, declared=self.declared,
            devices=lambda: self._devices)
        self.uplinks = [make_uplink(spec, ctx) for spec in cfg.uplinks]
        self.checks = self._check_stage(cfg)  # alarms, gas, interlocks: events first
        self.devices: list[DeviceTask] = []
        self.tasks: list[asyncio.Task] = []  # every core task, each under _supervise (the service watches them)
        self.restarts: dict[str, TaskRestarts] = {}  # by task name: core tasks that ended and were restarted
        self._background: set[asyncio.Task] = set()
        self.opened = asyncio.Event()  # the store is open and the points registered (READY=1)
        self._daily_done: date | None = None  # the local day whose inservice_daily was asked for

    def _points(self) -> list:
        """The point set now: the same list until a reload changes it (uplink bodies rebuild
        their index of it only then)."""
        return self._all_points

    def _check_stage(self, cfg: GatewayConfig) -> CheckStage:
        return CheckStage(cfg.rules, cfg.all_points(), self.store, self.events_stored, cfg.data_dir, self.declared,
                          self._declared_changed)

    def _declared_changed(self) -> None:
        """The stops in force changed: registrations say `in_service` anew."""
        for u in self.uplinks:
            self._soon(u.points_changed())

    def events_stored(self) -> None:
        """Events are in the store: every uplink publishes them now."""
        for u in self.uplinks:
            u.events_stored()

    @property
    def store_error(self) -> str | None:
        return self.writer.store_error

    def _uplinks_summary(self) -> dict[str, dict]:
        return {u.name: u.stats.summary() for u in self.uplinks}

    def _uplink_state(self, name: str, state: str, reason: str) -> None:
        self._background_call("set_state", {f"uplink:{name}:state": state, f"uplink:{name}:changed": now_ms(),
                                            f"uplink:{name}:reason": reason})
        for u in self.uplinks:  # the retained status of every MQTT uplink tells every uplink's state
            u.status_changed()

    def _background_call(self, name: str, *args: object, urgent: bool = False,
                         then: Callable[[], None] | None = None) -> None:
        """A store write nobody waits for (`then` runs once it is done); a store that is down
        just misses it."""
        async def call() -> None:
            with contextlib.suppress(sqlite3.Error):
                await (self.store.call_urgent if urgent else self.store.call)(name, *args)
                if then is not None:
                    then()

        self._soon(call())

    def _soon(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the caller, nobody waiting for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # keep a reference until done
        task.add_done_callback(self._background.discard)

    async def _on_link(self, name: str, link: str, reason: str | None, last_good: int | None) -> None:
        self._background_call("set_device", name, link, reason, last_good)

    async def _sink(self, device: DeviceSpec, every: list[Reading], report: list[Reading]) -> None:
        """A poll's readings: to the checks, and what is reported to the writer; never waits."""
        self.checks.feed(every)
        if report:
            self.writer.add(report)

    @staticmethod
    def _event(kind: str, severity: str, state: str, **fields: object) -> tuple[int, dict]:
        """A gateway-level event (no tag or interlock: `source` is the gateway)."""
        ts = now_ms()
        return ts, {"id": f"{kind}-{ts}", "kind": kind, "severity": severity, "state": state,
                    "ts": rfc3339(ts), "source": "gateway", **fields}

    async def _gateway_event_now(self, kind: str, severity: str, state: str, **fields: object) -> None:
        """Stored ahead of waiting readings, then published; raises sqlite3.Error."""
        await self.store.call_urgent("add_event", *self._event(kind, severity, state, **fields))
        self.events_stored()

    def _gateway_event(self, kind: str, severity: str, state: str, **fields: object) -> None:
        """Stored ahead of waiting readings, then published; a store that is down misses it."""
        self._background_call("add_event", *self._event(kind, severity, state, **fields),
                              urgent=True, then=self.events_stored)

    def _clock_stepped(self, step: float) -> None:
        self._gateway_event("clock_step", "warning", "stepped", step_s=round(step, 3),
                            direction="forward" if step > 0 else "backward")

    def _clock_sync_changed(self, synchronized: bool) -> None:
        self._gateway_event("clock_sync", "info" if synchronized else "warning",
                            "synchronized" if synchronized else "unsynchronized",
                            clock_source=self.cfg.clock.sync_source)
        self._background_call("set_state", {"clock_synchronized": int(synchronized)})
        for u in self.uplinks:
            u.status_changed()

    async def _open_store(self) -> None:
        """Open the store, retrying until it works; polling goes on meanwhile."""
        failed = False
        while True:
            try:
                await self.store.open([(u.name, u.carries_events) for u in self.uplinks])
                await self.writer.register(self.cfg.all_points())
                await self.store.call("set_state", {"started_at": self.started_ms, "version": __version__,
                                                    "clock_synchronized": int(self.clock.synchronized),
                                                    "clock_source": self.cfg.clock.sync_source})
            except (sqlite3.Error, OSError) as exc:
                if not failed:
                    log.error("cannot open the store; polling on, holding readings in memory, retrying every "
                              f"{STORE_RETRY:g}s; check that data_dir exists, is writable by the agent and "
                              "the disk has space", extra={"fields": {"data_dir": str(self.cfg.data_dir),
                                                                     "error": str(exc)}})
                failed = True
                await self.store.close_quietly()
                await asyncio.sleep(STORE_RETRY)
                continue
            if failed:
                log.warning("store open", extra={"fields": {"data_dir": str(self.cfg.data_dir)}})
            self.opened.set()
            return

    async def _intake(self) -> None:
        if not self.opened.is_set():  # a restarted writer finds the store open
            await self._open_store()
        await self.writer.run()

    async def _maintain(self) -> None:
        """Enforce the store's size and age bounds; report every eviction."""
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            trim_malloc()  # RSS at 10 000 points: 64 -> 57 MB
            limits = self.cfg.store  # a reload may change the bounds
            try:
                self.clock.check()  # also when no device polls
                await self.store.call("heartbeat", [
                    (d.device.name, d.link, d.reason, d.last_good_ms) for d in self.devices])
                # an unsynchronized clock cannot tell a reading's age: only the size bound applies
                max_age = limits.max_age if self.clock.synchronized else UNKNOWN_AGE_S
                events = await self.store.call("enforce_limits", limits.max_bytes, max_age, limits.evidence_age)
                await self._inservice_daily()
            except sqlite3.Error:
                continue  # the writer reports a store that refuses writes
            for ev in events:
                log.warning("buffer eviction", extra={"fields": {
                    "count": ev["count"], "from": ev["from_ts"], "to": ev["to_ts"], "reason": ev["reason"]}})
            if events:
                self.events_stored()

    async def _inservice_daily(self) -> None:
        """Once a day at `[checks] inservice_daily` (local time), the previous day's rates as an
        `inservice_daily` event; at start too when that time has passed (the store sends a
        day's once)."""
        at = self.cfg.inservice_daily
        now = datetime.now(self.cfg.timezone).astimezone(self.cfg.timezone)
        if at is None or (now.hour, now.minute) < at or self._daily_done == now.date():
            return
        event = await self.store.call("inservice_daily", self.cfg.rules, self._all_points, now_ms())
        self._daily_done = now.date()
        if event is not None:
            log.info("inservice_daily", extra={"fields": {"day": event["day"], "plant": event["plant"]}})
            self.events_stored()

    async def start(self) -> None:
        phase = phases(self.cfg.devices)
        for dev in self.cfg.devices:
            self._start_device(dev, phase[dev.name])
        self._spawn("writer", self._intake)
        self._spawn("checks", self.checks.run)
        for u in self.uplinks:
            self._spawn(f"uplink:{u.name}", u.run)
        self._spawn("maintenance", self._maintain)
        # Start-up objects (config, points, libraries) live for good: keep the collector off
        # them, and let it run less often (bench: GC cost 3.3 -> 0.08 us per reading)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 100)
        log.info("agent started", extra={"fields": {
            "gateway": self.cfg.gateway_id, "devices": len(self.devices),
            "points": sum(len(d.points) for d in self.cfg.devices), "version": __version__}})

    def _spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Start a core task under supervision."""
        self.tasks.append(asyncio.create_task(self._supervise(name, run), name=name))

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a core task for good: each part catches what it expects, so an end is a bug or a
        surprise (a file gone at run time). Log it and start the task again after a back-off
        (1 s doubling to 60 s), reported meanwhile by /healthz. In place, not by systemd: a
        restart of the service would stop polling and storing too, and a config that has since
        become invalid (a deleted password file) would keep it stopped."""
        delay = RESTART_MIN
        while True:
            began = time.monotonic()
            failure: Exception | None = None
            try:
                await run()
            except Exception as exc:
                failure = exc
            error = repr(failure)[:300] if failure else "returned"  # runs until cancelled: returning is an end too
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a cancel swallowed inside run(): honour it
                raise asyncio.CancelledError
            if time.monotonic() - began >= RESTART_RESET:
                delay = RESTART_MIN
            record = self.restarts.setdefault(name, TaskRestarts())
            record.ended(error, delay)
            log.error("task ended; restarting it", exc_info=failure, extra={"fields": {
                "task": name, "error": error, "restart_in_s": delay, "restarts": record.count}})
            await asyncio.sleep(delay)
            record.restarted()
            delay = min(RESTART_MAX, delay * 2)

    def _start_device(self, dev: DeviceSpec, phase: float) -> None:
        task = DeviceTask(dev, MeteredDriver(make_driver(dev)), self._sink, self._on_link, self.clock, self.declared,
                          phase)
        self.devices.append(task)
        self._spawn(f"device:{dev.name}", task.run)

    async def _stop_device(self, name: str) -> None:
        """Stop polling one device: a poll in progress is abandoned, what it polled before stays."""
        tasks = [t for t in self.tasks if t.get_name() == f"device:{name}"]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks = [t for t in self.tasks if t not in tasks]
        self.restarts.pop(f"device:{name}", None)
        for d in [d for d in self.devices if d.device.name == name]:
            self.devices.remove(d)
            with contextlib.suppress(Exception):
                await d.driver.close()

    async def apply_config(self, new: GatewayConfig, plan) -> None:  # noqa: ANN001 - service.ReloadPlan
        """A reloaded config (agent/service.py plans it): stop removed and changed devices, start
        new and changed ones, leave the others polling. Readings already polled stay queued for
        the writer under the point ids they were polled with. Raises (changing nothing) when the
        store cannot register the new points."""
        await self.writer.register(new.all_points())  # raises, changing nothing
        for name in (*plan.stop, *plan.restart):
            await self._stop_device(name)
        self.cfg = new
        self._all_points = new.all_points()
        self._devices = new.device_of()
        self.clock.reconfigure(new.clock)
        specs = {spec.name: spec for spec in new.uplinks}
        for u in self.uplinks:
            u.reconfigure(specs[u.name])  # the set of uplinks stays (a change needs a restart)
        if plan.checks_changed:
            await self._restart_checks(new)
        phase = phases(new.devices)
        for dev in new.devices:
            if dev.name in plan.start or dev.name in plan.restart:
                self._start_device(dev, phase[dev.name])
        if plan.points_changed:
            for u in self.uplinks:
                await u.points_changed()

    async def _restart_checks(self, new: GatewayConfig) -> None:
        """New rules or points: a new check stage, built from the active conditions in the store
        once everything the old one raised is there."""
        old = self.checks
        self.checks = self._check_stage(new)  # polls feed the new one from now on
        for _ in range(100):  # let the old stage's writer take what it still holds
            if old.checker is None or not old.checker.pending:
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(sqlite3.Error):
            await self.store.call("last_reading_id")  # the store runs calls in order: its last write is done
        tasks = [t for t in self.tasks if t.get_name() == "checks"]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks = [t for t in self.tasks if t not in tasks]
        await old.flush()
        self.restarts.pop("checks", None)  # a new stage, a new start
        self._spawn("checks", self.checks.run)

    async def stop(self) -> None:
        devices = [t for t in self.tasks if t.get_name().startswith("device:")]
        for t in devices:
            t.cancel()
        if devices:  # bounded: a read stuck in a driver is abandoned, not waited for
            await asyncio.wait(devices, timeout=STOP_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*(u.stop() for u in self.uplinks))
        for t in self.tasks:
            t.cancel()
        rest = [*self.tasks, *self._background]
        if rest:
            await asyncio.wait(rest, timeout=STOP_TIMEOUT)
        for d in self.devices:
            await d.driver.close()
        await self.writer.flush()  # the last polls: on disk before we go
        await self.checks.flush()
        await self.store.close()
        log.info("agent stopped")

