"""`hazgate run` end to end: simulated PLCs -> agent subprocess -> real Mosquitto -> paho.

Loopback only; every wait is bounded. The whole file takes about a minute and a half, a third
of it the cadence run.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from plant import (
    RFC3339_MS,
    SCHEMA,
    DeviceSpec,
    Subscriber,
    mixed_points,
    parse_ts,
    retained,
    simple_points,
    write_plant,
)

SEQUENCED = ("readings", "events", "meta")


def _check_envelope(m, plant) -> None:  # noqa: ANN001
    body = m.body
    assert body is not None, f"{m.topic}: payload is not a JSON object: {m.payload[:200]!r}"
    assert body["schema"] == SCHEMA, body
    assert body["gateway"] == plant.gateway_id and body["enterprise"] == plant.enterprise, body
    assert RFC3339_MS.match(body["sent_at"]), body["sent_at"]
    assert abs(parse_ts(body["sent_at"]) - m.at) < 5.0, (body["sent_at"], m.at)
    if m.kind in SEQUENCED:
        assert isinstance(body["seq"], int) and body["seq"] >= 1, body
    else:
        assert "seq" not in body, body


def test_end_to_end_values_envelope_retained_and_last_will(broker, procs, tmp_path: Path) -> None:
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("plc-a", mixed_points("A"))])
    points = plant.points()
    plant.start_simulator(procs, "plc-a")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)

        def all_good():
            good = {r["tag"] for r in sub.readings() if r["quality"] == "good"}
            return good >= set(points)

        sub.wait_until(all_good, 15, f"a good reading of every tag ({agent.log_path})")
        sub.wait_until(lambda: len(sub.of_kind("readings")) >= 4, 10, "four readings messages")

        # every tag: the engineering value of its const signal, its unit, good, not backfill
        first = {}
        for r in sub.readings():
            first.setdefault(r["tag"], r)
            assert r["tag"] in points, f"unknown tag {r['tag']}"
            p = points[r["tag"]]
            assert r["unit"] == p.unit, r
            assert r["quality"] == "good" and "reason" not in r, r
            assert p.matches(r["value"]), f"{r['tag']}: got {r['value']!r}, want {p.expected!r} ±{p.tol}"
            assert r["backfill"] is False, r
            assert RFC3339_MS.match(r["ts"]), r["ts"]
            assert parse_ts(r["ts"]) <= r["_at"] + 0.001, r
        assert set(first) == set(points)

        # the envelope of every message; status carries no seq, the others one gap-free counter
        for m in sub.messages:
            _check_envelope(m, plant)
        status = sub.of_kind("status")[0]
        assert status.body["state"] == "online" and status.body["version"], status.body
        assert RFC3339_MS.match(status.body["started_at"])
        seqs = [m.seq for m in sub.messages if m.kind in SEQUENCED]
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"seq gaps or duplicates: {seqs}"
        assert seqs == sorted(seqs), f"seq out of order: {seqs}"
        meta = sub.of_kind("meta")[0]
        assert meta.seq == 1
        meta_points = {p["tag"]: p for p in meta.body["points"]}
        assert set(meta_points) == set(points)
        assert all(meta_points[t]["unit"] == p.unit for t, p in points.items())

        # a subscriber that connects afterwards gets status (online) and meta, retained
        late = retained(broker.port, plant.topic_filter)
        assert late["status"].retain and late["status"].body["state"] == "online"
        assert late["meta"].retain and late["meta"].body["seq"] == meta.seq

        # SIGKILL: the socket closes, Mosquitto publishes the last will at once
        killed_at = time.time()
        agent.send(signal.SIGKILL)
        will = sub.wait_for(lambda m: m.kind == "status" and m.body and m.body["state"] == "offline",
                            5, "the last-will offline status")
        print(f"\nlast will delivered {1000 * (will.at - killed_at):.0f} ms after SIGKILL")
        assert will.at - killed_at < 2.0, "the will came late: keepalive expiry, not the closed socket"
        _check_envelope(will, plant)
    late = retained(broker.port, plant.topic_filter, ("status",))
    assert late["status"].retain and late["status"].body["state"] == "offline"


def _ts_list(readings: list[dict]) -> list[float]:
    return sorted({parse_ts(r["ts"]) for r in readings})


def test_plc_stopped_goes_bad_and_recovers_while_the_other_keeps_cadence(broker, procs, tmp_path: Path) -> None:
    interval = 0.5
    a = DeviceSpec("plc-a", simple_points("A"), poll_interval="500ms", timeout="300ms")
    b = DeviceSpec("plc-b", simple_points("B"), poll_interval="500ms", timeout="300ms")
    plant = write_plant(tmp_path, broker.url, [a, b])
    a_tags, b_tags = set(plant.tags("plc-a")), set(plant.tags("plc-b"))
    sim_a = plant.start_simulator(procs, "plc-a")
    plant.start_simulator(procs, "plc-b")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: {r["tag"] for r in sub.readings() if r["quality"] == "good"} >= a_tags | b_tags,
                       15, "good readings from both PLCs")
        time.sleep(2 * interval)

        # stop PLC A: within two poll intervals its readings are bad, with a reason
        killed_at = time.time()
        sim_a.stop(signal.SIGKILL)
        bad = sub.wait_until(
            lambda: [r for r in sub.readings(a_tags) if r["quality"] == "bad" and parse_ts(r["ts"]) >= killed_at - 0.01],
            4 * interval + 3, "bad readings from the stopped PLC")
        first_bad = min(parse_ts(r["ts"]) for r in bad)
        went_bad = first_bad - killed_at
        assert went_bad <= 2 * interval, f"bad only {went_bad:.3f}s after the PLC stopped"
        assert {r["tag"] for r in bad if parse_ts(r["ts"]) == first_bad} == a_tags
        for r in bad:
            assert r["value"] is None and r.get("reason"), r
        time.sleep(3.0)
        down = [r for r in sub.readings(a_tags) if parse_ts(r["ts"]) > first_bad]
        assert down and all(r["quality"] == "bad" and r.get("reason") for r in down), down[-3:]

        # restart PLC A on the same port, the agent untouched: back to good
        restarted_at = time.time()
        plant.start_simulator(procs, "plc-a")
        good_again = sub.wait_until(
            lambda: [r for r in sub.readings(a_tags) if r["quality"] == "good" and parse_ts(r["ts"]) >= restarted_at],
            20, "good readings after the PLC restarted")
        recovered = min(parse_ts(r["ts"]) for r in good_again) - restarted_at
        time.sleep(2 * interval)
        assert agent.alive(), agent.output()[-2000:]
        first_reason = next(r["reason"] for r in bad if parse_ts(r["ts"]) == first_bad)
        print(f"\nPLC A: bad {1000 * went_bad:.0f} ms after SIGKILL ({first_reason!r}; "
              f"{len(down)} bad readings while down, reasons {sorted({r['reason'] for r in down})}); "
              f"good again {recovered:.2f} s after restart (simulator start-up included)")

        # PLC B kept its cadence the whole time: all good, no gap over 1.5 intervals
        b_readings = sub.readings(b_tags)
        assert all(r["quality"] == "good" for r in b_readings)
        ts = _ts_list(sub.readings("B_LT"))
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert ts[-1] - ts[0] > 8 * interval
        assert max(gaps) <= 1.5 * interval, f"PLC B gap of {max(gaps):.3f}s"
        # the two PLCs are asked half an interval apart (scheduler.phases), not in one burst
        a_ts = _ts_list([r for r in sub.readings("A_LT") if parse_ts(r["ts"]) < killed_at])
        apart = statistics.median((t - a_ts[0]) % interval for t in ts)
        assert abs(apart - interval / 2) < 0.1, f"PLC B polled {1000 * apart:.0f} ms after PLC A"
        print(f"PLC B: {len(ts)} polls, gaps {min(gaps):.3f}-{max(gaps):.3f}s, {1000 * apart:.0f} ms after PLC A's")


@pytest.mark.long(32)
def test_cadence_does_not_drift_over_half_a_minute(broker, procs, tmp_path: Path) -> None:
    interval, run_for = 0.1, 30.0
    dev = DeviceSpec("plc-fast", simple_points("F"), poll_interval="100ms", timeout="200ms")
    plant = write_plant(tmp_path, broker.url, [dev], publish_interval="1s")
    plant.start_simulator(procs, "plc-fast")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: sub.readings("F_LT"), 15, "the first reading")
        first = parse_ts(sub.readings("F_LT")[0]["ts"])
        sub.wait_until(lambda: parse_ts(sub.readings("F_LT")[-1]["ts"]) >= first + run_for, run_for + 10,
                       f"{run_for:.0f}s of readings")
        assert agent.alive()
    readings = sub.readings("F_LT")
    assert all(r["quality"] == "good" for r in readings)
    ts = _ts_list(readings)
    assert len(ts) == len(readings), "two readings of one tag with the same ts"
    # Each poll's phase: its offset from the nearest slot of the grid first + n*interval. A grid
    # scheduler keeps the phase where it was (a poll late under load does not move the next); one
    # that sleeps an interval after each poll drifts by the poll's duration, poll after poll.
    def phase(t: float) -> float:
        return (t - ts[0] + interval / 2) % interval - interval / 2

    tenth = len(ts) // 10
    early = statistics.median(phase(t) for t in ts[:tenth])
    late = statistics.median(phase(t) for t in ts[-tenth:])
    span = ts[-1] - ts[0]
    expected_polls = round(span / interval) + 1
    print(f"\ncadence: {len(ts)} polls over {span:.3f}s (expected {expected_polls}); median phase "
          f"{1000 * early:.1f} ms in the first tenth, {1000 * late:.1f} ms in the last")
    assert abs(late - early) < 0.2 * interval, f"the cadence moved {1000 * (late - early):.0f} ms in {span:.0f}s"
    # a poll overrun under load skips its slot, by design; a scheduler that skips a tenth is broken
    assert len(ts) >= 0.9 * expected_polls, f"{expected_polls - len(ts)} of {expected_polls} polls skipped"


def test_sigterm_exits_zero_and_publishes_offline(broker, procs, tmp_path: Path) -> None:
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("plc-a", simple_points("A"))])
    plant.start_simulator(procs, "plc-a")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: sub.readings("A_LT"), 15, "a reading")
        term_at = time.time()
        agent.send(signal.SIGTERM)
        try:
            rc = agent.p.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running 5s after SIGTERM:\n{agent.output()[-2000:]}") from None
        took = time.time() - term_at
        assert rc == 0, agent.output()[-2000:]
        offline = sub.wait_for(lambda m: m.kind == "status" and m.body and m.body["state"] == "offline",
                               3, "the offline status")
    # the agent's own offline message (built at shutdown), not the will (built at connect)
    assert parse_ts(offline.body["sent_at"]) >= term_at - 0.002, offline.body
    late = retained(broker.port, plant.topic_filter, ("status",))
    assert late["status"].retain and late["status"].body["state"] == "offline"
    print(f"\nSIGTERM: exit 0 after {took:.2f}s")


def test_demo_without_a_tty_prints_snapshots_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", "--duration", "8"], cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "COLUMNS": "120"})
        try:
            rc = p.wait(45)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(10)
            raise AssertionError(f"demo still running after 45s:\n{out.read_text()[-3000:]}") from None
    text = out.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    lines = [line for line in text.splitlines() if "TK101_LT" in line]
    assert lines, text[-3000:]
    assert any(" good" in line for line in lines), lines

