"""HJ 212 real-time bodies and the link, fed rows and frames: quality to data flag, one upload
per snapshot with the boundary as DataTime, PNUM/PNO packets for a large point set, and a split
upload acknowledged only when the platform has answered every packet."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.model import Point
from agent.north.hj212.body import RealtimeBody
from agent.north.hj212.flags import DEFAULT_FLAGS, flag_of
from agent.north.hj212.frame import MAX_SEGMENT, pack, unpack
from agent.north.hj212.segment import Segment, join
from agent.north.hj212.uplink import Hj212Connector, frames_of
from agent.north.platform import Pacing
from agent.pipeline.store import SnapshotPage
from agent.receiver.hj212 import Hj212Platform
from agent.receiver.platform import open_db
from tests.conftest import free_port
from tests.platformkit import HJ212, context, spec_of, until, write_hj212_pw

AT = 1_795_777_200_000  # 2026-11-27 11:00:00 UTC, 19:00:00 in Asia/Shanghai


@pytest.mark.parametrize(("quality", "reason", "value", "flag"), [
    ("good", None, 5.0, "N"),
    ("good", None, 101.0, "T"),  # above eng_max 100
    ("uncertain", "clock_unsynchronized", 5.0, "N"),
    ("bad", "timeout", None, "B"),
    ("bad", "connection lost: reset by peer", None, "B"),
    ("bad", "connection refused or timed out", None, "B"),
    ("bad", "decode error: not a finite number", None, "D"),
    ("bad", "modbus exception 4 (device failure)", None, "D"),
    ("good", "declared_stop", 5.0, "M"),
    ("bad", "declared_stop", None, "M"),
])
def test_quality_to_flag(quality: str, reason: str | None, value: float | None, flag: str) -> None:
    assert flag_of(DEFAULT_FLAGS, quality, reason, value, 100.0) == flag


def test_flags_from_the_config_override_by_reason_and_quality() -> None:
    flags = {**DEFAULT_FLAGS, "modbus exception 4": "C", "uncertain": "S", "over_range": "N"}
    assert flag_of(flags, "bad", "modbus exception 4: device failure", None, None) == "C"
    assert flag_of(flags, "uncertain", "clock_unsynchronized", 1.0, None) == "S"
    assert flag_of(flags, "good", None, 1e9, 100.0) == "N"


async def no_history(*_args: object) -> list:
    return []


def points(n: int) -> list[Point]:
    return [Point(tag=f"P{i}", address=f"hr:{i}", type="float32", line=i + 2, file="p.csv",
                  target_code=f"a{i:05d}" if i % 10 else "", eng_max=1000.0) for i in range(n)]


def body(tmp_path: Path, n: int) -> RealtimeBody:
    write_hj212_pw(tmp_path)
    spec = spec_of(tmp_path, HJ212.format(port=9212))
    return RealtimeBody(context(None, points(n)), spec.body, ZoneInfo("Asia/Shanghai"))


def page(n: int) -> SnapshotPage:
    rows = [(AT - 300, f"P{i}", "", "float32", i + 0.25, "good", None) for i in range(n)]
    rows[1] = (AT - 300, "P1", "", "float32", None, "bad", "timeout")
    return SnapshotPage(rows, AT)


def test_one_upload_at_the_snapshot_boundary(tmp_path: Path) -> None:
    build = body(tmp_path, 4)
    [frame] = frames_of(build.readings(False)(7, page(4)))
    s = Segment.parse(unpack(frame))
    assert (s.st, s.cn, s.pw, s.mn, s.flag) == ("31", "2011", "pw0123", "010000A8900016F000169DC0", 5)
    assert s.cp.params == {"DataTime": "20261127190000"}  # the boundary, not the readings' times
    assert s.cp.codes == {"a00001": {"Flag": "B"}, "a00002": {"Rtd": "2.25", "Flag": "N"},
                          "a00003": {"Rtd": "3.25", "Flag": "N"}}  # P0 has no target_code


def test_a_large_upload_goes_as_packets_under_one_qn(tmp_path: Path) -> None:
    build = body(tmp_path, 2000)
    frames = frames_of(build.readings(True)(8, page(2000)))
    packets = [Segment.parse(unpack(f)) for f in frames]
    assert len(packets) > 1 and all(len(f) <= MAX_SEGMENT + 12 for f in frames)
    assert {(p.qn, p.cp.data_time, p.pnum) for p in packets} == {(packets[0].qn, "20261127190000", len(packets))}
    assert [p.pno for p in packets] == list(range(1, len(packets) + 1)) and all(p.flag == 7 for p in packets)
    assert len(join(packets).cp.codes) == 1800


async def test_a_split_upload_is_acknowledged_after_every_packet(tmp_path: Path) -> None:
    build = body(tmp_path, 2000)
    port = free_port()
    spec = spec_of(tmp_path, HJ212.format(port=port))
    platform = Hj212Platform(spec, open_db(tmp_path / "platform.db"))
    await platform.start("127.0.0.1", port)
    acked: list[int] = []
    link = await Hj212Connector(spec, Pacing("env"), None, no_history).connect(acked.append, lambda s, r: None)
    try:
        payload = build.readings(False)(3, page(2000))
        assert link.send(3, "snapshot", payload, False)
        await until(lambda: acked or link.lost.is_set(), 5)
    finally:
        await link.close(1.0)
        await platform.stop()
    assert acked == [3] and platform.counts.uploads == platform.counts.acknowledged == len(frames_of(payload))
    assert platform.counts.values == 1800


async def test_a_split_upload_with_a_packet_unanswered_is_not_acknowledged(tmp_path: Path) -> None:
    """A platform that answers only the first packet: the upload goes again after `overtime`,
    then the link gives up, and nothing was acknowledged."""
    build = body(tmp_path, 2000)
    port = free_port()
    spec = spec_of(tmp_path, HJ212.format(port=port))
    received: list[Segment] = []

    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            *frames, buffer = buffer.split(b"\r\n")
            for frame in frames:
                s = Segment.parse(unpack(frame))
                received.append(s)
                if s.pno == 1:
                    writer.write(pack(Segment(qn=s.qn, st="91", cn="9014", pw=s.pw, mn=s.mn, flag=4).text()))

    server = await asyncio.start_server(first_only, "127.0.0.1", port)
    acked: list[int] = []
    link = await Hj212Connector(spec, Pacing("env"), None, no_history).connect(acked.append, lambda s, r: None)
    try:
        payload = build.readings(False)(4, page(2000))
        assert link.send(4, "snapshot", payload, False)
        await until(lambda: link.lost.is_set(), 10)
    finally:
        await link.close(1.0)
        server.close()
    assert acked == [] and "no data response (9014)" in link.reason and "after 2 sends" in link.reason
    assert len(received) == 2 * len(frames_of(payload))  # sent, then once again (recount = 1)


async def test_a_wrong_pw_is_the_configs_fault_never_the_uploads(tmp_path: Path) -> None:
    """The platform answers 9011 QnRtn=3: the link ends with that reason (the uplink shows
    down and keeps the upload), nothing is refused or set aside."""
    build = body(tmp_path, 4)
    port = free_port()
    spec = spec_of(tmp_path, HJ212.format(port=port))
    other = tmp_path / "secrets" / "platform.pw"
    other.write_text("999999\n")
    platform = Hj212Platform(replace(spec, body=replace(spec.body, password_file=other)),
                             open_db(tmp_path / "platform.db"))
    await platform.start("127.0.0.1", port)
    verdicts: list[object] = []
    link = await Hj212Connector(spec, Pacing("env"), None, no_history).connect(
        verdicts.append, lambda s, r: verdicts.append((s, r)))
    try:
        assert link.send(5, "snapshot", build.readings(False)(5, page(4)), False)
        await until(lambda: link.lost.is_set(), 5)
    finally:
        await link.close(1.0)
        await platform.stop()
    assert verdicts == [] and "QnRtn=3 (wrong PW)" in link.reason
    assert (platform.counts.refused, platform.counts.uploads) == (1, 0)
