"""Memory under outage: the agent polls on while its broker is gone.

The agent polls `points` points every second through its own broker; once readings flow, the
broker is ended (by its PID) and the agent keeps polling into its store for `seconds`. RSS is
sampled every two seconds: the figure is RSS at the end against RSS at the start of the
outage (the issue asks for flat, within 10 %). The store's growth gives the disk a plant needs
per hour of outage at this rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.common import (
    Procs,
    Subscriber,
    Unit,
    cpu_seconds,
    free_port,
    gateway_toml,
    rss_bytes,
    snapshot,
    start_agent,
    start_broker,
    store_bytes,
    store_state,
    wait_until,
)
from bench.live import Ctx


@dataclass
class Outage:
    points_per_s: float
    seconds: float
    rss_start: int
    rss_end: int
    rss_max: int
    store_start: int
    store_end: int
    readings_start: int
    readings_end: int
    cpu_share: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    agent_exit: int | None = None

    @property
    def rss_ratio(self) -> float:
        return self.rss_end / self.rss_start

    @property
    def buffered(self) -> int:
        return self.readings_end - self.readings_start

    @property
    def bytes_per_reading(self) -> float:
        return (self.store_end - self.store_start) / self.buffered if self.buffered else float("nan")


def run(ctx: Ctx, units: list[Unit], seconds: float, warm: float = 10.0) -> Outage:
    procs: Procs = ctx.procs
    port = free_port()
    broker = start_broker(procs, port, name="mosquitto-outage")
    sub = Subscriber(port)
    cfg = gateway_toml(ctx.work, "outage", "GW-OUT", port, units, "1s")
    data = ctx.work / "data-outage"
    agent = start_agent(procs, cfg, "outage")
    try:
        if not wait_until(lambda: snapshot(sub, "GW-OUT")[0] > 0, 60):
            raise RuntimeError("outage: no readings before the outage")
        time.sleep(warm)
        sub.close()
        procs.stop(broker)  # the link goes
        time.sleep(2)  # the agent notices; what it had in flight settles
        s0, r0, rss0, c0, t0 = store_bytes(data), store_state(data)["stored_readings"], rss_bytes(agent.pid), \
            cpu_seconds(agent.pid), time.monotonic()
        samples = [(0.0, rss0)]
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - t0, rss_bytes(agent.pid)))
        elapsed = time.monotonic() - t0
        s1, r1, c1 = store_bytes(data), store_state(data)["stored_readings"], cpu_seconds(agent.pid)
    finally:
        code = procs.stop(agent)
    if code:
        ctx.notes.append(f"outage agent exited with {code}")
    n_points = sum(u.n_points for u in units)
    return Outage(n_points, elapsed, rss0, samples[-1][1], max(r for _, r in samples), s0, s1, r0, r1,
                  (c1 - c0) / elapsed, samples, code)
