"""The running agent's mark beside its store, `hazgate.pid` in the data dir: how `hazgate status`
tells an agent that runs but cannot write its heartbeat (a full disk, a read-only file system)
from one that has stopped, without a store write.

One line, `PID START`: START is the process's start time in clock ticks after boot (field 22 of
/proc/PID/stat), so a PID the kernel has since handed to another process is not taken for the
agent. The line is written in place at a fixed width, like the store's seq mark: once the file
exists, writing it again needs no new disk block, so a restart on a full disk still marks
itself. A clean stop writes PID 0; a killed agent leaves a PID that is gone or started later.

Beside it, `applied-config.json`: what `status` and `buffer` need of the config the agent applied,
for when the file on disk has since been broken.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def stopped_cleanly(data_dir: Path) -> bool:
    """True when the pid file records a clean stop (PID 0): the agent is not running, whatever
    the age of its last heartbeat."""
    try:
        return int((data_dir / PID_FILE).read_text().split()[0]) == 0
    except (OSError, ValueError, IndexError):
        return False


APPLIED_FILE = "applied-config.json"


@dataclass(frozen=True)
class AppliedConfig:
    """What the operator commands need of the config the running agent applied: kept in the data
    dir (at start and on every applied reload) so that `status` and `buffer` still work while the
    file on disk is broken."""

    path: Path
    gateway_id: str
    data_dir: Path
    clock_source: str
    max_bytes: int
    devices: tuple[str, ...]
    uplinks: tuple[tuple[str, str], ...]  # (name, where it connects)
    applied_at: str = ""  # when the agent applied it (RFC 3339, UTC)

    @classmethod
    def of(cls, cfg: Any) -> AppliedConfig:
        """The operator's view of a loaded GatewayConfig (duck-typed: common imports no config)."""
        return cls(path=Path(cfg.path).resolve(), gateway_id=cfg.gateway_id, data_dir=Path(cfg.data_dir),
                   clock_source=cfg.clock.sync_source, max_bytes=cfg.store.max_bytes,
                   devices=tuple(d.name for d in cfg.devices),
                   uplinks=tuple((u.name, u.describe) for u in cfg.uplinks))


def save_applied(applied: AppliedConfig) -> None:
    """Write the applied config's view atomically (a temporary file renamed over the old one);
    raises OSError."""
    doc = {**asdict(applied), "path": str(applied.path), "data_dir": str(applied.data_dir),
           "applied_at": datetime.now(UTC).isoformat(timespec="seconds")}
    target = applied.data_dir / APPLIED_FILE
    applied.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{APPLIED_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_applied(data_dir: Path) -> AppliedConfig:
    """The view the agent of `data_dir` last applied; raises OSError or ValueError (none, or
    unreadable)."""
    doc = json.loads((data_dir / APPLIED_FILE).read_text(encoding="utf-8"))
    try:
        return AppliedConfig(path=Path(doc["path"]), gateway_id=doc["gateway_id"], data_dir=Path(doc["data_dir"]),
                             clock_source=doc["clock_source"], max_bytes=int(doc["max_bytes"]),
                             devices=tuple(doc["devices"]), uplinks=tuple((n, d) for n, d in doc["uplinks"]),
                             applied_at=doc.get("applied_at", ""))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{data_dir / APPLIED_FILE}: not an applied config: {exc}") from exc
