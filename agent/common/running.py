"""The running agent's mark beside its store, `hazgate.pid` in the data dir: how `hazgate status`
tells an agent that runs but cannot write its heartbeat (a full disk, a read-only file system)
from one that has stopped, without a store write.

One line, `PID START`: START is the process's start time in clock ticks after boot (field 22 of
/proc/PID/stat), so a PID the kernel has since handed to another process is not taken for the
agent. The line is written in place at a fixed width, like the store's seq mark: once the file
exists, writing it again needs no new disk block, so a restart on a full disk still marks
itself. A clean stop writes PID 0; a killed agent leaves a PID that is gone or started later.
"""

from __future__ import annotations

import os
from pathlib import Path

PID_FILE = "hazgate.pid"
_WIDTH = 40


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot; None when /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _write(data_dir: Path, line: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / PID_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, line.ljust(_WIDTH - 1).encode() + b"\n", 0)
    finally:
        os.close(fd)


def mark_running(data_dir: Path) -> None:
    """Record this process as the agent of `data_dir`; raises OSError."""
    pid = os.getpid()
    _write(data_dir, f"{pid} {_start_ticks(pid) or 0}")


def mark_stopped(data_dir: Path) -> None:
    """A clean stop; raises OSError."""
    _write(data_dir, "0 0")


def running_pid(data_dir: Path) -> int | None:
    """The PID of the agent running on `data_dir`, or None when none is."""
    try:
        pid, start = (int(x) for x in (data_dir / PID_FILE).read_text().split())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's: /proc may hide it, the signal check cannot
        pass
    ticks = _start_ticks(pid)
    return None if ticks is not None and start and ticks != start else pid
