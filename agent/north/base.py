"""The north seam: what every uplink is given, what it reports, and the two pieces a protocol
brings to the protocol-neutral drain loop (agent/north/drain.py): a `Connector` that opens a
`Link` to the far end, and a `Body` that turns stored rows into the bytes of one message."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Protocol

from agent.common.clock import ClockWatch
from agent.model import Point
from agent.pipeline.store import Builder
from agent.pipeline.store_thread import AsyncStore


class HeldReadings(Protocol):
    """Readings polled while the store refuses writes (disk full), in the store's row format."""

    def take(self, limit: int) -> list[tuple]: ...

    def give_back(self, rows: list[tuple]) -> None: ...


@dataclass
class UplinkContext:
    """What an uplink is given by the assembly."""

    gateway: str
    enterprise: str
    version: str
    started_ms: int
    store: AsyncStore  # the outbox: numbered messages, acknowledgements, back-fill
    clock: ClockWatch
    points: Callable[[], list[Point]]  # the point set now (a reload changes it)
    held: HeldReadings
    on_state: Callable[[str, str, str], None]  # (uplink name, "up" | "down", why it is down)
    events_stored: Callable[[], None]  # an uplink stored a gateway event: every uplink publishes it
    timezone: tzinfo | None = None  # `[gateway] timezone` for templated times (None: the system's)
    uplinks: Callable[[], dict[str, dict]] = dict  # every uplink's state now, for a status message
    declared: Collection[str] = frozenset()  # tags and interlocks under a declared stop now (kept current)
    devices: Callable[[], dict[str, str]] = dict  # tag -> its device's name, for registrations


@dataclass
class UplinkStats:
    """What an uplink reports: the service's status, health and metrics read these."""

    state: str = "starting"  # starting | up | down
    published: int = 0
    acked: int = 0
    reconnects: int = 0
    last_error: str = ""
    rejected: int = 0  # refusals by the far end
    beat: float = field(default_factory=time.monotonic)  # each turn of its loops (the watchdog's view)
    unacked_since: float | None = None  # monotonic time the oldest unacknowledged message was first sent
    ack_warning: float = 0.0  # seconds: an acknowledgement slower than this is worth a warning
    ack_deadline: float = 0.0  # seconds: past it the connection is dropped and messages sent again

    def summary(self) -> dict:
        """What a status message tells of the uplink."""
        return {"state": self.state, "published": self.published, "acked": self.acked,
                "rejected": self.rejected, "reconnects": self.reconnects,
                "oldest_unacked_s": round(self.oldest_unacked_age(), 3), "last_error": self.last_error}

    def oldest_unacked_age(self, now: float | None = None) -> float:
        """Seconds since the oldest message sent and not yet acknowledged was first sent (0:
        none); re-sends after a reconnect do not restart it. Above `ack_warning`: slow; above
        `ack_deadline`: the far end takes messages and does not acknowledge them."""
        if self.unacked_since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.unacked_since)


class Link(Protocol):
    """One open connection to the far end. Verdicts come back by seq through the callbacks
    given to `Connector.connect`: `on_ack(seq)` when the far end accepted the message (its ack
    rule held), `on_reject(seq, reason)` when it answered and refused it. No answer (timeout,
    connection lost) is neither: the link sets `lost` and the message is sent again."""

    lost: asyncio.Event
    reason: str  # why the link ended or was refused, once it did (for logs and status)

    def send(self, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        """Put one numbered message on the wire; False when the connection is gone."""
        ...

    def opened(self) -> None:
        """The session starts (before any numbered message)."""
        ...

    async def close(self, grace: float) -> None:
        """A clean goodbye within `grace` seconds where the protocol has one."""
        ...

    def abandon(self) -> None:
        """Drop the connection at once (blocking, short; run on a worker thread)."""
        ...


class Connector(Protocol):
    describe: str  # where it connects, for logs (never a credential)
    connect_allowance: float  # seconds one connection attempt may take, for the watchdog

    async def connect(self, on_ack: Callable[[int], None], on_reject: Callable[[int, str], None]) -> Link:
        """Open a link; raise ConnectFailed saying why."""
        ...


class ConnectFailed(Exception):
    """The far end could not be reached or refused us; the message says why and `step` where:
    `file` (a password, key or certificate file read at connect), `tcp`, `trust` (the far
    end's certificate is not trusted), `tls` (another TLS failure), `closed` (the far end
    closed the connection before accepting it) or `login` (it refused the credentials)."""

    def __init__(self, reason: str, step: str = "tcp"):
        super().__init__(reason)
        self.step = step


def failed_step(exc: BaseException) -> str:
    """The step of a connection a connect error belongs to (see ConnectFailed)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "trust"
    return "tls" if isinstance(exc, ssl.SSLError) else "tcp"


def why(exc: BaseException) -> str:
    """A connection error in words, without its traceback."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}: check ca_file"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class Body(Protocol):
    """Builders of message bytes from stored rows (they run on the store thread)."""

    def readings(self, backfill: bool) -> Builder: ...

    events: Builder | None  # None: the uplink carries no events
    meta: Builder | None  # a description of the points (restated when it changes), or None

    def meta_digest(self) -> bytes:
        """What `meta` would say now, condensed: equal digests, equal descriptions (asked only
        when `meta` is not None)."""
        ...


@dataclass(frozen=True)
class Probe:
    """What `hazgate uplink check` needs of an uplink: a connector that connects as the uplink
    does and leaves no trace at the far end (nothing it would store, no last will, a client
    id of its own), where it goes, and what an accepted connection proves."""

    connector: Connector
    host: str
    port: int
    tls: bool
    login: str  # the credentials an accepted connection proves ("": none, they go with each message)


class Uplink(Protocol):
    """One configured uplink, as the assembly and the service see it."""

    name: str
    stats: UplinkStats
    carries_events: bool

    async def run(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def events_stored(self) -> None: ...

    async def points_changed(self) -> None: ...

    def status_changed(self) -> None: ...

    def progress_allowance(self) -> float: ...

    def reconfigure(self, spec: Any) -> None: ...

    def probe(self) -> Probe: ...
