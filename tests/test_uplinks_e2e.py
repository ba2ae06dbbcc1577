"""Several uplinks at once, through real processes on loopback (issue 15): the agent feeds its
MQTT broker, a ministry-style HTTP platform (SM4-CBC, upper-case hex, an appsecret header) and
a Jiangsu-style TCP platform (`@@`, AES-128-CBC with IV = key, Base64), each a reference
platform (`hazgate receive --listen`), and one platform's trouble costs the others nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from conftest import HAZGATE, Broker, Proc, free_port, wait_port
from plant import DeviceSpec, Plant, PointSpec, Subscriber, parse_ts, simple_points, write_plant
from platformkit import (
    JIANGSU_TCP,
    MEM_HTTP,
    Snapshot,
    received_snapshots,
    snapshot_http,
    value_at,
    write_secrets,
)

from agent.pipeline.store import Store

POLL = "200ms"


def plant_with_platforms(tmp_path: Path, broker: Broker, *, max_rejects: int = 10) -> tuple[Plant, int, int]:
    """The plant, its MQTT uplink, and the two platform uplinks of tests/platformkit.py."""
    dev = DeviceSpec("plc", simple_points("A"), poll_interval=POLL, timeout="150ms")
    plant = write_plant(tmp_path, broker.url, [dev], publish_interval="200ms")
    http_port, tcp_port = free_port(), free_port()
    write_secrets(tmp_path)
    ack = 'ack = { status = [200], field = "code", equals = "0" }\n'
    mem = MEM_HTTP.format(url=f"http://127.0.0.1:{http_port}/api/realtime", batch=50, timeout="2s")
    js = JIANGSU_TCP.format(port=tcp_port, connection="persistent", batch=50, timeout="2s", max_reply=1 << 20)
    # the [[uplinks]] tables go last: a TOML table ends at the next header
    plant.config.write_text(plant.config.read_text() + mem.replace(ack, f"{ack}max_rejects = {max_rejects}\n") + js)
    return plant, http_port, tcp_port


def start_platform(procs: list[Proc], plant: Plant, name: str, listen: str, db: Path, *extra: str) -> Proc:
    port = int(listen.rsplit(":", 1)[1].split("/")[0])
    p = Proc([*HAZGATE, "receive", "--listen", listen, "--uplink-config", str(plant.config),
              "--uplink", name, "--db", str(db), *extra], db.with_suffix(".log"))
    procs.append(p)
    wait_port(port, 15)
    return p


def records(db: Path) -> list[tuple[str, int, str, str]]:
    """(data_id, seq, tag, body) of every record the platform stored, in arrival order."""
    with sqlite3.connect(db) as c:
        return c.execute("SELECT data_id, seq, tag, body FROM platform_records ORDER BY rowid").fetchall()


def messages(db: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT data_id, seq, count FROM platform_messages ORDER BY rowid").fetchall()


def stored_readings(plant: Plant) -> int:
    out = subprocess.run([*HAZGATE, "buffer", "-c", str(plant.config), "stats"], capture_output=True,
                         text=True, timeout=30)
    return int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("stored_readings")))


def still_buffered(plant: Plant, uplink: str) -> int:
    """Readings the store still holds for the uplink (not yet acknowledged by its platform)."""
    store = Store(plant.data_dir, readonly=True)
    try:
        return store.uplink_stats(uplink)["readings_buffered"]
    finally:
        store.close()


def one_copy(rows: list[tuple[str, int, str, str]]) -> list[tuple[str, int, str, str]]:
    """One copy of each message's records: a message that came twice (its acknowledgement was
    lost) has the same data_id, seq and records both times."""
    by_message: dict[str, list] = {}
    order: list[str] = []
    for row in rows:
        if row[0] not in by_message:
            order.append(row[0])
            by_message[row[0]] = []
        by_message[row[0]].append(row)
    out = []
    for data_id in order:
        got = by_message[data_id]
        size = len(got)
        for k in range(1, size + 1):  # the smallest repeating prefix: one copy
            if size % k == 0 and got[:k] * (size // k) == got:
                out += got[:k]
                break
    return out


def same_id_same_message(msgs: list[tuple[str, int, int]]) -> None:
    """No seq or data_id was ever reused for another message."""
    by_id: dict[str, tuple[int, int]] = {}
    by_seq: dict[int, str] = {}
    for data_id, seq, count in msgs:
        assert by_id.setdefault(data_id, (seq, count)) == (seq, count), f"data_id {data_id} reused"
        assert by_seq.setdefault(seq, data_id) == data_id, f"seq {seq} reused for another message"


@pytest.mark.long(37)
def test_three_uplinks_one_platform_down(tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    plant, http_port, tcp_port = plant_with_platforms(tmp_path, broker)
    http_url = f"http://127.0.0.1:{http_port}/api/realtime"
    plant.start_simulator(procs, "plc")
    http_db, tcp_db = tmp_path / "mem.db", tmp_path / "js.db"
    http = start_platform(procs, plant, "mem", http_url, http_db)
    start_platform(procs, plant, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", tcp_db)
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(records(http_db)) >= 10 and len(records(tcp_db)) >= 10, 30, "all three flowing")
        http.stop()  # the HTTP platform refuses connections for 20 s
        down_from = time.time()
        time.sleep(20)
        down_to = time.time()
        # the retained status tells every uplink's state (the platform sees the park is down)
        online = [m.body for m in sub.of_kind("status") if m.body and m.body.get("state") == "online"]
        assert online[-1]["uplinks"]["mem"]["state"] == "down", online[-1]
        assert online[-1]["uplinks"]["jiangsu"]["state"] == "up" and online[-1]["uplinks"]["mqtt"]["state"] == "up"
        start_platform(procs, plant, "mem", http_url, http_db)

        def truth() -> set[tuple[str, float]]:  # every reading collected before the platform came back
            return {(r["tag"], parse_ts(r["ts"])) for m in sub.of_kind("readings") for r in m.body["readings"]
                    if parse_ts(r["ts"]) < down_to}

        def at_http() -> set[tuple[str, float]]:
            return {(tag, parse_ts(orjson.loads(body)["COLLECT_TIME"])) for _, _, tag, body in records(http_db)}

        sub.wait_until(lambda: truth() <= at_http(), 40, "the outage back-filled to the HTTP platform")
        agent.stop()
        assert agent.p.returncode == 0, agent.output()[-3000:]
        # MQTT: no gap, and the outage added no latency beyond one interval
        seqs = sorted({m.seq for m in sub.messages if m.seq is not None})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap on the MQTT uplink"
        lat = [m.at - parse_ts(r["ts"]) for m in sub.of_kind("readings") for r in m.body["readings"]
               if down_from + 1 < parse_ts(r["ts"]) < down_to - 1]
        assert lat and max(lat) < 0.2 + 1.0, f"MQTT readings late while the HTTP platform was down: {max(lat):.2f}s"
        before = len(truth())
    # TCP: kept receiving through the HTTP outage, every reading once
    with sqlite3.connect(tcp_db) as c:
        arrivals = [time.mktime(time.strptime(r[0][:19], "%Y-%m-%dT%H:%M:%S")) for r in c.execute(
            "SELECT received_at FROM platform_messages ORDER BY rowid")]
    during = [t for t in arrivals if down_from + 1 < t < down_to - 1]
    assert during and max(b - a for a, b in zip(during, during[1:], strict=False)) <= 2.0
    assert len(one_copy(records(tcp_db))) >= before
    # HTTP: the outage came as back-fill, in order, each reading once
    http_rows = one_copy(records(http_db))
    stamps = [(tag, parse_ts(orjson.loads(body)["COLLECT_TIME"])) for _, _, tag, body in http_rows]
    assert len(set(stamps)) == len(stamps), "a reading came twice"
    outage = [ts for tag, ts in stamps if tag == "A_LT" and down_from + 1 < ts < down_to - 1]
    assert outage and outage == sorted(outage), "back-fill out of order"
    same_id_same_message(messages(http_db))
    same_id_same_message(messages(tcp_db))


def test_kill_while_a_platform_is_down_loses_nothing(tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    plant, http_port, tcp_port = plant_with_platforms(tmp_path, broker)
    plant.start_simulator(procs, "plc")
    http_db, tcp_db = tmp_path / "mem.db", tmp_path / "js.db"
    start_platform(procs, plant, "mem", f"http://127.0.0.1:{http_port}/api/realtime", http_db)
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(records(http_db)) >= 10, 30, "the HTTP platform receiving")
        time.sleep(2)  # the TCP platform is down all this time
        agent.stop(signal.SIGKILL)
        agent = plant.start_agent(procs)
        start_platform(procs, plant, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", tcp_db)
        time.sleep(4)
        agent.stop()
        seqs = sorted({m.seq for m in sub.messages if m.seq is not None})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap on the MQTT uplink"
    stored = stored_readings(plant)
    # every reading stored reached each platform, or is still in the store for it (the last
    # polls before the clean stop): nothing lost, nothing twice
    assert len(one_copy(records(http_db))) + still_buffered(plant, "mem") == stored
    assert len(one_copy(records(tcp_db))) + still_buffered(plant, "jiangsu") == stored
    same_id_same_message(messages(http_db))
    same_id_same_message(messages(tcp_db))


def test_a_refused_message_is_set_aside_and_the_rest_flows(tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    plant, http_port, _tcp_port = plant_with_platforms(tmp_path, broker, max_rejects=3)
    text = plant.config.read_text()
    start = text.index('[[uplinks]]\nname = "jiangsu"')  # this test needs the HTTP platform only
    plant.config.write_text(text[:start])
    plant.start_simulator(procs, "plc")
    http_db = tmp_path / "mem.db"
    start_platform(procs, plant, "mem", f"http://127.0.0.1:{http_port}/api/realtime", http_db, "--reject", "seq=3")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        event = sub.wait_for(lambda m: m.kind == "events" and any(
            e["kind"] == "uplink_rejected" for e in m.body["events"]), 45, "the uplink_rejected event")
        rejected = next(e for e in event.body["events"] if e["kind"] == "uplink_rejected")
        assert rejected["uplink"] == "mem" and rejected["seq"] == 3 and rejected["rejects"] == 3
        sub.wait_until(lambda: max((s for _, s, _ in messages(http_db)), default=0) >= 6, 30, "messages after 3")
        agent.stop()
    assert 3 not in {s for _, s, _ in messages(http_db)}  # never accepted
    out = subprocess.run([*HAZGATE, "buffer", "-c", str(plant.config), "export", "--uplink", "mem", "--rejected"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    exported = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [(r["seq"], r["rejects"]) for r in exported] == [(3, 3)], exported
    assert "seq=3" in exported[0]["reason"] or exported[0]["reason"], exported[0]


def snapshots(db: Path, step_ms: int) -> list[Snapshot]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return received_snapshots(c, step_ms)


@pytest.mark.long(48)
def test_a_snapshot_platform_down_30_s_gets_each_missed_10_s_snapshot_with_its_values(
        tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    """Snapshot mode (issue 15): interval 10 s, the platform down for 30 s. Afterwards it holds
    one snapshot per boundary, none twice; the 3 (or 4) boundaries of the outage came after it;
    those built while the uplink was down are flagged back-fill and come in order after the
    newest; every snapshot holds the values and qualities the gateway read at its instant (as
    its MQTT uplink published them)."""
    step = 10_000
    points = [PointSpec("A_LT", "hr:0", "float32", signal={"ramp": [0.0, 3600.0], "period": "3600s"},
                        unit="m", kind="level"),
              PointSpec("A_ON", "hr:2.0", "bool", signal={"steps": [["0s", False], ["3s", True]], "repeat": "7s"},
                        kind="interlock_status")]
    plant = write_plant(tmp_path, broker.url, [DeviceSpec("plc", points, poll_interval=POLL, timeout="150ms")],
                        publish_interval="200ms")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/realtime"
    write_secrets(tmp_path)
    plant.config.write_text(plant.config.read_text() + snapshot_http(url, "10s"))
    plant.start_simulator(procs, "plc")
    db = tmp_path / "mem.db"
    platform = start_platform(procs, plant, "mem", url, db)
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: snapshots(db, step), 20, "a first snapshot")
        before = len(snapshots(db, step))
        platform.stop()
        down = time.time() * 1000
        time.sleep(30)
        start_platform(procs, plant, "mem", url, db)
        back = time.time() * 1000

        def caught_up() -> bool:
            ats = {snap.at for snap in snapshots(db, step)}
            return ats >= set(range(min(ats), int(back) // step * step + 1, step))

        sub.wait_until(caught_up, 25, "a snapshot for every boundary of the outage")
        agent.stop()
        assert agent.p.returncode == 0, agent.output()[-3000:]
    truth = [(round(parse_ts(r["ts"]) * 1000), r["tag"], r["value"], r["quality"]) for r in sub.readings()]
    snaps = snapshots(db, step)
    ats = [snap.at for snap in snaps]
    assert sorted(ats) == list(range(min(ats), max(ats) + 1, step))  # one per interval, none twice
    outage = [at for at in ats if down <= at + 1000 < back]  # due while the platform was away
    assert len(outage) >= 3
    assert all(ats.index(at) >= before for at in outage)  # all came after it
    backfill = [snap for snap in snaps if snap.backfill]
    assert backfill and {snap.at for snap in backfill} <= set(outage)
    first = snaps.index(backfill[0])
    assert [snap.at for snap in backfill] == sorted(snap.at for snap in backfill)
    assert not snaps[first - 1].backfill and snaps[first - 1].at > backfill[-1].at
    for snap in snaps:
        assert snap.records == value_at(truth, snap.at), snap
    assert {v for snap in snaps for _ts, v, _q in [snap.records["A_ON"]]} == {False, True}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.long(27)
def test_a_slow_platform_costs_the_others_nothing(tmp_path: Path, procs: list[Proc], broker: Broker) -> None:
    """The HTTP platform answers each message after 2 s: MQTT and TCP keep their pace, the
    agent's memory stays flat while the slow uplink's backlog grows (it stays in the store)."""
    plant, http_port, tcp_port = plant_with_platforms(tmp_path, broker)
    plant.start_simulator(procs, "plc")
    http_db, tcp_db = tmp_path / "mem.db", tmp_path / "js.db"
    start_platform(procs, plant, "mem", f"http://127.0.0.1:{http_port}/api/realtime", http_db, "--delay", "2")
    start_platform(procs, plant, "jiangsu", f"tcp://127.0.0.1:{tcp_port}", tcp_db)
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(records(tcp_db)) >= 10 and len(records(http_db)) >= 1, 30, "all three flowing")
        time.sleep(3)
        rss_start, t_start = rss_kb(agent.pid), time.time()
        time.sleep(20)
        rss_end, t_end = rss_kb(agent.pid), time.time()
        lat = [m.at - parse_ts(r["ts"]) for m in sub.of_kind("readings") for r in m.body["readings"]
               if t_start < parse_ts(r["ts"]) < t_end - 1]
        agent.stop()
    assert lat and max(lat) < 0.2 + 1.0, f"MQTT readings late beside a slow platform: {max(lat):.2f}s"
    with sqlite3.connect(tcp_db) as c:
        arrivals = [time.mktime(time.strptime(r[0][:19], "%Y-%m-%dT%H:%M:%S")) for r in c.execute(
            "SELECT received_at FROM platform_messages ORDER BY rowid")]
    during = [t for t in arrivals if t_start < t < t_end - 1]
    assert during and max(b - a for a, b in zip(during, during[1:], strict=False)) <= 2.0
    slow = len(messages(http_db))
    assert slow <= (t_end - t_start) / 2 + 6, slow  # one message per 2 s reply at most: it was slow
    assert rss_end <= rss_start * 1.10 + 2048, f"agent memory grew beside a slow platform: {rss_start} -> {rss_end} kB"
