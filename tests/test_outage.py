"""Store-and-forward under real faults: the broker killed mid-stream, the agent killed -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from plant import DeviceSpec, PointSpec, Subscriber, parse_ts, simple_points, write_plant

OUTAGE = 30.0  # seconds the broker stays dead


def seq_gaps(seqs: list[int]) -> list[int]:
    have = set(seqs)
    return [s for s in range(1, max(have) + 1) if s not in have]


def ts_gaps(readings: list[dict], interval: float, skip: tuple[tuple[float, float], ...] = ()) -> list[tuple[float, float]]:
    """Holes between consecutive collection times longer than 1.5 intervals (outside `skip`)."""
    stamps = sorted({parse_ts(r["ts"]) for r in readings})
    holes = []
    for a, b in zip(stamps, stamps[1:], strict=False):
        if b - a > 1.5 * interval and not any(lo - interval <= a and b <= hi + 2 * interval for lo, hi in skip):
            holes.append((a, b))
    return holes


@pytest.mark.long(40)
def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, broker, procs) -> None:
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms")
    plant = write_plant(tmp_path, broker.url, [dev])
    plant.start_simulator(procs, "plc")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        sub.client.reconnect_delay_set(1, 1)
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.readings("A_LT")) >= 10, 15, "readings before the outage")
        broker.kill()  # hard: no goodbye to anyone
        killed_at = time.time()
        time.sleep(OUTAGE)
        # hold the agent still while the test's own subscriber gets back on first, so nothing the
        # agent sends lands on a broker with nobody subscribed (the broker keeps no sessions)
        agent.send(signal.SIGSTOP)
        paused = time.time()
        broker.start()
        sub.wait_until(lambda: sub.client.is_connected(), 10, "subscriber back on the broker")
        time.sleep(0.5)  # SUBACK
        agent.send(signal.SIGCONT)
        resumed = time.time()
        sub.wait_until(lambda: any(r["backfill"] for r in sub.readings("A_LT")), 30, "back-filled readings")
        sub.wait_until(lambda: sub.readings("A_LT") and max(parse_ts(r["ts"]) for r in sub.readings("A_LT")) > resumed + 2,
                       30, "live readings after the outage")
        time.sleep(1.0)
    assert agent.alive(), agent.output()
    seqs = [m.seq for m in sub.messages if m.seq is not None]
    assert not seq_gaps(seqs), f"missing seq {seq_gaps(seqs)}"
    readings = sub.readings("A_LT")
    outage = [r for r in readings if killed_at <= parse_ts(r["ts"]) <= paused]
    assert len(outage) >= OUTAGE / 0.2 * 0.9, f"only {len(outage)} readings from the outage window"
    first_seconds = [r for r in outage if parse_ts(r["ts"]) <= killed_at + 3]
    assert len(first_seconds) >= 12, "readings from the first seconds after the drop are missing"
    assert all(r["backfill"] for r in outage[5:]), "outage readings must be marked backfill"
    assert not ts_gaps(readings, 0.2, ((paused, resumed),)), ts_gaps(readings, 0.2, ((paused, resumed),))
    # exactly once after dedup by seq
    by_seq = {}
    for m in sub.of_kind("readings"):
        by_seq.setdefault(m.seq, m.body)
    keys = [(r["tag"], r["ts"]) for body in by_seq.values() for r in body["readings"]]
    assert len(keys) == len(set(keys)), "a reading arrived twice under different sequence numbers"


def test_agent_killed_during_heavy_writes_continues_sequence(tmp_path: Path, broker, procs) -> None:
    points = [PointSpec(f"P{i:03d}", f"hr:{2 * i}", "float32", float(i), unit="m") for i in range(300)]
    dev = DeviceSpec("big", points, poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, broker.url, [dev], publish_interval="100ms")
    plant.start_simulator(procs, "big")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.of_kind("readings")) >= 10, 20, "readings flowing")
        time.sleep(1.1)
        agent.stop(signal.SIGKILL)
        killed_at = time.time()
        seq_at_kill = max(m.seq for m in sub.messages if m.seq is not None)
        plant.start_agent(procs)
        sub.wait_until(lambda: max(m.seq for m in sub.messages if m.seq) > seq_at_kill + 20, 30,
                       "the restarted agent publishing")
        time.sleep(1.0)
    seqs = [m.seq for m in sub.messages if m.seq is not None]
    assert not seq_gaps(seqs), f"missing seq {seq_gaps(seqs)}"
    # a seq seen twice is a re-send of the same stored message, never new content under an old number
    first: dict[int, bytes] = {}
    for m in sub.messages:
        if m.seq is not None:
            assert first.setdefault(m.seq, m.payload) == m.payload, f"seq {m.seq} reused for other content"
    # every poll committed before the kill reached the subscriber: no hole in the collection times
    before = [r for r in sub.readings("P000") if parse_ts(r["ts"]) < killed_at - 0.5]
    assert len(before) >= 10
    assert not ts_gaps(before, 0.2), ts_gaps(before, 0.2)
