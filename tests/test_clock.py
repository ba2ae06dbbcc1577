"""Time on a box without a real-time clock: wall-clock steps at run time (libfaketime with a
timestamp file, the agent's monotonic clock left real) and an unsynchronized clock."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HAZGATE, ROOT, Proc
from plant import DeviceSpec, PointSpec, Subscriber, parse_ts, write_plant

POLL = 0.2


def faketime_env(stamp_file: Path) -> dict[str, str]:
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not libs:
        pytest.fail("libfaketime is not installed: apt-get install -y faketime")
    stamp_file.write_text("+0\n")
    return {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": str(stamp_file), "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def set_offset(stamp_file: Path, offset: str) -> None:
    """Change the agent's wall clock; atomically, or libfaketime may read a half-written file."""
    tmp = stamp_file.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    tmp.replace(stamp_file)


def without_blips(steps: list[float], max_blips: int = 1) -> list[float]:
    """Steps with cancelling neighbours removed. Now and then libfaketime 0.9.10 serves one
    clock read without its offset (seen in about one run in five); the agent then honestly
    sees a step and its undoing. At most `max_blips` such pairs are tolerated."""
    out: list[float] = []
    blips = 0
    for x in steps:
        if out and abs(out[-1] + x) < 1.5 and blips < max_blips:
            out.pop()
            blips += 1
        else:
            out.append(x)
    return out


def events(sub: Subscriber, kind: str) -> list[dict]:
    """Events of one kind in arrival order, a re-sent message (same seq) counted once."""
    seen: dict[int, dict] = {}
    for m in sub.of_kind("events"):
        seen.setdefault(m.seq, m.body)
    return [e for body in seen.values() for e in body["events"] if e["kind"] == kind]


def test_wall_clock_steps_lose_nothing_and_keep_the_cadence(tmp_path: Path, broker, procs) -> None:
    # the simulator's clock is real: the value is the real time of collection (seconds since it
    # started), so it orders the readings and shows what the stamps should have been
    clock_pt = PointSpec("A_T", "hr:0", "float32", signal={"ramp": [0.0, 3600.0], "period": "3600s"})
    dev = DeviceSpec("plc", [clock_pt], poll_interval=f"{int(POLL * 1000)}ms")
    plant = write_plant(tmp_path, broker.url, [dev])
    plant.start_simulator(procs, "plc")
    stamp = tmp_path / "faketime"
    with Subscriber(broker.port, plant.topic_filter) as sub:
        sub.client.reconnect_delay_set(1, 1)
        agent = Proc([*HAZGATE, "run", "-c", str(plant.config)], tmp_path / "agent.log", env=faketime_env(stamp))
        procs.append(agent)
        sub.wait_until(lambda: len(sub.readings("A_T")) >= 10, 15, "readings")
        set_offset(stamp, "+30s")  # forward step during live polling
        time.sleep(3)
        broker.kill()  # an outage: what follows is back-filled
        time.sleep(1.5)
        set_offset(stamp, "-30s")  # backward step of 60 s during the outage
        time.sleep(2.5)
        agent.send(signal.SIGSTOP)  # our subscriber gets on the new broker first
        paused = time.time()
        broker.start()
        sub.wait_until(lambda: sub.client.is_connected(), 10, "subscriber back")
        time.sleep(0.5)
        agent.send(signal.SIGCONT)
        resumed = time.time()
        sub.wait_until(lambda: len(events(sub, "clock_step")) >= 2, 20, "two clock_step events")
        sub.wait_until(lambda: any(r["backfill"] for r in sub.readings("A_T")), 20, "back-filled readings")
        time.sleep(2.0)
    assert agent.alive(), agent.output()

    raw_steps = events(sub, "clock_step")
    assert all(e["direction"] == ("forward" if e["step_s"] > 0 else "backward") for e in raw_steps)
    steps = without_blips([e["step_s"] for e in raw_steps])
    assert len(steps) == 2 and abs(steps[0] - 30) < 1.5 and abs(steps[1] + 60) < 1.5, raw_steps

    seqs = {m.seq for m in sub.messages if m.seq is not None}
    assert seqs == set(range(1, max(seqs) + 1)), "sequence numbers missing"

    readings = sorted({(r["value"], r["ts"]) for r in sub.readings("A_T")})  # in collection order
    real0 = parse_ts(readings[0][1]) - readings[0][0]  # stamps were true before the first step
    # intervals between collections in real time, leaving out the one the test itself paused
    gaps = [(a[0] + real0, b[0] - a[0]) for a, b in zip(readings, readings[1:], strict=False)
            if not (a[0] + real0 <= resumed and b[0] + real0 >= paused)]
    odd = [(round(t - paused, 2), round(g, 3)) for t, g in gaps if not 0.5 * POLL < g < 1.5 * POLL]
    # Had the cadence followed the wall clock, the +30 s step would have fired ~150 polls at
    # once and the -60 s step paused polling for a minute. A loaded machine may delay a poll.
    assert max(g for _, g in gaps) < 2.0, f"polling paused; odd intervals (s after the pause, length): {odd}"
    bursts = [x for x in odd if x[1] <= 0.5 * POLL]
    assert len(bursts) <= 5, f"a burst of polls: {odd}"
    offsets = [parse_ts(ts) - value for value, ts in readings]
    max_blips = 1
    if len(offsets) > 2 and abs(offsets[-1] - offsets[-2]) > 2:
        # the last reading alone off the line: the libfaketime blip of without_blips, caught
        # before its undoing (seen once in CI); it counts as the one blip tolerated
        offsets, max_blips = offsets[:-1], 0
    jumps = without_blips([b - a for a, b in zip(offsets, offsets[1:], strict=False) if abs(b - a) > 2],
                          max_blips)
    assert len(jumps) == 2 and abs(jumps[0] - 30) < 1.5 and abs(jumps[1] + 60) < 1.5, jumps


def test_unsynchronized_clock_marks_readings_uncertain_until_synchronized(tmp_path: Path, broker, procs) -> None:
    dev = DeviceSpec("plc", [PointSpec("A_LT", "hr:0", "float32", 5.5, unit="m")], poll_interval="200ms")
    plant = write_plant(tmp_path, broker.url, [dev], clock="file")
    synced = tmp_path / "synchronized"
    plant.config.write_text(plant.config.read_text() + f'sync_file = "{synced}"\n')
    plant.start_simulator(procs, "plc")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.readings("A_LT")) >= 5, 15, "readings")
        first = sub.readings("A_LT")[:5]
        assert all(r["quality"] == "uncertain" and r["reason"] == "clock_unsynchronized" for r in first), first
        assert all(r["value"] == 5.5 for r in first), "the value flows on, only flagged"
        status = sub.wait_for(lambda m: m.kind == "status", 5, "status")
        assert status.body["clock"] == {"synchronized": False, "source": "file"}
        out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(plant.config)],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert "NOT synchronized" in out.stdout, out.stdout + out.stderr

        synced.write_text("")  # the time service says: synchronized
        sub.wait_until(lambda: any(r["quality"] == "good" for r in sub.readings("A_LT")), 15, "good readings")
        sub.wait_until(lambda: events(sub, "clock_sync"), 5, "a clock_sync event")
        sub.wait_until(lambda: any(m.body.get("clock", {}).get("synchronized") for m in sub.of_kind("status")),
                       5, "the status message restated as synchronized")
    readings = sub.readings("A_LT")
    switch = next(i for i, r in enumerate(readings) if r["quality"] == "good")
    assert all(r["quality"] == "uncertain" for r in readings[:switch])
    assert all(r["quality"] == "good" and "reason" not in r for r in readings[switch:])
    assert [e["state"] for e in events(sub, "clock_sync")] == ["synchronized"]
    agent.stop()


def test_a_sync_file_that_cannot_be_asked_means_not_synchronized(tmp_path: Path) -> None:
    """A sync_file the system refuses to look at (here a name too long) is no error in every poll."""
    from agent.common.clock import ClockConfig, ClockWatch

    unaskable = tmp_path / ("x" * 300) / "synchronized"
    with pytest.raises(OSError):
        unaskable.exists()  # what the clock must not let through
    watch = ClockWatch(ClockConfig(sync_source="file", sync_file=unaskable), lambda *_: None, lambda *_: None)
    assert watch.synchronized is False
    watch.check()
