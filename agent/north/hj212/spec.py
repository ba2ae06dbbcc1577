"""The HJ 212 uplink's typed settings, as the config hands them over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.north.hj212.flags import DEFAULT_FLAGS
from agent.north.platform import Delivery

SNAPSHOT_BATCH = 10000  # points in one real-time message at most: one DataTime, split into packets


@dataclass(frozen=True)
class Hj212Body:
    """What a data segment carries: the codes, the PW (read from its file when the uplink is
    made, never kept here) and the flag mapping."""

    st: str
    mn: str
    password_file: Path
    flags: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FLAGS))


@dataclass(frozen=True)
class Hj212Spec:
    name: str
    host: str
    port: int
    body: Hj212Body
    delivery: Delivery  # send = "snapshot" at `interval`; `timeout` is `overtime`
    recount: int = 3  # re-sends on the connection before it is given up (the frame waits in the store)
    history: float = 7 * 86400.0  # seconds of minute aggregates kept for 2051 / 2061 requests
    minute_interval: float = 600.0  # seconds per minute-data (2051) interval

    @property
    def describe(self) -> str:
        """Where it delivers, for status and logs."""
        return f"hj212://{self.host}:{self.port}"

    @property
    def tls(self) -> bool:
        """HJ 212 runs on plain TCP."""
        return False
