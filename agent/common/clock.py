"""Time you can trust on a box without a real-time clock.

Cadence, timeouts and ages run on the monotonic clock; the wall clock only stamps collection
times. This module watches the wall clock against the monotonic one (a step beyond the
threshold is reported once, with its size and direction) and knows whether the system clock
is synchronized:

- `kernel`: the kernel's NTP state via adjtimex(2) (TIME_ERROR means unsynchronized). chrony,
  ntpd and systemd-timesyncd all keep it; this is the default on Debian and Raspberry Pi OS.
- `file`: synchronized while a file exists, e.g. /run/systemd/timesync/synchronized, which
  systemd-timesyncd creates on its first successful sync.
- `trust`: always synchronized (a plant with its own time source, or a simulated plant).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hazgate.clock")

TIME_ERROR = 5  # adjtimex(2): "the system clock is not synchronized to a reliable server"
SYNC_RECHECK = 5.0  # seconds between synchronization checks
SOURCES = ("kernel", "file", "trust")


@dataclass
class ClockConfig:
    sync_source: str = "kernel"
    sync_file: Path = Path("/run/systemd/timesync/synchronized")
    step_threshold: float = 2.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def kernel_synchronized() -> bool | None:
    """The kernel's view via adjtimex(2) in read-only mode; None when it cannot be asked."""
    libc = _libc()
    if libc is None:
        return None
    timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only, change nothing
    state = libc.adjtimex(timex)
    if state < 0:
        return None
    return state != TIME_ERROR


class ClockWatch:
    """Checked on every poll: cheap, and reports each step and each change of sync state once."""

    def __init__(self, cfg: ClockConfig, on_step: Callable[[float], None],
                 on_sync: Callable[[bool], None]):
        self.cfg, self.on_step, self.on_sync = cfg, on_step, on_sync
        self._offset = time.time() - time.monotonic()
        self.synchronized = self._read_sync()
        self._next_sync_check = time.monotonic() + SYNC_RECHECK
        self.steps = 0

    def _read_sync(self) -> bool:
        source = self.cfg.sync_source
        if source == "trust":
            return True
        if source == "file":
            try:
                return self.cfg.sync_file.exists()
            except OSError:  # cannot be asked (no permission, a name too long): not known to be synchronized
                return False
        state = kernel_synchronized()
        return bool(state)  # cannot be asked: not known to be synchronized

    def reconfigure(self, cfg: ClockConfig) -> None:
        """A reloaded `[clock]`: the next check uses it."""
        self.cfg = cfg

    def check(self) -> None:
        mono = time.monotonic()
        offset = time.time() - mono
        step = offset - self._offset
        self._offset = offset  # follows slewing; a jump between two checks is a step
        if abs(step) > self.cfg.step_threshold:
            self.steps += 1
            log.warning("wall clock stepped", extra={"fields": {
                "step_s": round(step, 3), "direction": "forward" if step > 0 else "backward"}})
            self.on_step(step)
        if mono >= self._next_sync_check:
            self._next_sync_check = mono + SYNC_RECHECK
            synced = self._read_sync()
            if synced != self.synchronized:
                self.synchronized = synced
                log.warning("clock " + ("synchronized" if synced else "not synchronized"),
                            extra={"fields": {"source": self.cfg.sync_source}})
                self.on_sync(synced)

    def describe(self) -> dict:
        return {"synchronized": self.synchronized, "source": self.cfg.sync_source}
