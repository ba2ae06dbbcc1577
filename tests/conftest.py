"""Shared fixtures: free loopback ports, a real Mosquitto broker, processes ended by PID."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.common import loopback
from agent.common.loopback import wait_port  # noqa: F401 - tests import it from here

ROOT = Path(__file__).resolve().parent.parent
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest-xdist
_ports = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on. Under pytest-xdist each worker picks from a
    range of its own, below the kernel's ephemeral ports (32768 and up), so two workers never
    hand out the same port and no outgoing connection takes it meanwhile."""
    if not WORKER:
        return loopback.free_port()
    base = 20_000 + 1_000 * int(WORKER.removeprefix("gw"))
    for _ in range(1_000):
        port = base + next(_ports) % 1_000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 127.0.0.1:{base}-{base + 999}")
HAZGATE = [sys.executable, "-m", "agent.cli"]


class Proc:
    """A child process the test owns; stopped by its PID only."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, cwd: Path = ROOT):
        self.args, self.log_path = args, log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                  env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.p.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.alive():
            os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()
        return self.p.returncode

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Collects started processes and ends every one of them, by PID, after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop(signal.SIGKILL if not p.alive() else signal.SIGTERM)


class Broker:
    """A real Mosquitto on a free loopback port; can be killed and restarted on the same port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 0\n"
        )
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
        self.proc = Proc([exe, "-c", str(self.conf)], self.workdir / "mosquitto.log")
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc:
            self.proc.stop(signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first, longest first: the parallel workers then finish together instead of
    waiting on one that started late. `@pytest.mark.long(SECONDS)` gives its rough duration."""
    def duration(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return -mark.args[0] if mark else 0.0
    items.sort(key=duration)
