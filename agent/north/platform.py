"""What the platform uplinks (`http`, `tcp`) share: their delivery settings, the warnings of
messages that went unanswered, and the uplink object built on the protocol-neutral drain loop
(agent/north/drain.py) with a templated body. Attempts after a message went unanswered or was
refused are paced by the drain's back-off (agent/north/backoff.py): it is reset only by an
acknowledgement, so an HTTP platform answering 503 (or a TCP one closing at once), which still
accepts connections, waits like one that is down.

Each protocol brings only its Connector (agent/north/http, agent/north/tcp).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any

from agent.north.base import ConnectFailed, Connector, UplinkContext
from agent.north.codec import DERIVATIONS
from agent.north.drain import Drain, DrainSettings
from agent.north.templated import TEMPLATED_KEYS, TemplatedBody

log = logging.getLogger("hazgate.uplink")

WINDOW = 1  # one message in flight: a platform handles messages in the order they come
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


class PlatformUplink:
    """An uplink to a platform: the drain loop with a templated body and the protocol's
    connector: `connector(spec, unanswered)` builds one; a change of any of `connection_keys`
    (the protocol's address, TLS and credential keys) on reload means a new connection."""

    def __init__(self, spec: Any, ctx: UplinkContext, timezone: tzinfo | None,
                 connector: Callable[[Any, Unanswered], Connector], connection_keys: tuple[str, ...]):
        self.spec = spec
        self.name: str = spec.name
        self.timezone = timezone
        self._connector, self._connection_keys = connector, connection_keys
        self.unanswered = Unanswered(self.name)
        self.body = TemplatedBody(ctx, spec.body, timezone)
        self.carries_events = self.body.events is not None
        self.drain = Drain(self.name, ctx, self._settings(spec.delivery), self.body,
                           connector(spec, self.unanswered))
        self.stats = self.drain.stats

    @staticmethod
    def _settings(delivery: Delivery) -> DrainSettings:
        return DrainSettings(window=WINDOW, batch=delivery.batch, interval=delivery.interval,
                             max_rejects=delivery.max_rejects, snapshot=delivery.send == "snapshot")

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


def why(exc: BaseException) -> str:
    """A connection error in words, without its traceback."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc.reason}: check ca_file"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None,
                      within: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection (with its TLS handshake), or ConnectFailed saying why."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None),
            within)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectFailed(f"{host}:{port}: {why(exc)}") from None
