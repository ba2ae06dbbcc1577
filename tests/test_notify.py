"""sd_notify against a real AF_UNIX datagram socket set as NOTIFY_SOCKET: READY only once the store
is open, STATUS while waiting, STOPPING on SIGTERM, and WATCHDOG pings that follow real progress:
they go on while a PLC is dead (polls still complete, with timeouts) and stop while the data
dir's file system is frozen (fsfreeze: every write blocks, as on hung storage), then resume.

Why freezing the disk is the hang to test: reads have timeouts, so a dead or silent device
never stops a poll from completing, and the uplink's waits are bounded too. What really hangs a
gateway in the field is storage that stops completing writes (a failing SD card, a stalled USB
disk): the store thread sits in uninterruptible sleep, the uplink waits on it forever while
polling goes on. SIGSTOP of the agent would stop the pings trivially and proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HAZGATE, Proc, free_port
from notifysock import NotifySocket
from plant import DeviceSpec, Subscriber, parse_ts, simple_points, write_plant

from agent.service.notify import Notifier


def add_health(config: Path) -> int:
    port = free_port()
    with config.open("a", encoding="utf-8") as f:
        f.write(f'\n[health]\nlisten = "127.0.0.1:{port}"\n')
    return port


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- the protocol, in process ----------------------------------------------------------------
def test_notifier_speaks_the_datagram_protocol() -> None:
    with NotifySocket() as sock:
        n = Notifier(sock.env(watchdog_usec=4_000_000))
        assert n.enabled and n.watchdog_interval == 4.0
        assert n.ready("3/3 devices up") and n.watchdog() and n.reloading("reloading x") and n.stopping()
        deadline = time.monotonic() + 5
        while len(sock.notes) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        raws = [x.raw for x in sock.notes]
        assert raws[0] == "READY=1\nSTATUS=3/3 devices up"
        assert raws[1] == "WATCHDOG=1"
        assert raws[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and raws[2].endswith("\nSTATUS=reloading x")
        assert raws[3] == "STOPPING=1"
        n.close()
    # abstract socket names ('@...') are supported
    import socket as _s

    abstract = _s.socket(_s.AF_UNIX, _s.SOCK_DGRAM)
    name = f"hazgate-test-{os.getpid()}"
    abstract.bind(b"\0" + name.encode())
    abstract.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert abstract.recv(100) == b"STATUS=hello"
    finally:
        abstract.close()
    # no socket: nothing is sent, nothing fails; a watchdog meant for another PID is not ours
    assert not Notifier({}).ready() and not Notifier({}).enabled
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    assert not other.status("x")  # the manager went away: False, no exception


# --- READY only after start-up -----------------------------------------------------------------
def test_ready_only_once_the_store_opens_then_stopping_on_sigterm(procs, tmp_path: Path) -> None:
    closed = free_port()
    plant = write_plant(tmp_path, f"mqtt://127.0.0.1:{closed}", [DeviceSpec("plc", simple_points("A"))])
    plant.data_dir.write_text("not a folder")  # the data dir cannot be created: the store waits
    with NotifySocket() as sock:
        agent = Proc([*HAZGATE, "run", "-c", str(plant.config)], tmp_path / "agent-notify.log", env=sock.env())
        procs.append(agent)
        waiting = sock.wait_for("STATUS", 15, "a STATUS saying the agent waits for its store", contains="waiting for the store")
        time.sleep(3.0)
        assert not sock.having("READY"), [n.raw for n in sock.notes]
        assert agent.alive() and "cannot open the store" in agent.output()
        # the data dir becomes usable: READY follows within one retry (5 s)
        plant.data_dir.unlink()
        plant.data_dir.mkdir()
        fixed = time.monotonic()
        ready = sock.wait_for("READY", 12, "READY=1 after the store opened")
        assert (plant.data_dir / "hazgate.db").is_file()
        assert ready.at > fixed and ready.at > waiting.at
        assert "devices up" in ready.fields.get("STATUS", ""), ready.raw
        assert not sock.having("WATCHDOG"), "no WATCHDOG_USEC given: no pings"
        print(f"\nREADY {ready.at - fixed:.2f}s after the data dir became usable")
        agent.send(signal.SIGTERM)
        assert agent.p.wait(15) == 0, agent.output()[-2000:]
        sock.wait_for("STOPPING", 2, "STOPPING=1 on SIGTERM")
        # a bad config: exit 2 and not a single datagram
        bad = tmp_path / "bad.toml"
        bad.write_text(plant.config.read_text().replace("[uplink]", "[uplink]\nnonsense = 1"))
        before = len(sock.notes)
        r = subprocess.run([*HAZGATE, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **sock.env()})
        assert r.returncode == 2 and "uplink.nonsense: unknown key" in r.stderr, r.stderr
        time.sleep(0.3)
        assert len(sock.notes) == before


# --- WATCHDOG follows progress ---------------------------------------------------------------------
@pytest.fixture
def loop_fs(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 file system of our own on a loop device (root only), which fsfreeze can freeze."""
    if os.geteuid() != 0 or not shutil.which("fsfreeze") or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root, fsfreeze and mkfs.ext4")
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def freeze(mnt: Path, on: bool) -> None:
    r = subprocess.run(["fsfreeze", "-f" if on else "-u", str(mnt)], capture_output=True, text=True)
    if on and r.returncode != 0:
        pytest.skip(f"fsfreeze does not work here: {r.stderr.strip()}")


@pytest.mark.long(24)
def test_watchdog_pings_follow_progress_and_stop_while_the_disk_hangs(broker, procs, tmp_path: Path,
                                                                       loop_fs: Path) -> None:
    wd_usec = 4_000_000  # stale after 2 s, checked every second
    dev = DeviceSpec("plc", simple_points("A"), poll_interval="200ms", timeout="150ms")
    plant = write_plant(tmp_path, broker.url, [dev])
    data = loop_fs / "data"
    plant.config.write_text(plant.config.read_text().replace(str(plant.data_dir), str(data)))
    port = add_health(plant.config)
    sim = plant.start_simulator(procs, "plc")
    with NotifySocket() as sock, Subscriber(broker.port, plant.topic_filter) as sub:
        agent = Proc([*HAZGATE, "run", "-c", str(plant.config)], tmp_path / "agent.log", env=sock.env(wd_usec))
        procs.append(agent)
        ready = sock.wait_for("READY", 20, "READY=1")
        assert not sock.having("WATCHDOG", until=ready.at), "a ping before READY"
        sub.wait_until(lambda: len(sock.having("WATCHDOG", ready.at)) >= 4, 10, "steady watchdog pings")

        # a dead PLC is not a hung agent: polls complete (bad, with timeouts) and pings go on
        sim.stop(signal.SIGKILL)
        t0 = time.monotonic()
        time.sleep(4.0)
        pings = len(sock.having("WATCHDOG", t0 + 1.0))
        assert pings >= 2, f"only {pings} pings while the PLC was down"
        status, report = healthz(port)
        assert status == 503 and "all devices down" in report["problems"], report
        assert not any(p.startswith("stuck") for p in report["problems"]), report
        plant.start_simulator(procs, "plc")
        sub.wait_until(lambda: healthz(port)[0] == 200, 15, "healthy again with the PLC back")

        # the disk hangs: the store thread blocks in its next write, the uplink waits on it
        frozen_at_wall = time.time()
        freeze(loop_fs, True)
        frozen = time.monotonic()
        try:
            time.sleep(9.0)
            late = sock.having("WATCHDOG", frozen + 5.0)
            assert not late, f"{len(late)} pings 5-9 s into the freeze"
            stopped_after = max((n.at for n in sock.having("WATCHDOG", frozen)), default=frozen) - frozen
            status, report = healthz(port)
            assert status == 503 and any(p.startswith("stuck: ") for p in report["problems"]), report
            assert agent.alive()
        finally:
            freeze(loop_fs, False)
        thawed = time.monotonic()
        resumed = sock.wait_for("WATCHDOG", 6, "pings after the thaw", since=thawed)
        print(f"\nlast ping {stopped_after:.2f}s into the freeze; stuck: {report['problems']}; "
              f"pings again {resumed.at - thawed:.2f}s after the thaw")
        log = agent.output()
        assert "agent stuck: watchdog pings withheld" in log and "progressing again" in log, log[-3000:]

        # nothing lost: the readings polled while the disk hung were held, then stored and sent
        thawed_wall = time.time()
        sub.wait_until(lambda: any(parse_ts(r["ts"]) > thawed_wall + 1 for r in sub.readings("A_LT")),
                       20, "live readings after the thaw")
        time.sleep(1.0)
    seqs = sorted({m.seq for m in sub.messages if m.seq is not None})
    assert seqs == list(range(1, seqs[-1] + 1)), f"seq gaps: {sorted(set(range(1, seqs[-1] + 1)) - set(seqs))}"
    stamps = sorted({parse_ts(r["ts"]) for r in sub.readings("A_LT")})
    during = [t for t in stamps if frozen_at_wall <= t <= frozen_at_wall + 9]
    assert len(during) >= 35, f"only {len(during)} readings from the 9 s freeze (polled every 0.2 s)"
    holes = [(a, b) for a, b in zip(stamps, stamps[1:], strict=False)
             if b - a > 0.5 and frozen_at_wall - 1 <= a <= thawed_wall + 1]
    assert not holes, f"holes in the collection times around the freeze: {holes}"
