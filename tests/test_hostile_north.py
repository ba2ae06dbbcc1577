"""The north side against hostile peers on loopback (tests/hostile/mqtt_broker.py): a broker that
never acknowledges, a record no builder can turn into a message, reconnects that must not restate
an unchanged `meta`, and broker addresses carrying credentials."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HAZGATE, ROOT
from hostile.mqtt_broker import HostileBroker, Publish

from agent.common.clock import ClockConfig, ClockWatch
from agent.common.timefmt import now_ms
from agent.config.loader import load_config
from agent.model import Point
from agent.north.base import UplinkContext
from agent.north.drain import Drain
from agent.north.mqtt.schema import topic
from agent.north.mqtt.spec import MqttSpec, MqttUplinkSpec
from agent.north.mqtt.uplink import KINDS, MqttConnector, MqttUplink, Uplink1Body
from agent.pipeline.store import Builder
from agent.pipeline.store_thread import AsyncStore
from agent.tools.status import status

GW, ENT = "GW-120116-0042", "120116000042"


def point(tag: str) -> Point:
    return Point(tag=tag, address="hr:0", type="float32", line=2, file="points.csv", unit="m", kind="level")


POINTS = [point("TK101_LT"), point("TK102_LT")]


class NothingHeld:
    """The store takes every write in these tests: nothing is held in memory."""

    def take(self, limit: int) -> list[tuple]:
        return []

    def give_back(self, rows: list[tuple]) -> None:
        raise AssertionError("nothing was taken")


@contextlib.asynccontextmanager
async def opened(data: Path) -> AsyncIterator[AsyncStore]:
    store = AsyncStore(data)
    await store.open([("mqtt", True)])
    try:
        yield store
    finally:
        await store.close()


def context(store: AsyncStore, points: list[Point], events_stored: Callable[[], None] = lambda: None) -> UplinkContext:
    clock = ClockWatch(ClockConfig(sync_source="trust"), lambda _s: None, lambda _s: None)
    return UplinkContext(gateway=GW, enterprise=ENT, version="test", started_ms=now_ms(), store=store,
                         clock=clock, points=lambda: points, held=NothingHeld(), on_state=lambda _n, _s, _r: None,
                         events_stored=events_stored)


async def add_readings(store: AsyncStore, tags: list[str], polls: int = 1, value: float = 1.0) -> None:
    pids = await store.call("pids", [(p.tag, p.unit, p.type) for p in map(point, tags)])
    ts = now_ms()
    await store.call("add_readings", [(ts + i, tag, value + i, 0, None) for i in range(polls) for tag in tags], pids)


@contextlib.asynccontextmanager
async def running(uplink: MqttUplink | Drain) -> AsyncIterator[None]:
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(uplink.stop(0.5), 5)
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.done(), "the uplink did not stop"
        if not task.cancelled():
            task.result()  # it ended by itself: how


def spec(broker: HostileBroker, **kw: Any) -> MqttSpec:
    return MqttSpec(broker=broker.url, publish_interval=0.05, **kw)


def mqtt_uplink(mqtt: MqttSpec, ctx: UplinkContext) -> MqttUplink:
    """The `[uplink]` table's uplink (named mqtt, `hazgate.uplink/1`)."""
    return MqttUplink(MqttUplinkSpec(name="mqtt", mqtt=mqtt), ctx)


def sent(broker: HostileBroker, kind: str, conn: int | None = None) -> list[tuple[Publish, dict]]:
    """What reached the broker on the `kind` topic (from connection `conn`), parsed."""
    return [(p, json.loads(p.payload)) for p in broker.publishes
            if p.topic.endswith("/" + kind) and conn in (None, p.conn)]


async def until(pred: Callable[[], Any], within: float, what: str) -> None:
    """Wait until pred() (or what it returns, awaited) holds; AssertionError after `within`."""
    deadline = time.monotonic() + within
    while not ((await held) if inspect.isawaitable(held := pred()) else held):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.02)


# --- 8: a broker that takes messages and never acknowledges them -----------------------------

async def test_no_puback_past_the_deadline_drops_the_link_and_sends_again(tmp_path: Path) -> None:
    keepalive = 1.0
    async with HostileBroker(mode="no_puback") as broker, opened(tmp_path / "data") as store:
        uplink = mqtt_uplink(spec(broker, keepalive=keepalive, batch_size=1), context(store, POINTS))
        stats = uplink.stats
        await add_readings(store, ["TK101_LT"], polls=40)  # more messages than the window holds
        async with running(uplink):
            await until(lambda: len(sent(broker, "readings", 0)) >= 10, 5, "readings on the wire")
            await asyncio.sleep(1.5 * keepalive)
            assert len(broker.connections) == 1  # past the warning, short of the deadline
            await until(lambda: len(broker.connections) >= 2, 3 * keepalive + 5, "a new connection")
            assert (stats.ack_warning, stats.ack_deadline) == (keepalive, 3 * keepalive)
            first = sent(broker, "meta", 0)[0][0].at  # the oldest message: nothing was acknowledged
            closed = broker.connections[0].closed
            # its deadline runs from when the drain handed it to paho, a little before it arrived
            assert closed is not None and 3 * keepalive - 0.5 <= closed - first <= 3 * keepalive + 2.5
            await until(lambda: sent(broker, "readings", 1), 5, "sent again on the new connection")
            before = {b["seq"]: p.payload for p, b in sent(broker, "readings", 0)}
            again = {b["seq"]: p.payload for p, b in sent(broker, "readings", 1)}
            assert min(again) == min(before)
            assert all(before[seq] == payload for seq, payload in again.items() if seq in before)  # same bytes
            assert stats.oldest_unacked_age() > 3 * keepalive  # counted from the first sending: a problem
            broker.mode = "honest"
            await broker.drop()

            def delivered() -> list[dict]:
                return [r for _p, b in sent(broker, "readings", 2) for r in b["readings"]]

            await until(lambda: len(delivered()) == 40 and stats.unacked_since is None, 10,
                        "everything acknowledged once the broker answers")
            assert stats.oldest_unacked_age() == 0.0

            async def outbox_empty() -> bool:  # acknowledgements are recorded on the next round
                return await store.call("unacked") == []

            await until(outbox_empty, 5, "the acknowledgements recorded")


# --- 2: one record no builder can turn into a message ----------------------------------------

class PoisonedBody:
    """`hazgate.uplink/1` bodies whose builders raise for the POISON tag (a reading) or a
    `poison` event, as `rfc3339` did for a year-9999 timestamp east of UTC."""

    def __init__(self, inner: Uplink1Body):
        self.inner = inner
        self.meta: Builder | None = inner.meta

    def meta_digest(self) -> bytes:
        return self.inner.meta_digest()

    def readings(self, backfill: bool) -> Builder:
        build = self.inner.readings(backfill)

        def poisoned(seq: int, rows: list) -> bytes:
            if any(row[1] == "POISON" for row in rows):
                raise OverflowError("date value out of range")
            return build(seq, rows)

        return poisoned

    def events(self, seq: int, rows: list) -> bytes:
        if any(row.get("poison") for row in rows):
            raise ValueError("event cannot be encoded")
        return self.inner.build_events(seq, rows)


async def test_a_record_that_cannot_be_built_is_set_aside_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "hazgate.uplink")
    async with HostileBroker() as broker, opened(tmp_path / "data") as store:
        ctx = context(store, [*POINTS, point("POISON")], events_stored=lambda: drain.events_stored())
        s = spec(broker)
        inner = Uplink1Body(ctx)
        topics = {k: topic(s.topic_prefix, ENT, GW, k) for k in KINDS}
        drain = Drain("mqtt", ctx, MqttUplink._settings(s), PoisonedBody(inner), MqttConnector(s, ctx, inner, topics))
        await add_readings(store, ["TK101_LT", "POISON", "TK102_LT"], polls=3)
        await store.call("add_event", now_ms(), {"id": "e1", "kind": "gas_alarm", "severity": "alarm", "state": "raised",
                                                 "ts": "2026-11-22T19:00:00.000+08:00", "tag": "TK101_LT", "poison": True})
        await store.call("add_event", now_ms(), {"id": "e2", "kind": "gas_alarm", "severity": "alarm", "state": "raised",
                                                 "ts": "2026-11-22T19:00:00.000+08:00", "tag": "TK102_LT"})
        async with running(drain):
            def delivered(tag: str) -> list[dict]:
                return [r for _p, b in sent(broker, "readings") for r in b["readings"] if r["tag"] == tag]

            await until(lambda: len(delivered("TK101_LT")) == 3 and len(delivered("TK102_LT")) == 3, 10,
                        "the good readings of the poisoned batch")
            await until(lambda: len([e for _p, b in sent(broker, "events") for e in b["events"]
                                     if e["kind"] == "record_set_aside"]) == 2, 10, "two set-aside reports")
            events = [e for _p, b in sent(broker, "events") for e in b["events"]]
            assert [e["id"] for e in events if e["kind"] == "gas_alarm"] == ["e2"]
            aside = {e["message_kind"]: e for e in events if e["kind"] == "record_set_aside"}
            assert (aside["readings"]["count"], aside["events"]["count"]) == (3, 1)
            assert aside["readings"]["source"] == "gateway" and "date value out of range" in aside["readings"]["reason"]
            await add_readings(store, ["TK101_LT"], polls=1, value=50.0)  # and the drain goes on
            await until(lambda: len(delivered("TK101_LT")) == 4, 10, "readings after the poison")
            assert delivered("POISON") == []
            assert len(broker.connections) == 1, "the drain reconnected over a record"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "set aside" in r.getMessage()]
    assert len(errors) == 2


# --- 13a: meta restated only when it changed or was never acknowledged ------------------------

async def test_meta_is_restated_only_when_changed_or_never_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def meta_seqs(broker: HostileBroker, conn: int) -> list[int]:
        return [b["seq"] for _p, b in sent(broker, "meta", conn)]

    async def session(broker: HostileBroker, conn: int, uplink: MqttUplink, settled: bool = True) -> None:
        """Wait for connection `conn` to carry readings (sent after any meta of its session) and,
        when `settled`, for every acknowledgement to have reached the uplink."""
        acked = uplink.stats.acked
        await until(lambda: len(broker.connections) > conn, 10, f"connection {conn}")
        await add_readings(uplink.drain.store, ["TK101_LT"])
        await until(lambda: sent(broker, "readings", conn), 10, f"readings on connection {conn}")
        if settled:
            await until(lambda: uplink.stats.acked - acked >= len(sent(broker, "readings", conn) + sent(broker, "meta", conn)),
                        5, f"acknowledgements on connection {conn}")

    # the first meta is never acknowledged: it goes again with its seq, and no second one is made
    no_ack_for_meta = lambda p: "no_puback" if p.topic.endswith("/meta") and p.conn == 0 else "honest"  # noqa: E731
    async with HostileBroker(mode=no_ack_for_meta) as broker, opened(data) as store:
        uplink = mqtt_uplink(spec(broker), context(store, POINTS))
        async with running(uplink):
            await session(broker, 0, uplink, settled=False)
            assert meta_seqs(broker, 0) == [1]
            await broker.drop()
            await session(broker, 1, uplink)
            assert meta_seqs(broker, 1) == [1]  # the same message again, acknowledged this time
            await broker.drop()
            await session(broker, 2, uplink)
            assert meta_seqs(broker, 2) == []  # acknowledged and unchanged: not restated
        # a restart: the acknowledged description is remembered in the store
        uplink = mqtt_uplink(spec(broker), context(store, POINTS))
        async with running(uplink):
            await session(broker, 3, uplink)
            assert meta_seqs(broker, 3) == []
        # the point set changed while the agent was stopped: restated
        uplink = mqtt_uplink(spec(broker), context(store, [*POINTS, point("TK103_LT")]))
        async with running(uplink):
            await session(broker, 4, uplink)
            (_p, body), = sent(broker, "meta", 4)
            assert [p["tag"] for p in body["points"]] == ["TK101_LT", "TK102_LT", "TK103_LT"]
    # another broker never had it: restated there
    async with HostileBroker() as other, opened(data) as store:
        uplink = mqtt_uplink(spec(other), context(store, [*POINTS, point("TK103_LT")]))
        async with running(uplink):
            await session(other, 0, uplink)
            assert len(meta_seqs(other, 0)) == 1


# --- 13b: no credentials in broker addresses, nor in logs or status ---------------------------

SECRET = "s3cret-Pw"


def test_validate_refuses_credentials_in_the_broker_address() -> None:
    out = subprocess.run([*HAZGATE, "validate", "-c", "tests/cases/broker_credentials/gateway.toml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "uplink.broker" in out.stderr
    assert SECRET not in out.stdout + out.stderr


def test_receive_refuses_credentials_in_the_broker_address(tmp_path: Path) -> None:
    out = subprocess.run([*HAZGATE, "receive", "--broker", f"mqtt://rx:{SECRET}@127.0.0.1:1", "--db",
                          str(tmp_path / "r.db"), "--duration", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert SECRET not in out.stdout + out.stderr and "password" in out.stderr


async def test_no_log_line_or_status_shows_a_credential(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A spec built around the loader (which refuses such an address) still never shows one."""
    caplog.set_level(logging.DEBUG)
    async with HostileBroker() as broker, opened(tmp_path / "data") as store:
        creds = dataclasses.replace(spec(broker), broker=f"mqtt://gw:{SECRET}@127.0.0.1:{broker.port}")
        uplink = mqtt_uplink(creds, context(store, POINTS))
        async with running(uplink):
            await until(lambda: sent(broker, "meta"), 10, "connected with the address")
            await broker.drop()  # "uplink down" with its reason, then up again
            await until(lambda: len(broker.connections) >= 2 and broker.live(), 10, "reconnected")
    shown = [f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records]
    assert any(f"127.0.0.1:{broker.port}" in line for line in shown)
    assert not [line for line in shown if SECRET in line]
    cfg = load_config(ROOT / "tests/cases/valid_example/gateway.toml")
    cfg = dataclasses.replace(cfg, data_dir=tmp_path / "data", uplinks=[MqttUplinkSpec(name="mqtt", mqtt=creds)])
    assert status(cfg) == 0
    out = capsys.readouterr()
    assert f"127.0.0.1:{broker.port}" in out.out and SECRET not in out.out + out.err
