"""Back on air after an outage (issue 20, item 3): the uplinks' reconnect back-off is full
jitter between a floor and a one-second cap, reset only by an acknowledgement; a refused
connection or a platform answering 503 is paced, never a busy loop; and after the broker was
gone ten seconds, live readings flow again within seconds of its return."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from plant import DeviceSpec, Subscriber, parse_ts, simple_points, write_plant

from agent.common.timefmt import now_ms
from agent.north.backoff import BASE, CAP, FLOOR, Backoff
from agent.north.base import Connector, Link
from agent.north.drain import Drain
from agent.north.http.uplink import HttpConnector
from agent.north.platform import Unanswered, drain_settings
from agent.north.tcp.uplink import TcpConnector
from agent.north.templated import TemplatedBody
from agent.pipeline.store_thread import AsyncStore
from agent.receiver.platform import Controls, PlatformReceiver, PlatformServer, open_db
from tests.conftest import free_port
from tests.platformkit import POINTS, context, jiangsu_tcp, mem_http

WATCH = 3.0  # seconds a drain is watched connecting
OUTAGE = 10.0  # seconds the broker stays away
BACK_WITHIN = 4.0  # seconds from the broker's return to the first live message: 2 s and a loaded box's margin


def test_backoff_is_full_jitter_between_floor_and_cap() -> None:
    b = Backoff(random.Random(20))
    first = [Backoff(random.Random(i)).next_delay() for i in range(500)]
    assert min(first) >= FLOOR and max(first) <= BASE, "the first attempt after a loss comes within BASE"
    for _ in range(20):  # a long outage: the delays stop growing at the cap
        b.next_delay()
    late = [b.next_delay() for _ in range(2000)]
    assert min(late) >= FLOOR and max(late) <= CAP
    # full jitter: spread over the whole interval, not bunched at the cap
    assert min(late) < FLOOR + 0.05 and max(late) > CAP - 0.05
    assert abs(statistics.mean(late) - (FLOOR + CAP) / 2) < 0.05
    b.reset()
    assert b.next_delay() <= BASE


class Counted:
    """A connector that counts its attempts."""

    def __init__(self, inner: Connector):
        self.inner, self.attempts = inner, 0
        self.describe, self.connect_allowance = inner.describe, inner.connect_allowance

    async def connect(self, on_ack: Callable[[int], None], on_reject: Callable[[int, str], None]) -> Link:
        self.attempts += 1
        return await self.inner.connect(on_ack, on_reject)


@contextlib.asynccontextmanager
async def drain_watched(tmp_path: Path, spec: Any, connector: type) -> AsyncIterator[tuple[Drain, Counted]]:
    """A platform uplink's drain over `connector`, with one stored reading to send, run for
    WATCH seconds; stopped on leaving."""
    store = AsyncStore(tmp_path / "data")
    await store.open([(spec.name, True)])
    p = POINTS[0]
    pids = await store.call("pids", [(p.tag, p.unit, p.type)])
    await store.call("add_readings", [(now_ms(), p.tag, 1.0, 0, None)], pids)
    counted = Counted(connector(spec, Unanswered(spec.name)))
    drain = Drain(spec.name, context(store), drain_settings(spec.delivery),
                  TemplatedBody(context(store), spec.body), counted)
    task = asyncio.create_task(drain.run())
    try:
        await asyncio.sleep(WATCH)
        yield drain, counted
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        await store.close()


def attempts_bound(attempts: int) -> None:
    # at least one attempt a cap (the first at once), at most one a floor: never a busy loop
    assert WATCH / CAP - 1 <= attempts <= WATCH / FLOOR + 1, f"{attempts} connection attempts in {WATCH:g} s"


async def test_a_refused_connection_is_paced_never_a_busy_loop(tmp_path: Path) -> None:
    spec = jiangsu_tcp(tmp_path, free_port(), connection="persistent")  # nobody listens there
    async with drain_watched(tmp_path, spec, TcpConnector) as (drain, counted):
        assert drain.stats.state == "down"
        attempts_bound(counted.attempts)


async def test_a_platform_answering_503_waits_like_one_that_is_down(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/realtime"
    spec = mem_http(tmp_path, url, timeout="1s")
    server = PlatformServer(PlatformReceiver(spec, open_db(tmp_path / "platform.db"), Controls(fail=503)), url)
    await server.start()
    try:
        async with drain_watched(tmp_path, spec, HttpConnector) as (drain, counted):
            assert drain.stats.acked == 0 and counted.attempts >= 2, "the platform was never asked"
            attempts_bound(counted.attempts)
            assert drain.backoff.failures >= counted.attempts - 1, "connections that deliver nothing do not reset it"
    finally:
        await server.stop()


def test_live_delivery_resumes_within_seconds_of_the_broker_returning(tmp_path: Path, broker, procs) -> None:
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms")
    plant = write_plant(tmp_path, broker.url, [dev])
    plant.start_simulator(procs, "plc")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.readings("A_LT")) >= 5, 20, "readings before the outage")
    broker.stop()
    time.sleep(OUTAGE)  # long enough for any back-off to have reached its cap
    back = time.time()
    broker.start()  # returns once the port takes connections
    # the agent may be on before the subscriber: its first live message can be missed, the
    # next one (a publish interval later) then stands for it, a conservative figure
    with Subscriber(broker.port, plant.topic_filter) as sub:
        sub.wait_until(lambda: live_since(sub, back), 15, "live readings after the broker came back")
        first = min(live_since(sub, back))
    assert agent.alive(), agent.output()
    assert first - back <= BACK_WITHIN, f"first live message built {first - back:.2f} s after the broker came back"


def live_since(sub: Subscriber, since: float) -> list[float]:
    """When each live readings message built after `since` was built (its `sent_at`)."""
    return [parse_ts(m.body["sent_at"]) for m in sub.of_kind("readings")
            if m.body and parse_ts(m.body["sent_at"]) >= since and not any(r["backfill"] for r in m.body["readings"])]
