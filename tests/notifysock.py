"""A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET, recording what the agent
sends (sd_notify protocol: newline-separated KEY=VALUE assignments per datagram)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass
class Note:
    at: float  # time.monotonic() on arrival
    fields: dict[str, str]
    raw: str


class NotifySocket:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hzn")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self._notes: list[Note] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self._lock:
                self._notes.append(Note(time.monotonic(), fields, text))

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.path}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    @property
    def notes(self) -> list[Note]:
        with self._lock:
            return list(self._notes)

    def having(self, key: str, since: float = 0.0, until: float = float("inf")) -> list[Note]:
        return [n for n in self.notes if key in n.fields and since <= n.at <= until]

    def wait_for(self, key: str, timeout: float, what: str, value: str | None = None,
                 since: float = 0.0, contains: str | None = None) -> Note:
        deadline = time.monotonic() + timeout
        while True:
            for n in self.having(key, since):
                if (value is None or n.fields[key] == value) and (contains is None or contains in n.fields[key]):
                    return n
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {[n.raw for n in self.notes][-8:]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
