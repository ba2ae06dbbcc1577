"""End to end in one process: a real store (AsyncStore in tmp_path) drained by the HTTP and TCP
uplinks (the protocol-neutral Drain with their connectors and templated bodies) into the
reference platform receivers: every reading arrives exactly once after de-duplication by
data_id, in order, across a platform outage."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.common.timefmt import now_ms
from agent.north.http.uplink import HttpUplink
from agent.north.tcp.uplink import TcpUplink
from agent.pipeline.store_thread import AsyncStore
from agent.receiver.platform import PlatformReceiver, PlatformServer, open_db
from tests.conftest import free_port
from tests.platformkit import (
    context,
    feed,
    jiangsu_tcp,
    mem_http,
    received_snapshots,
    snapshot_http,
    spec_of,
    until,
    value_at,
)

T0 = 1_795_777_200_000


async def add(store: AsyncStore, first: int, n: int) -> None:
    pids = await store.call("pids", [("TK101_LT", "m", "float32"), ("TK101_HLA", "", "bool")])
    rows = [(T0 + i * 100, "TK101_LT", float(i), 0, None) for i in range(first, first + n)]
    await store.call("add_readings", rows, pids)


def delivered(receiver: PlatformReceiver) -> list[float]:
    """Values of the records stored, in the order the platform took them (duplicates by
    data_id were never stored)."""
    return [v for (v,) in receiver.db.execute("SELECT value FROM platform_records ORDER BY rowid")]


async def run_through(tmp_path: Path, uplink, spec, listen: str) -> PlatformReceiver:
    store = uplink.drain.store
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"))
    server = PlatformServer(receiver, listen)
    await server.start()
    task = asyncio.ensure_future(uplink.run())
    try:
        await add(store, 0, 300)
        await until(lambda: len(delivered(receiver)) == 300)
        await server.stop()  # the platform goes away: readings wait in the store
        await add(store, 300, 200)
        await until(lambda: uplink.stats.state == "down")
        server = PlatformServer(receiver, listen)
        await server.start()
        await until(lambda: len(delivered(receiver)) == 500)
        await asyncio.sleep(0.3)  # nothing more comes
        assert delivered(receiver) == [float(i) for i in range(500)]
        assert (await store.call("stats"))["readings_buffered"] == 0
    finally:
        await uplink.stop(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()
        await store.close()
    return receiver


async def test_http_uplink_delivers_every_reading_once_in_order(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime", batch=40)
    store = AsyncStore(tmp_path / "data")
    await store.open([(spec.name, False)])
    uplink = HttpUplink(spec, context(store))
    receiver = await run_through(tmp_path, uplink, spec, f"http://127.0.0.1:{port}/api/realtime")
    gw = receiver.gateways["GW-320200-0001"]
    assert (gw.records, gw.violations, gw.undecodable, gw.gaps()) == (500, 0, 0, [])
    assert uplink.stats.reconnects >= 1
    live = receiver.db.execute("SELECT MAX(count) FROM platform_messages WHERE rowid <= 8").fetchone()[0]
    assert live <= 40  # the first 300 readings went live: at most `batch` records per message


async def test_backfill_messages_respect_the_uplink_batch(tmp_path: Path) -> None:
    port = free_port()
    spec = mem_http(tmp_path, f"http://127.0.0.1:{port}/api/realtime", batch=40)
    store = AsyncStore(tmp_path / "data")
    await store.open([(spec.name, False)])
    receiver = await run_through(tmp_path, HttpUplink(spec, context(store)), spec,
                                 f"http://127.0.0.1:{port}/api/realtime")
    assert receiver.db.execute("SELECT MAX(count) FROM platform_messages").fetchone()[0] <= 40


async def test_tcp_uplink_delivers_every_reading_once_in_order(tmp_path: Path) -> None:
    port = free_port()
    spec = jiangsu_tcp(tmp_path, port, "persistent", batch=64)
    store = AsyncStore(tmp_path / "data")
    await store.open([(spec.name, False)])
    uplink = TcpUplink(spec, context(store))
    receiver = await run_through(tmp_path, uplink, spec, f"tcp://127.0.0.1:{port}")
    gw = receiver.gateways["jiangsu"]
    assert (gw.records, gw.violations, gw.undecodable, gw.gaps()) == (500, 0, 0, [])


async def test_a_snapshot_uplink_back_fills_one_snapshot_per_missed_interval(tmp_path: Path) -> None:
    """Snapshots every 2 s; the platform is down for 6 s, then each missed boundary comes as
    back-fill, in order, after the newest one, with the values and qualities of its instant."""
    step = 2000
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/realtime"
    spec = spec_of(tmp_path, snapshot_http(url, "2s"))
    store = AsyncStore(tmp_path / "data")
    await store.open([(spec.name, False)])
    uplink = HttpUplink(spec, context(store))
    receiver = PlatformReceiver(spec, open_db(tmp_path / "platform.db"))
    server = PlatformServer(receiver, url)
    await server.start()
    truth: list[tuple[int, str, object, str]] = []
    tasks = [asyncio.ensure_future(feed(store, truth)), asyncio.ensure_future(uplink.run())]
    try:
        await until(lambda: received_snapshots(receiver.db, step), 10)
        await server.stop()  # the platform is down for 6 s (3 boundaries) once the uplink sees it
        await until(lambda: uplink.stats.state == "down", 5)
        await asyncio.sleep(6)
        server = PlatformServer(receiver, url)
        await server.start()
        back = now_ms()

        def caught_up() -> bool:
            ats = {snap.at for snap in received_snapshots(receiver.db, step)}
            return ats >= set(range(min(ats), back // step * step + 1, step))

        await until(caught_up, 20)
        await asyncio.sleep(0.3)  # nothing more comes at once
    finally:
        await uplink.stop(1.0)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        await server.stop()
        await store.close()
    snaps = received_snapshots(receiver.db, step)
    ats = [snap.at for snap in snaps]
    assert sorted(ats) == list(range(ats[0], max(ats) + 1, step))  # one per interval, none twice
    backfill = [snap for snap in snaps if snap.backfill]
    assert len(backfill) >= 3
    first = snaps.index(backfill[0])
    assert [snap.at for snap in backfill] == sorted(snap.at for snap in backfill)  # in order
    assert not snaps[first - 1].backfill and snaps[first - 1].at > backfill[-1].at  # after the newest
    for snap in snaps:  # each with the values of its instant
        assert snap.records == value_at(truth, snap.at), snap
    assert {q for snap in snaps for _ts, _v, q in snap.records.values()} == {"good", "bad"}
