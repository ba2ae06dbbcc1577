"""The HTTP uplink: each message one POST of its JSON body, over http or https.

aiohttp: one session per connection of the drain, keep-alive, one request at a time (the
drain's window is 1, so the platform sees messages in order). A connection is "up" once a TCP
(and TLS) connection to the platform's host has been made. Verdicts follow the ack rule
(agent/north/ack.py): a timeout, a refused connection, a 5xx or a reply that says nothing
about the message ends the link (the drain sends again, with back-off); a refusal goes to the
drain by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import tzinfo
from urllib.parse import urlparse

import aiohttp

from agent.common.secrets import read_secret
from agent.north.ack import NO_ANSWER, Verdict, judge
from agent.north.backoff import CAP
from agent.north.base import ConnectFailed, UplinkContext, why
from agent.north.http.spec import HttpSpec
from agent.north.platform import PlatformUplink, SerialLink, Unanswered, client_tls, open_stream

log = logging.getLogger("hazgate.uplink")

MAX_REPLY = 1 << 20  # bytes of a reply read at most
CONNECTION_KEYS = ("url", "ca_file", "headers", "events_url", "registry_url", "delivery", "ack")


def describe(url: str) -> str:
    """The address for logs: scheme, host, port and path (never a query or user info)."""
    u = urlparse(url)
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.hostname}{port}{u.path}"


class HttpLink(SerialLink):
    """One aiohttp session; messages POSTed one after the other, in the order sent."""

    def __init__(self, spec: HttpSpec, session: aiohttp.ClientSession, unanswered: Unanswered,
                 on_ack: Callable[[int], None], on_reject: Callable[[int, str], None]):
        super().__init__(spec.name, unanswered, on_ack, on_reject)
        self.spec, self.session = spec, session
        self._closing: asyncio.Future | None = None

    async def _exchange(self, kind: str, payload: bytes) -> Verdict:
        own = {"events": self.spec.events_url, "meta": self.spec.registry_url}.get(kind)
        url = own or self.spec.url
        try:
            async with self.session.post(url, data=payload, allow_redirects=False,
                                         headers={"Content-Type": "application/json"}) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > MAX_REPLY:
                        return Verdict(NO_ANSWER, f"HTTP {resp.status}: the reply is over "
                                                  f"{MAX_REPLY} bytes")
                return judge(self.spec.ack, bytes(body), resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Verdict(NO_ANSWER, f"{describe(url)}: {why(exc)}")

    async def close(self, grace: float) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.session.close()

    def _shut(self) -> None:
        self._cancel()
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.session.close())


class HttpConnector:
    def __init__(self, spec: HttpSpec, unanswered: Unanswered):
        self.spec, self.unanswered = spec, unanswered
        self.describe = describe(spec.url)
        self.connect_allowance = 2 * spec.delivery.timeout + CAP
        self.tls = client_tls(spec.ca_file) if spec.tls else None

    def _headers(self) -> dict[str, str]:
        headers = {}
        for h in self.spec.headers:
            if h.secret is None:
                headers[h.name] = h.value or ""
                continue
            try:
                headers[h.name] = read_secret(h.secret)
            except (OSError, UnicodeDecodeError) as exc:
                raise ConnectFailed(f"header {h.name}: cannot read {h.secret}: {why(exc)}", "file") from None
        return headers

    async def connect(self, on_ack: Callable[[int], None],
                      on_reject: Callable[[int, str], None]) -> HttpLink:
        spec = self.spec
        headers = self._headers()
        _, writer = await open_stream(spec.host, spec.port, self.tls, spec.delivery.timeout)
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(spec.delivery.timeout):
                await writer.wait_closed()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.tls if self.tls else True, limit=1),
            timeout=aiohttp.ClientTimeout(total=spec.delivery.timeout), headers=headers,
            raise_for_status=False)
        return HttpLink(spec, session, self.unanswered, on_ack, on_reject)


class HttpUplink(PlatformUplink):
    """An `http` uplink: the drain loop, templated bodies, POST per message."""

    def __init__(self, spec: HttpSpec, ctx: UplinkContext, timezone: tzinfo | None = None):
        super().__init__(spec, ctx, timezone, HttpConnector, CONNECTION_KEYS)

