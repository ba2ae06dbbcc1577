"""sd_notify(3), written directly: one datagram per message to the socket in $NOTIFY_SOCKET.

systemd (Type=notify) hands the service an AF_UNIX datagram socket address in NOTIFY_SOCKET
(a path, or an abstract name written with a leading '@') and, with WatchdogSec=, the watchdog
interval in WATCHDOG_USEC (and the PID it is meant for in WATCHDOG_PID). Each message is a
datagram of newline-separated KEY=VALUE assignments: READY=1, RELOADING=1, STOPPING=1,
STATUS=..., WATCHDOG=1. Without NOTIFY_SOCKET (run by hand, or under another supervisor)
every call does nothing.

Sending never blocks and never raises: a supervisor that went away must not stop the agent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("hazgate.notify")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if addr.startswith("@"):  # abstract namespace
            self.address = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_usec = 0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent: list[str] = []  # the last few messages (for the health endpoint and tests)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """systemd's watchdog timeout in seconds, or None when the watchdog is off."""
        return self.watchdog_usec / 1e6 if self.watchdog_usec else None

    def send(self, *assignments: str) -> bool:
        """Send one datagram; True if it went out."""
        if self.address is None:
            return False
        text = "\n".join(a.replace("\n", " ") for a in assignments)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._failed:  # once: the service manager went away or the socket is full
                log.warning("cannot notify the service manager", extra={"fields": {"error": str(exc)}})
                self._failed = True
            return False
        self._failed = False
        self.sent = [*self.sent[-9:], text]
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd 253+) tie this to its own SIGHUP
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
