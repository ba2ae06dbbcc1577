"""The store with several uplinks: each its own queue, sequence and outbox; a reading leaves
when no uplink still needs it; refusals set a message aside; a store written by the previous
release (tests/fixtures/store-0.1.0, made by hazgate 0.1.0 at commit d7ed78c) upgrades in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from agent.pipeline.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "store-0.1.0"
T0 = 1_764_000_000_000


def build(seq: int, rows: list) -> bytes:
    return orjson.dumps({"seq": seq, "values": [r[4] for r in rows]})


def values(payload: bytes) -> list:
    return orjson.loads(payload)["values"]


def add(s: Store, n: int, start: int = 0) -> None:
    pids = s.pids([("TT101", "°C", "float32")])
    s.add_readings([(T0 + i, "TT101", float(i), 0, None) for i in range(start, start + n)], pids)


def test_a_store_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "data")
    s = Store(tmp_path / "data")
    s.set_uplinks([("mqtt", True), ("mem", False), ("js", True)])
    # mqtt continues: its unacknowledged message keeps seq and bytes, numbering goes on from 3
    assert [(seq, values(p)) for seq, _k, _r, p in s.unacked(0, 10, "mqtt")] == [(2, [4.0, 5.0, 6.0, 7.0])]
    assert [r[4] for r in s.queued("mqtt")] == [float(i) for i in range(8, 30)]
    assert s.take_readings(build, 100, uplink="mqtt") == (3, 22)
    # the new uplinks start from what is still unsent, numbered from 1
    for name in ("mem", "js"):
        assert [r[4] for r in s.queued(name)] == [float(i) for i in range(8, 30)]
        assert s.take_readings(build, 100, uplink=name) == (1, 22)
    # events go to the uplinks that carry them
    assert s.uplink_stats("js")["events_buffered"] == 1 and s.uplink_stats("mem")["events_buffered"] == 0
    assert s.take_events(lambda seq, rows: orjson.dumps(rows), uplink="js") == 2
    assert s.uplink_stats("mqtt")["events_buffered"] == 1  # still there for mqtt
    s.close()


def test_each_uplink_drains_on_its_own(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.set_uplinks([("a", True), ("b", True)])
    add(s, 10)
    assert s.take_readings(build, 10, uplink="a") == (1, 10)
    s.ack([1], "a")
    # b has taken nothing: the readings stay for it, and a has nothing more
    assert s.take_readings(build, 10, uplink="a") is None
    assert [r[4] for r in s.queued("b")] == [float(i) for i in range(10)]
    assert s.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 1
    assert s.take_readings(build, 4, uplink="b") == (1, 4)
    assert s.take_readings(build, 10, uplink="b") == (2, 6)
    assert s.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0  # nobody needs it now
    assert s.uplink_stats("a")["next_seq"] == 2 and s.uplink_stats("b")["next_seq"] == 3
    s.close()


def test_an_uplink_removed_takes_its_queue_with_it(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.set_uplinks([("a", True), ("b", True)])
    add(s, 5)
    s.take_readings(build, 10, uplink="a")
    s.set_uplinks([("a", True)])
    assert s.uplinks() == ["a"]
    assert s.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    s.close()


def test_eviction_is_counted_per_uplink(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.set_uplinks([("fast", True), ("slow", True)])
    add(s, 10)
    s.take_readings(build, 6, uplink="fast")
    raised = s.enforce_limits(1 << 40, 1.0)  # T0 is long ago: everything is past the age bound
    assert raised[0]["uplinks"] == {"fast": 4, "slow": 10} and raised[0]["count"] == 10
    assert s.uplink_stats("slow")["evicted_readings"] == 10
    assert s.uplink_stats("fast")["evicted_readings"] == 4
    assert s.uplink_stats("fast")["readings_buffered"] == 6  # its message still waits for an ack
    s.close()


def test_a_message_refused_again_and_again_is_set_aside_and_can_be_retried(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.set_uplinks([("mqtt", True), ("mem", False)])
    add(s, 3)
    seq, _ = s.take_readings(build, 10, uplink="mem")
    assert s.reject("mem", seq, "code 500: bad data", 3) is None
    assert s.reject("mem", seq, "code 500: bad data", 3) is None
    event = s.reject("mem", seq, "code 500: bad data", 3)
    assert event is not None and event["kind"] == "uplink_rejected" and event["count"] == 3
    assert s.unacked(0, 10, "mem") == []  # set aside: not sent again
    assert [(r[0], r[2], r[3]) for r in s.rejected("mem")] == [(seq, 3, "code 500: bad data")]
    assert s.uplink_stats("mem")["messages_rejected"] == 1
    # the event reaches the uplinks that carry events (mqtt), not mem
    assert s.uplink_stats("mqtt")["events_buffered"] == 1 and s.uplink_stats("mem")["events_buffered"] == 0
    assert s.retry("mem") == 1
    assert [r[0] for r in s.unacked(0, 10, "mem")] == [seq]
    s.close()


def test_sequences_survive_a_lost_database_per_uplink(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.set_uplinks([("mqtt", True), ("js", True)])
    add(s, 4)
    s.take_readings(build, 2, uplink="js")
    assert s.reserve_seq("js") == 2  # a number used on the wire (marked), then the db is lost
    s.close()
    for f in tmp_path.glob("hazgate.db*"):
        f.unlink()
    s = Store(tmp_path)
    s.set_uplinks([("mqtt", True), ("js", True)])
    add(s, 2)
    assert s.take_readings(build, 10, uplink="js")[0] == 3  # above the mark, never reused
    s.close()
