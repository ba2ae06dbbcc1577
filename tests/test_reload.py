"""Reload and stop under live traffic: SIGHUP with a valid config swaps devices in place (unchanged
ones keep polling, nothing pending is lost, the receiver sees no seq gap); SIGHUP with an invalid
config is refused with its file:line problems and the old config keeps running; SIGTERM under
load (back-fill plus 300 live points) ends in bounded time and a restart continues the sequence.
"""

from __future__ import annotations

import re
import signal
import statistics
import time
from pathlib import Path

from conftest import HAZGATE, Proc, free_port
from notifysock import NotifySocket
from plant import DeviceSpec, PointSpec, Subscriber, parse_ts, simple_points, write_plant
from test_durable import overruns


def seq_check(sub: Subscriber) -> list[int]:
    """Every sequenced message from 1 to the last, each seq always with the same content."""
    first: dict[int, bytes] = {}
    for m in sub.messages:
        if m.seq is not None:
            assert first.setdefault(m.seq, m.payload) == m.payload, f"seq {m.seq} reused for other content"
    seqs = sorted(first)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    assert not missing, f"seq gaps at the receiver: {missing[:20]}"
    return seqs


def holes(stamps: list[float], limit: float) -> list[tuple[float, float]]:
    return [(a, b) for a, b in zip(stamps, stamps[1:], strict=False) if b - a > limit]


def wait_log(agent: Proc, text: str, timeout: float, after: int = 0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = agent.output()
        if text in log[after:]:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the agent log within {timeout}s:\n{agent.output()[-3000:]}")


def test_sighup_valid_then_invalid_config_under_live_traffic(broker, procs, tmp_path: Path) -> None:
    interval = 0.5
    a, b, c, d = (DeviceSpec(f"plc-{x}", simple_points(x.upper()), unit=n, poll_interval="500ms", timeout="300ms")
                  for n, x in enumerate("abcd", start=1))
    for dev in (b, c, d):
        dev.port = a.port  # one PLC, four unit ids: one simulator serves them all
    plant = write_plant(tmp_path, broker.url, [a, b, c, d])
    plant.start_simulator(procs, "plc-a")
    write_plant(tmp_path, broker.url, [a, b, c])  # the running config: A, B, C
    b_faster = DeviceSpec("plc-b", b.points, port=b.port, unit=b.unit, poll_interval="300ms", timeout="200ms")
    with NotifySocket() as sock, Subscriber(broker.port, plant.topic_filter) as sub:
        agent = Proc([*HAZGATE, "run", "-c", str(plant.config)], tmp_path / "agent.log", env=sock.env())
        procs.append(agent)
        sock.wait_for("READY", 20, "READY=1")
        tags = {x: set(plant.tags(f"plc-{x}")) for x in "abcd"}
        sub.wait_until(lambda: {r["tag"] for r in sub.readings() if r["quality"] == "good"}
                       >= tags["a"] | tags["b"] | tags["c"], 15, "good readings from A, B and C")
        time.sleep(2.0)

        # valid: B changed (faster), C removed, D added, A untouched
        write_plant(tmp_path, broker.url, [a, b_faster, d])
        mark = len(agent.output())
        reload_at, reload_mono = time.time(), time.monotonic()
        agent.send(signal.SIGHUP)
        log = wait_log(agent, "config reloaded", 10, mark)
        line = next(x for x in log[mark:].splitlines() if "config reloaded" in x)
        assert "kept='plc-a'" in line and "restarted='plc-b'" in line, line
        assert "started='plc-d'" in line and "stopped='plc-c'" in line, line
        sock.wait_for("RELOADING", 5, "RELOADING=1", since=reload_mono)
        sock.wait_for("READY", 5, "READY=1 after the reload", since=reload_mono)
        sub.wait_until(lambda: [r for r in sub.readings(tags["d"]) if r["quality"] == "good"], 10, "readings from D")
        meta = sub.wait_for(lambda m: m.kind == "meta" and m.at >= reload_at and m.body
                            and tags["d"] <= {p["tag"] for p in m.body["points"]}, 10, "meta with D's points")
        assert not tags["c"] & {p["tag"] for p in meta.body["points"]}, "C's points still in the meta"
        time.sleep(3.0)

        # invalid: a bad duration and an unknown key; refused, each problem with its file:line
        good = plant.config.read_text()
        bad = good.replace('poll_interval = "500ms"', 'poll_interval = "fast"', 1)
        bad = bad.replace("[uplink]\n", "[uplink]\ncolour = \"red\"\n", 1)
        plant.config.write_text(bad)
        lines = bad.splitlines()
        dur_line = next(n for n, x in enumerate(lines, 1) if x == 'poll_interval = "fast"')
        key_line = next(n for n, x in enumerate(lines, 1) if x.startswith("colour"))
        mark = len(agent.output())
        refused_at, refused_mono = time.time(), time.monotonic()
        agent.send(signal.SIGHUP)
        log = wait_log(agent, "reload refused", 10, mark)
        assert re.search(rf"config problem: \S*gateway\.toml:{dur_line}: devices\.poll_interval: ", log[mark:]), log[mark:]
        assert re.search(rf"config problem: \S*gateway\.toml:{key_line}: uplink\.colour: unknown key", log[mark:]), log[mark:]
        sock.wait_for("READY", 5, "READY=1 after the refused reload", since=refused_mono)
        time.sleep(3.0)
        plant.config.write_text(good)
        assert agent.alive(), agent.output()[-3000:]
        end = time.time()
        time.sleep(1.0)

    # A never stopped: one 'device up', no hole in its collection times over both reloads
    log = agent.output()
    assert log.count("msg='device up' device='plc-a'") == 1, log
    a_ts = sorted({parse_ts(r["ts"]) for r in sub.readings(tags["a"])})
    assert a_ts[0] < reload_at - 2 and a_ts[-1] > end - 1.5
    assert not holes(a_ts, 1.5 * interval), holes(a_ts, 1.5 * interval)
    # B: restarted at once, polled at its new cadence afterwards
    b_ts = sorted({parse_ts(r["ts"]) for r in sub.readings("B_LT")})
    assert not holes(b_ts, 1.5), holes(b_ts, 1.5)
    after = [t for t in b_ts if t > reload_at + 1]
    step = statistics.median(y - x for x, y in zip(after, after[1:], strict=False))
    assert abs(step - 0.3) < 0.05, f"B polls every {step:.3f}s after the reload"
    # C: everything it polled until it was stopped arrived; nothing after
    c_ts = sorted({parse_ts(r["ts"]) for r in sub.readings(tags["c"])})
    assert c_ts[-1] < reload_at + 1.0 and c_ts[-1] > reload_at - 1.0, (c_ts[-1], reload_at)
    assert not holes(c_ts, 1.5 * interval)
    # D: from the reload on, all good, still polled after the refused reload
    d = [r for r in sub.readings(tags["d"])]
    assert min(parse_ts(r["ts"]) for r in d) > reload_at - 0.01
    assert max(parse_ts(r["ts"]) for r in d) > refused_at + 2
    seqs = seq_check(sub)
    print(f"\nreloads: {len(seqs)} messages gap-free; A {len(a_ts)} polls without a hole; "
          f"B every {step:.3f}s after; C stopped {c_ts[-1] - reload_at:+.2f}s from the SIGHUP")


def test_sigterm_under_load_exits_in_bounded_time_and_a_restart_continues_the_sequence(
        broker, procs, tmp_path: Path) -> None:
    points = [PointSpec(f"P{i:03d}", f"hr:{2 * i}", "float32", float(i), unit="m") for i in range(300)]
    dev = DeviceSpec("big", points, poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, broker.url, [dev], publish_interval="100ms")
    health = free_port()
    plant.config.write_text(plant.config.read_text() + f'\n[health]\nlisten = "127.0.0.1:{health}"\n')
    plant.start_simulator(procs, "big")
    broker.stop()  # a backlog first: the platform is unreachable for a while
    agent = plant.start_agent(procs)
    time.sleep(6.0)
    agent.send(signal.SIGSTOP)  # reconnecting within a second, it would send before we subscribe
    broker.start()
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent.send(signal.SIGCONT)
        sub.wait_until(lambda: any(r["backfill"] for r in sub.readings("P000")), 30, "back-fill under way")
        skipped = overruns(health)  # polls that ran long on a loaded box: never collected
        term_at = time.time()
        t0 = time.monotonic()
        agent.send(signal.SIGTERM)
        rc = agent.p.wait(20)
        took = time.monotonic() - t0
        assert rc == 0, agent.output()[-3000:]
        assert took < 10.0, f"SIGTERM took {took:.1f}s"
        assert "agent stopped" in agent.output()
        seq_at_stop = max(m.seq for m in sub.messages if m.seq)
        again = plant.start_agent(procs)
        restarted_at = time.time()
        sub.wait_until(lambda: any(parse_ts(r["ts"]) > restarted_at + 2 for r in sub.readings("P000")), 30,
                       "live readings from the restarted agent")
        time.sleep(2.0)
        assert again.alive()
        skipped += overruns(health)
    seqs = seq_check(sub)
    assert seqs[-1] > seq_at_stop
    stamps = sorted({parse_ts(r["ts"]) for r in sub.readings("P000")})
    gaps = holes(stamps, 0.3)
    # the only hole: between the last poll before SIGTERM and the first after the restart (and
    # the slots of polls the scheduler skipped)
    stop_gaps = [(a, b) for a, b in gaps if a <= term_at + 0.3 and b >= restarted_at]
    others = [(a, b) for a, b in gaps if (a, b) not in stop_gaps]
    assert len(stop_gaps) <= 1, gaps
    assert sum(round((b - a) / 0.2) - 1 for a, b in others) <= skipped, (others, skipped)
    assert stamps[0] < term_at - 5, "the back-fill from before the broker came back is missing"
    print(f"\nSIGTERM during back-fill: exit 0 after {took:.2f}s; seq 1..{seqs[-1]} gap-free "
          f"across the restart (seq {seq_at_stop} at the stop)")


def test_an_uplink_whose_protocol_changes_needs_a_restart(tmp_path: Path) -> None:
    """A reload keeps each uplink object: a name that now names another protocol is refused."""
    from platformkit import JIANGSU_TCP, MEM_HTTP, write_secrets

    from agent.config.loader import load_config
    from agent.service.run import restart_needed

    plant = write_plant(tmp_path, "mqtt://127.0.0.1:1883", [DeviceSpec("plc", simple_points("A"))])
    write_secrets(tmp_path)
    base = plant.config.read_text()
    plant.config.write_text(base + MEM_HTTP.format(url="http://127.0.0.1:9/x", batch=50, timeout="2s"))
    old = load_config(plant.config)
    plant.config.write_text(base + JIANGSU_TCP.format(port=9, connection="persistent", batch=50, timeout="2s",
                                                      max_reply=1 << 20).replace('name = "jiangsu"', 'name = "mem"'))
    new = load_config(plant.config)
    assert restart_needed(old, new) == [
        "uplinks changed from ['mqtt (mqtt)', 'mem (http)'] to ['mqtt (mqtt)', 'mem (tcp)']: restart the service "
        "to apply it"]
    assert restart_needed(old, old) == []
