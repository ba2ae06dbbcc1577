"""One task per device, polling on a fixed cadence of the monotonic clock.

The next poll is due one interval after the previous one was due, not after it finished, so
the cadence does not drift. A poll that overruns skips the cycles it missed (counted in
`overruns`) instead of firing them in a burst, and never leaves less than half an interval
before the next one. Nothing a device does ends its task.

Devices start at spread phases (`phases`): ten PLCs polled every second are asked 100 ms apart,
not all at once, so neither the gateway (a Pi core spends tens of milliseconds on each
poll's readings) nor a shared line or device server takes them in one burst, and each poll's
readings reach the store sooner after their collection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection

from agent.common.clock import ClockWatch
from agent.model import BAD, Reading
from agent.pipeline.normalize import Normalizer
from drivers.base import DeviceSpec, Driver

log = logging.getLogger("hazgate.scheduler")

PHASE_SPREAD = 1.0  # seconds at most over which the devices' first polls are spread

Sink = Callable[[DeviceSpec, list[Reading], list[Reading]], Awaitable[None]]


class DeviceTask:
    def __init__(self, device: DeviceSpec, driver: Driver, sink: Sink,
                 on_link: Callable[[str, str, str | None, int | None], Awaitable[None]] | None = None,
                 clock: ClockWatch | None = None, declared: Collection[str] = frozenset(), phase: float = 0.0):
        self.device, self.driver, self.sink, self.on_link = device, driver, sink, on_link
        self.phase = phase  # seconds from the start to the first poll
        self.clock = clock
        self.normalizer = Normalizer(device.integrity_interval, declared)
        self.link = "unknown"
        self.reason: str | None = None
        self.polls = 0
        self.overruns = 0
        self.last_good_ms: int | None = None

    async def run(self) -> None:
        interval = self.device.poll_interval
        due = time.monotonic() + self.phase
        if self.phase > 0:
            await asyncio.sleep(self.phase)
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or surprise in one poll must not end the device
                log.exception("poll failed", extra={"fields": {"device": self.device.name}})
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (inside pymodbus) can swallow a cancel that arrives
                # with a response: honour it here, or SIGTERM would not stop a busy device
                raise asyncio.CancelledError
            due += interval
            now = time.monotonic()
            if due - now < interval / 2:  # late: skip the slots it missed, and one too close to now
                missed = max(0, math.floor((now - due) / interval) + 1)
                if due + missed * interval - now < interval / 2:
                    missed += 1
                self.overruns += missed
                due += missed * interval
            await asyncio.sleep(due - now)

    async def poll_once(self) -> None:
        clock_ok = True
        if self.clock is not None:
            self.clock.check()  # a step is reported before the readings stamped after it
            clock_ok = self.clock.synchronized
        ts_ms = int(time.time() * 1000)  # collection time: the wall clock, read once per batch
        samples = await self.driver.read()
        self.polls += 1
        every, report = self.normalizer.process(samples, ts_ms, clock_ok)
        good = any(r.quality != BAD for r in every)  # uncertain: only the clock is in doubt
        if good:
            self.last_good_ms = ts_ms
        # up: something answered. A device that accepts the connection but only times out is down.
        answered = any(r.quality != BAD or r.reason != "timeout" for r in every)
        link = "up" if good or (every and self.driver.connected and answered) else "down"
        reason = None if link == "up" else next((r.reason for r in every if r.reason), "no answer")
        if link != self.link:
            fields = {"device": self.device.name, "endpoint": self.device.endpoint}
            if link == "up":
                log.info("device up", extra={"fields": fields})
            else:
                log.warning("device down", extra={"fields": {**fields, "reason": reason}})
            self.link, self.reason = link, reason
            if self.on_link:
                await self.on_link(self.device.name, link, reason, self.last_good_ms)
        await self.sink(self.device, every, report)


def phases(devices: list[DeviceSpec]) -> dict[str, float]:
    """Each device's first-poll offset: the i-th of n devices starts i/n of its interval (at most
    PHASE_SPREAD) after the first, in the configuration's order."""
    n = len(devices)
    return {d.name: i / n * min(d.poll_interval, PHASE_SPREAD) for i, d in enumerate(devices)}
