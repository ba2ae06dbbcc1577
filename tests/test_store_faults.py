"""The store under real faults: torn writes after kill -9, a full disk, a read-only data dir,
and a long outage against the size limit. Each ends in recovery with nothing lost silently."""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import HAZGATE, Proc
from plant import DeviceSpec, PointSpec, Subscriber, parse_ts, write_plant


def seq_reuse(messages: list, known: dict[int, bytes] | None = None) -> list[int]:
    """Sequence numbers that arrived carrying two different payloads."""
    first = dict(known or {})
    return [m.seq for m in messages if m.seq is not None and first.setdefault(m.seq, m.payload) != m.payload]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False) -> Iterator[None]:
    """A small filesystem of our own (root only); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


def many_points(n: int) -> list[PointSpec]:
    return [PointSpec(f"P{i:03d}", f"hr:{2 * i}", "float32", float(i), unit="m") for i in range(n)]


def add_store_limits(config: Path, max_size: str) -> None:
    config.write_text(config.read_text() + f'\n[store]\nmax_size = "{max_size}"\n')


def test_torn_writes_after_kill_recover_and_acks_were_true(tmp_path: Path, broker, procs) -> None:
    dev = DeviceSpec("big", many_points(200), poll_interval="100ms", timeout="90ms")
    plant = write_plant(tmp_path / "plant", broker.url, [dev], publish_interval="100ms")
    plant.start_simulator(procs, "big")
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent = plant.start_agent(procs)
        sub.wait_until(lambda: len(sub.of_kind("readings")) >= 15, 20, "readings flowing")
        agent.stop(signal.SIGKILL)  # mid-stream: writes, publishes and acks in flight
        time.sleep(0.5)  # acks still travelling reach the subscriber
        crashed = tmp_path / "crashed"
        shutil.copytree(plant.data_dir, crashed)
        db = sqlite3.connect(crashed / "hazgate.db")
        next_seq = int(db.execute("SELECT next_seq FROM uplinks WHERE name='mqtt'").fetchone()[0])
        unacked = {r[0] for r in db.execute("SELECT seq FROM outbox")}
        db.close()
        received = {m.seq for m in sub.messages if m.seq is not None}
        acked = set(range(1, next_seq)) - unacked
        assert acked and acked <= received, f"reported acknowledged but never delivered: {sorted(acked - received)}"

        before = {m.seq: m.payload for m in sub.messages if m.seq is not None}
        rng = random.Random(20261122)
        for i, victim in enumerate(["hazgate.db-wal", "hazgate.db-wal", "hazgate.db"]):
            torn = tmp_path / f"torn-{i}"
            shutil.copytree(crashed, torn)
            f = torn / victim
            if f.exists() and f.stat().st_size:
                with open(f, "r+b") as fh:
                    fh.truncate(rng.randrange(f.stat().st_size))
            config = plant.root / f"torn-{i}.toml"  # beside the point tables it names
            config.write_text(plant.config.read_text().replace(str(plant.data_dir), str(torn)))
            top = max(m.seq for m in sub.messages if m.seq is not None)
            start = len(sub.messages)
            again = Proc([*HAZGATE, "run", "-c", str(config)], tmp_path / f"torn-{i}.log")
            procs.append(again)
            sub.wait_until(lambda top=top: max(m.seq for m in sub.messages if m.seq) > top + 3, 20,
                           f"the agent publishing again after truncating {victim}")
            assert again.alive(), again.output()
            again.stop()
            assert again.p.returncode == 0, again.output()
            # each copy is its own alternative history after the crash: within it, and against
            # what the crashed agent had sent, no number may come back with other content
            reused = seq_reuse(sub.messages[start:], before)
            assert not reused, f"after truncating {victim}: seq reused for new content: {reused}"


def test_disk_full_keeps_live_data_flowing_then_recovers(tmp_path: Path, broker, procs) -> None:
    data = tmp_path / "plant" / "data"
    with tmpfs(data, "2m"):
        dev = DeviceSpec("big", many_points(400), poll_interval="100ms", timeout="90ms")
        plant = write_plant(tmp_path / "plant", broker.url, [dev])
        add_store_limits(plant.config, "1GiB")  # the disk fills before the store's own bound
        plant.start_simulator(procs, "big")
        broker.stop()  # everything buffers until the disk is full
        agent = plant.start_agent(procs)
        deadline = time.monotonic() + 40
        while "store refuses writes" not in agent.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "store refuses writes" in agent.output(), agent.output()[-2000:]
        full_at = time.time()
        agent.send(signal.SIGSTOP)  # our subscriber gets on the new broker first
        broker.start()
        with Subscriber(broker.port, plant.topic_filter) as sub:
            agent.send(signal.SIGCONT)
            # the disk is still full: live readings still reach the platform, from memory
            sub.wait_until(lambda: any(parse_ts(r["ts"]) > full_at + 1 for r in sub.readings("P000")),
                           20, "live readings while the disk is full")
            assert agent.alive(), agent.output()[-2000:]
            remount(data, "size=64m")  # space returns
            deadline = time.monotonic() + 20
            while "store writable again" not in agent.output() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "store writable again" in agent.output(), agent.output()[-2000:]
            # the backlog buffered before the disk filled drains too
            sub.wait_until(lambda: any(r["backfill"] for r in sub.readings("P000")), 30, "the backlog")
            back = time.time()
            sub.wait_until(lambda: any(parse_ts(r["ts"]) > back + 1 for r in sub.readings("P000")),
                           20, "live readings after recovery")
            time.sleep(2.0)
        assert agent.alive()
        out = agent.output()
        assert out.count("holding readings in memory") == 1, "the error is logged once, not per poll"
        assert out.count("sending live readings from memory") == 1
        agent.stop()
    seqs = {m.seq for m in sub.messages if m.seq is not None}
    assert seqs == set(range(min(seqs), max(seqs) + 1)), "sequence numbers with holes"
    assert not seq_reuse(sub.messages), "seq reused for other content"
    stamps = sorted(parse_ts(r["ts"]) for r in sub.readings("P000"))
    holes = [(a, b) for a, b in zip(stamps, stamps[1:], strict=False) if b - a > 0.35]
    assert not holes, f"readings missing between {holes[:3]}"


def test_read_only_data_dir_at_start_polls_on_and_recovers(tmp_path: Path, broker, procs) -> None:
    data = tmp_path / "plant" / "data"
    with tmpfs(data, "32m", readonly=True):
        dev = DeviceSpec("plc", many_points(5), poll_interval="200ms")
        plant = write_plant(tmp_path / "plant", broker.url, [dev])
        plant.start_simulator(procs, "plc")
        with Subscriber(broker.port, plant.topic_filter) as sub:
            agent = plant.start_agent(procs)
            deadline = time.monotonic() + 15
            while "cannot open the store" not in agent.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "cannot open the store" in agent.output(), agent.output()
            assert "data_dir" in agent.output()
            started = time.time()
            time.sleep(3.0)
            assert agent.alive(), agent.output()
            remount(data, "rw")
            sub.wait_until(lambda: any(parse_ts(r["ts"]) < started + 2 for r in sub.readings("P000")),
                           20, "readings polled while the data dir was read-only")
        assert agent.output().count("cannot open the store") == 1
        agent.stop()


@pytest.mark.long(57)
def test_long_outage_against_the_size_limit_keeps_memory_flat(tmp_path: Path, broker, procs) -> None:
    dev = DeviceSpec("big", many_points(500), poll_interval="100ms", timeout="90ms")
    broker.stop()
    plant = write_plant(tmp_path / "plant", broker.url, [dev])
    add_store_limits(plant.config, "2MiB")
    plant.start_simulator(procs, "big")
    agent = plant.start_agent(procs)
    deadline = time.monotonic() + 40
    while "buffer eviction" not in agent.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "buffer eviction" in agent.output(), agent.output()[-2000:]
    early = rss_kb(agent.pid)
    time.sleep(20)  # more than ten evictions later
    late = rss_kb(agent.pid)
    assert late <= early * 1.10, f"RSS grew from {early} kB to {late} kB during the outage"
    db_file = plant.data_dir / "hazgate.db"
    assert db_file.stat().st_size < 4 * 2**20
    agent.send(signal.SIGSTOP)  # reconnecting within a second, it would send before we subscribe
    broker.start()
    with Subscriber(broker.port, plant.topic_filter) as sub:
        agent.send(signal.SIGCONT)
        sub.wait_until(lambda: sum(1 for m in sub.of_kind("events")
                                   for e in m.body["events"] if e["kind"] == "buffer_eviction") >= 2,
                       30, "eviction events delivered")
        evictions = [e for m in sub.of_kind("events") for e in m.body["events"] if e["kind"] == "buffer_eviction"]
    assert all(e["count"] > 0 and e["from_ts"] <= e["to_ts"] for e in evictions)
    agent.stop()
