"""The HJ 212 uplink end to end in one process: a real store (AsyncStore in tmp_path) fed like
a plant polled every 100 ms, drained by the hj212 uplink into the reference HJ 212 platform
(agent/receiver/hj212.py) over loopback: every interval arrives and is acknowledged; through
withheld acknowledgements and an outage nothing is lost and re-sent frames keep their QN and
DataTime; the platform's requests are answered or refused."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.common.timefmt import now_ms
from agent.model import Point
from agent.north.hj212.uplink import Hj212Uplink
from agent.pipeline.store_thread import AsyncStore
from agent.receiver.hj212 import Hj212Controls, Hj212Platform
from agent.receiver.platform import open_db
from tests.conftest import free_port
from tests.platformkit import (
    HJ212,
    HJ212_PW,
    context,
    feed,
    spec_of,
    until,
    value_at,
    write_hj212_pw,
)

ZONE = ZoneInfo("Asia/Shanghai")
STEP = 1000  # interval = "1s"
POINTS = [
    Point(tag="TK101_LT", address="hr:0", type="float32", line=2, file="points.csv", unit="m",
          kind="level", target_code="w00001", eng_max=1e12),
    Point(tag="TK101_HLA", address="di:0", type="bool", line=3, file="points.csv", kind="trip",
          target_code="w00002"),
]
CODES = {"w00001": "TK101_LT", "w00002": "TK101_HLA"}


def data_time(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, ZONE).strftime("%Y%m%d%H%M%S")


def boundary(text: str) -> int:
    return round(datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=ZONE).timestamp() * 1000)


class Plant:
    """Store, fed plant, uplink and platform, running; `stop` ends them all."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        write_hj212_pw(tmp_path)
        self.spec = spec_of(tmp_path, HJ212.format(port=self.port))
        self.store = AsyncStore(tmp_path / "data")
        self.platform = Hj212Platform(self.spec, open_db(tmp_path / "platform.db"))
        self.truth: list[tuple[int, str, object, str]] = []
        self.tasks: list[asyncio.Future] = []

    async def start(self) -> None:
        await self.store.open([(self.spec.name, False)])
        self.uplink = Hj212Uplink(self.spec, context(self.store, POINTS), ZONE)
        await self.platform.start("127.0.0.1", self.port)
        self.tasks = [asyncio.ensure_future(feed(self.store, self.truth)),
                      asyncio.ensure_future(self.uplink.run())]

    async def stop(self) -> None:
        await self.uplink.stop(1.0)
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks)
        await self.platform.stop()
        await self.store.close()

    def uploads(self) -> list[str]:
        """DataTimes stored by the platform, in arrival order."""
        return [t for (t,) in self.platform.db.execute("SELECT data_time FROM hj212_uploads ORDER BY rowid")]

    def check_values(self) -> None:
        """Every upload holds, per code, the value and flag of its point at its DataTime."""
        for text in self.uploads():
            want = value_at(self.truth, boundary(text))
            got = {CODES[code]: (rtd, flag) for code, rtd, flag in self.platform.db.execute(
                "SELECT code, rtd, flag FROM hj212_values WHERE data_time = ?", (text,))}
            assert got.keys() == want.keys(), text
            for tag, (_ts, value, quality) in want.items():
                if quality == "bad":
                    assert got[tag] == (None, "D"), (text, tag)
                else:
                    assert float(got[tag][0]) == float(value) and got[tag][1] == "N", (text, tag)


def contiguous(times: list[str]) -> bool:
    ats = sorted(boundary(t) for t in times)
    return ats == list(range(ats[0], ats[-1] + STEP, STEP))


async def test_every_interval_arrives_and_is_acknowledged(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    await plant.start()
    try:
        await until(lambda: len(plant.uploads()) >= 5, 20)
        await asyncio.sleep(0.3)
    finally:
        await plant.stop()
    times = plant.uploads()
    assert contiguous(times) and len(set(times)) == len(times)
    counts = plant.platform.counts
    assert counts.undecodable == counts.refused == counts.duplicates == 0
    assert counts.acknowledged == len(times) <= plant.uplink.stats.acked + 1  # the last ack may be in flight
    plant.check_values()


@pytest.mark.long(15)
async def test_withheld_acks_and_an_outage_lose_nothing_and_keep_data_time(tmp_path: Path) -> None:
    """Acknowledgements withheld for 3 s (frames re-sent after each 1 s overtime, then the
    connection given up and the frame sent again on the next), then the platform down for 4 s:
    afterwards every boundary from the first to the last is stored once, re-sends carry their
    first DataTime, and the values are those of each instant."""
    plant = Plant(tmp_path)
    await plant.start()
    try:
        await until(lambda: len(plant.uploads()) >= 2, 20)
        plant.platform.set_controls(Hj212Controls(withhold=True))
        await asyncio.sleep(3)
        await plant.platform.stop()
        await until(lambda: plant.uplink.stats.state == "down", 10)
        await asyncio.sleep(4)
        plant.platform.set_controls(Hj212Controls())
        await plant.platform.start("127.0.0.1", plant.port)
        back = now_ms()
        await until(lambda: max(boundary(t) for t in plant.uploads()) >= back // STEP * STEP and contiguous(
            plant.uploads()), 30)
        await asyncio.sleep(0.3)
    finally:
        await plant.stop()
    times = plant.uploads()
    assert contiguous(times) and len(set(times)) == len(times)
    assert boundary(min(times)) < back - 7000  # the outage lies inside what arrived
    receipts = plant.platform.db.execute(
        "SELECT qn, COUNT(*), COUNT(DISTINCT data_time) FROM hj212_receipts GROUP BY qn").fetchall()
    assert any(n > 1 for _qn, n, _d in receipts)  # frames were re-sent
    assert all(d == 1 for _qn, _n, d in receipts)  # with their original DataTime
    assert plant.platform.counts.withheld >= 2
    plant.check_values()


@pytest.mark.long(15)
async def test_hour_data_covers_readings_back_filled_after_an_outage(tmp_path: Path) -> None:
    """Readings polled while the platform was down reach the kept aggregates as the uplink
    back-fills them: the hour data then still matches every stored reading."""
    plant = Plant(tmp_path)
    await plant.start()
    try:
        await until(lambda: len(plant.uploads()) >= 2, 20)
        await plant.platform.stop()
        await until(lambda: plant.uplink.stats.state == "down", 10)
        await asyncio.sleep(4)
        await plant.platform.start("127.0.0.1", plant.port)
        back = now_ms()
        await until(lambda: max(boundary(t) for t in plant.uploads()) >= back // STEP * STEP and contiguous(
            plant.uploads()), 30)
        await hour_data(plant)
    finally:
        await plant.stop()


async def test_time_query_is_answered_and_changes_are_refused(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    await plant.start()
    try:
        await until(lambda: plant.uploads(), 20)
        asked = now_ms()
        time_reply = await plant.platform.request("1011")
        set_time = await plant.platform.request("1012", {"SystemTime": "20200101000000"})
        set_pw = await plant.platform.request("1072", {"NewPW": "654321"})
        wrong_pw = await plant.platform.request("1011", password="000000")
        other_mn = await plant.platform.request("1011", mn="010000A8900016F000169DC1")
        await until(lambda: len(plant.uploads()) >= 3, 20)  # uploads go on meanwhile
    finally:
        await plant.stop()
    assert [(s.cn, s.st) for s in time_reply] == [("9011", "91"), ("1011", "31"), ("9012", "91")]
    assert time_reply[0].cp.params == {"QnRtn": "1"} and time_reply[2].cp.params == {"ExeRtn": "1"}
    assert abs(boundary(time_reply[1].cp.params["SystemTime"]) - asked) < 5000
    for reply, code in ((set_time, "2"), (set_pw, "2"), (wrong_pw, "3"), (other_mn, "4")):
        assert [(s.cn, s.cp.params) for s in reply] == [("9011", {"QnRtn": code})]
    assert all(s.mn == plant.spec.body.mn and s.pw == HJ212_PW for s in time_reply + set_time)
    assert plant.platform.counts.undecodable == plant.platform.counts.refused == 0


async def hour_data(plant: Plant) -> list:
    """Stop the plant, let the uplink fold what it polled (two intervals), and ask for the last
    hour's hour data; check its averages, least and greatest per code against every reading the
    plant stored. The answer's frames."""
    plant.tasks[0].cancel()
    await asyncio.sleep(2.5)
    now = now_ms()
    hour = now // 3_600_000 * 3_600_000
    reply = await plant.platform.request("2061", {"BeginTime": data_time(hour - 3_600_000),
                                                  "EndTime": data_time(now)})
    assert reply[0].cp.params == {"QnRtn": "1"} and reply[-1].cp.params == {"ExeRtn": "1"}
    data = reply[1:-1]
    assert data and all(s.cn == "2061" for s in data)
    for segment in data:
        at = boundary(segment.cp.data_time)
        for code, tag in CODES.items():
            good = [float(v) for ts, t, v, q in plant.truth if t == tag and q != "bad" and at <= ts < at + 3_600_000]
            fields = segment.cp.codes[code]
            assert float(fields["Avg"]) == pytest.approx(sum(good) / len(good), rel=0, abs=1e-5), (code, fields)
            assert (float(fields["Min"]), float(fields["Max"]), fields["Flag"]) == (min(good), max(good), "N")
    assert sum(1 for ts, t, _v, _q in plant.truth if t == "TK101_LT") > 20
    return reply


async def test_hour_data_for_the_last_hour_matches_the_stored_readings(tmp_path: Path) -> None:
    plant = Plant(tmp_path)
    await plant.start()
    try:
        await until(lambda: len(plant.uploads()) >= 3, 20)
        reply = await hour_data(plant)
        now = now_ms()
        one = await plant.platform.request("2061", {"BeginTime": data_time(now - 7_200_000),
                                                    "EndTime": data_time(now), "PolId": "w00001"})
        none = await plant.platform.request("2051", {"BeginTime": "20200101000000", "EndTime": "20200101010000"})
        bad = await plant.platform.request("2051", {"BeginTime": "2020-01-01", "EndTime": "20200101010000"})
    finally:
        await plant.stop()
    assert [set(s.cp.codes) for s in one[1:-1]] == [{"w00001"}] * (len(reply) - 2)
    assert [s.cp.params for s in none] == [{"QnRtn": "1"}, {"ExeRtn": "100"}]
    assert [s.cp.params for s in bad] == [{"QnRtn": "1"}, {"ExeRtn": "3"}]
