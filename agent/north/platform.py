"""What the platform uplinks (`http`, `tcp`, `hj212`) share: their delivery settings, the
warnings of messages that went unanswered, and the uplink object built on the protocol-neutral
drain loop (agent/north/drain.py) with a templated body. Attempts after a message went
unanswered or was refused are paced by the drain's back-off (agent/north/backoff.py): it is
reset only by an acknowledgement, so an HTTP platform answering 503 (or a TCP one closing at
once), which still accepts connections, waits like one that is down.

Each protocol brings its Connector (agent/north/http, agent/north/tcp); hj212 its own body too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from agent.north.ack import ACCEPT, NO_ANSWER, Verdict
from agent.north.base import ConnectFailed, Connector, Probe, UplinkContext, failed_step, why
from agent.north.codec import DERIVATIONS
from agent.north.drain import Drain, DrainSettings
from agent.north.templated import TEMPLATED_KEYS, TemplatedBody

log = logging.getLogger("hazgate.uplink")

WINDOW = 1  # one message in flight: a platform handles messages in the order they come
# readings numbered ahead of the window in one store call (in whole messages, at least one,
# at most AHEAD_MESSAGES): one store transaction per about this many readings, not per
# message; an event waits behind at most these
AHEAD_READINGS, AHEAD_MESSAGES = 1000, 5
SENDS = ("readings", "snapshot")
# the [[uplinks]] keys every platform uplink takes (kinds as agent/config/toml.py converts them)
PLATFORM_KEYS = {
    **TEMPLATED_KEYS, "send": ("enum:" + "|".join(SENDS), False), "interval": ("duration", False),
    "batch": ("int", False), "key_file": ("path", False), "iv_file": ("path", False),
    "iv": ("enum:key", False), "key_derivation": ("enum:" + "|".join(DERIVATIONS), False),
    "ack": ("table", False), "max_rejects": ("int", False), "timeout": ("duration", False),
    "ca_file": ("path", False),
}
PLATFORM_LIMITS = {"batch": (1, 10000), "max_rejects": (1, 1000)}


@dataclass(frozen=True)
class Delivery:
    """How a platform uplink's messages are cut and paced."""

    send: str = "readings"  # readings: every stored reading, in order | snapshot: latest per interval
    interval: float = 10.0  # seconds between messages (snapshot cadence in snapshot mode)
    batch: int = 200  # records in one message at most
    max_rejects: int = 10  # refusals in a row before a message is set aside
    timeout: float = 10.0  # seconds to wait for a reply (and for a connection)


class Unanswered:
    """Messages in a row the far end answered nothing useful to, or refused: warned of at the
    first, the tenth and every sixtieth; an acceptance starts the count again."""

    def __init__(self, name: str):
        self.name = name
        self._failures = 0

    def accepted(self) -> None:
        self._failures = 0

    def failed(self, reason: str, refused: bool = False) -> None:
        """A message went unanswered, or (refused) the far end said no to it."""
        self._failures += 1
        if not refused and (self._failures in (1, 10) or self._failures % 60 == 0):
            log.warning("no answer from the far end", extra={"fields": {
                "uplink": self.name, "reason": reason, "in_a_row": self._failures}})


def drain_settings(delivery: Delivery) -> DrainSettings:
    """The drain loop's settings for a platform's delivery settings."""
    return DrainSettings(window=WINDOW, ahead=max(1, min(AHEAD_MESSAGES, AHEAD_READINGS // delivery.batch)) - WINDOW,
                         batch=delivery.batch, interval=delivery.interval,
                         max_rejects=delivery.max_rejects, snapshot=delivery.send == "snapshot")


class PlatformUplink:
    """An uplink to a platform: the drain loop with a templated body and the protocol's
    connector: `connector(spec, unanswered)` builds one; a change of any of `connection_keys`
    (the protocol's address, TLS and credential keys) on reload means a new connection.
    `body_type(ctx, spec.body, timezone)` makes the body (a templated one unless the protocol
    has its own); `reconfigure(spec.body, timezone)` gives it a reloaded config."""

    def __init__(self, spec: Any, ctx: UplinkContext, timezone: tzinfo | None,
                 connector: Callable[[Any, Unanswered], Connector], connection_keys: tuple[str, ...],
                 body_type: Callable[[UplinkContext, Any, tzinfo | None], Any] = TemplatedBody):
        self.spec = spec
        self.name: str = spec.name
        self.timezone = timezone
        self._connector, self._connection_keys = connector, connection_keys
        self.unanswered = Unanswered(self.name)
        self.body = body_type(ctx, spec.body, timezone)
        self.carries_events = self.body.events is not None
        self.drain = Drain(self.name, ctx, self._settings(spec.delivery), self.body,
                           connector(spec, self.unanswered))
        self.stats = self.drain.stats

    def _settings(self, delivery: Delivery) -> DrainSettings:
        return drain_settings(delivery)

    async def run(self) -> None:
        await self.drain.run()

    async def stop(self, grace: float = 2.0) -> None:
        await self.drain.stop(grace)

    def events_stored(self) -> None:
        if self.body.events is not None:
            self.drain.events_stored()

    async def points_changed(self) -> None:
        """Records look point metadata up afresh; the registration, if any, goes again if it changed."""
        self.body.points_changed()
        if self.body.meta is not None:
            await self.drain.restate()

    def status_changed(self) -> None:
        """Platforms have no status message: nothing to do."""

    def reconfigure(self, spec: Any) -> None:
        """A reloaded config: delivery settings and the body apply to messages built from now
        on; a new address, TLS file or credential on a new connection."""
        old, self.spec = self.spec, spec
        self.body.reconfigure(spec.body, self.timezone)
        changed = any(getattr(old, key) != getattr(spec, key) for key in self._connection_keys)
        self.drain.configure(self._settings(spec.delivery),
                             self._connector(spec, self.unanswered) if changed else None)

    def progress_allowance(self) -> float:
        """Seconds its loop may go without coming round, beyond the watchdog's own limit."""
        if self.stats.state == "up":
            return self.spec.delivery.interval + self.spec.delivery.timeout
        return self.drain.connector.connect_allowance

    def probe(self) -> Probe:
        """A connection as the uplink makes one (TCP, TLS), with warnings of its own; the
        platform checks credentials (headers, cipher keys) only with a message."""
        spec = self.spec
        return Probe(self._connector(spec, Unanswered(self.name)), spec.host, spec.port, spec.tls, "")



class SerialLink:
    """A link that puts one message at a time on the wire and awaits its verdict (a platform
    handles messages in the order they come): `send` queues, one worker takes the queue in
    order through the protocol's `_exchange`. No answer ends the link (the drain sends again,
    with back-off); an acceptance or a refusal goes to the drain by seq. `_tasks` holds the
    worker and whatever else the protocol runs for the link."""

    def __init__(self, name: str, unanswered: Unanswered, on_ack: Callable[[int], None],
                 on_reject: Callable[[int, str], None]):
        self.unanswered, self.on_ack, self.on_reject = unanswered, on_ack, on_reject
        self.lost = asyncio.Event()
        self.reason = ""  # why it was lost, for the uplink's last error
        self._queue: deque[tuple[int, str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.ensure_future(guarded(self._work(), name, self.lost))]

    def send(self, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        if self.lost.is_set():
            return False
        self._queue.append((seq, kind, payload))
        self._wake.set()
        return True

    def opened(self) -> None:
        """No session message: the platform sees only numbered messages."""

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.unanswered.failed(reason)
            self.reason = reason
            self.lost.set()

    async def _exchange(self, kind: str, payload: bytes) -> Verdict:
        """One message to the far end and its verdict."""
        raise NotImplementedError

    def _cancel(self) -> None:
        self.lost.set()
        for task in self._tasks:
            task.cancel()

    def abandon(self) -> None:
        """From a worker thread: stop and drop the connection on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left open
            self._loop.call_soon_threadsafe(self._shut)

    def _shut(self) -> None:
        """On the loop: stop the link's tasks and drop its connection at once."""
        self._cancel()

    async def _work(self) -> None:
        while not self.lost.is_set():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            seq, kind, payload = self._queue[0]
            verdict = await self._exchange(kind, payload)
            if verdict.outcome == NO_ANSWER:
                self._lose(verdict.reason)
                return
            self._queue.popleft()
            if verdict.outcome == ACCEPT:
                self.unanswered.accepted()
                self.on_ack(seq)
            else:
                self.unanswered.failed(verdict.reason, refused=True)
                self.on_reject(seq, verdict.reason)


async def guarded(work: Awaitable[None], uplink: str, lost: asyncio.Event) -> None:
    """A link's worker: a bug must not leave the link hanging; log it and end the link (the
    drain connects again)."""
    try:
        await work
    except Exception:
        log.exception("uplink link failed", extra={"fields": {"uplink": uplink}})
        lost.set()


def client_tls(ca_file: Path | None) -> ssl.SSLContext:
    """Verification of the platform's certificate and host name against `ca_file` (a park's
    own CA, a self-signed certificate) or the system CAs; never switched off."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None,
                      within: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection (with its TLS handshake), or ConnectFailed saying why."""
    try:
        async with asyncio.timeout(within):
            return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectFailed(f"{host}:{port}: {why(exc)}", failed_step(exc)) from None
