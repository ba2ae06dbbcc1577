"""End to end in one process: a real store (AsyncStore in tmp_path) drained by the HTTP and TCP
uplinks (the protocol-neutral Drain with their connectors and templated bodies) into the
reference platform receivers: every reading arrives exactly once after de-duplication by
data_id, in order, across a platform outage."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.north.http.uplink import HttpUplink
from agent.north.tcp.uplink import TcpUplink
from agent.pipeline.store import AsyncStore
from agent.receiver.platform import PlatformReceiver, PlatformServer, open_db
from tests.conftest import free_port
from tests.platformkit import context, jiangsu_tcp, mem_http

T0 = 1_795_777_200_000


async def add(store: AsyncStore, first: int, n: int) -> None:
    pids = await store.call("pids", [("TK101_LT", "m", "float32"), ("TK101_HLA", "", "bool")])
    rows = [(T0 + i * 100, "TK101_LT", float(i), 0, None) for i in range(first, first + n)]
    await store.call("add_readings", rows, pids)


def delivered(receiver: PlatformReceiver) -> list[float]:
    """Values of the records stored, in the order the platform took them (duplicates by
    data_id were never stored)."""
    return [v for (v,) in receiver.db.execute("SELECT value FROM platform_records ORDER BY rowid")]


async def until(check, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


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
