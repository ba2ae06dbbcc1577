"""The TCP uplink: each message one frame (its JSON body and the delimiter), each answered by
one reply frame ended by the same delimiter (agent/north/framing.py).

`per-message`: connect, one frame, one reply, close (the Jiangsu client). `persistent`: one
connection, one reply per frame, in order; a reply frame that comes with no message waiting
puts the connection out of step and ends it. One message at a time either way (the drain's
window is 1). No reply within `timeout`, a closed connection or a reply frame over
`max_reply` bytes ends the link (the drain sends again, with back-off); a refusal by the ack
rule goes to the drain by seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import tzinfo

from agent.north.ack import NO_ANSWER, REFUSE, Verdict, judge
from agent.north.backoff import CAP
from agent.north.base import ConnectFailed, UplinkContext, why
from agent.north.framing import Deframer, FrameTooLarge, FramingError, frame
from agent.north.platform import (
    PlatformUplink,
    SerialLink,
    Unanswered,
    client_tls,
    guarded,
    open_stream,
)
from agent.north.tcp.spec import TcpSpec

log = logging.getLogger("hazgate.uplink")

READ_SIZE = 65536
CONNECTION_KEYS = ("host", "port", "tls", "ca_file", "delimiter", "connection", "max_reply",
                   "delivery", "ack")


class _Stream:
    """One TCP connection with its deframer."""

    def __init__(self, spec: TcpSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.deframer = Deframer(spec.delimiter, spec.max_reply)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_frame(self) -> bytes:
        """The next complete frame; ConnectionError when the far end closes first."""
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("the platform closed the connection without replying")
            for body in self.deframer.feed(data):
                return body

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self, grace: float) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(grace):
                await self.writer.wait_closed()


class TcpLink(SerialLink):
    """Messages framed and written one after the other, each awaiting its reply frame.

    `stream` is the persistent connection (None: a connection per message, opened with
    `connect`). On a persistent connection one reader task takes every frame that comes: a
    frame with no message waiting for it means the two ends are out of step, and ends the link.
    """

    def __init__(self, spec: TcpSpec, connect: Callable[[], Awaitable[_Stream]],
                 stream: _Stream | None, unanswered: Unanswered, on_ack: Callable[[int], None],
                 on_reject: Callable[[int, str], None]):
        super().__init__(spec.name, unanswered, on_ack, on_reject)
        self.spec, self._connect, self._stream = spec, connect, stream
        self._waiting = False  # persistent: a frame is out and its reply not yet taken
        self._replies: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        if stream is not None:
            self._tasks.append(asyncio.ensure_future(guarded(self._read(stream), self.spec.name, self.lost)))

    async def _read(self, stream: _Stream) -> None:
        try:
            while True:
                data = await stream.reader.read(READ_SIZE)
                if not data:
                    raise ConnectionError("the platform closed the connection")
                for body in stream.deframer.feed(data):
                    if not self._waiting:
                        raise ConnectionError("a reply frame came with no message waiting for "
                                              "one: the two ends are out of step")
                    self._waiting = False
                    self._replies.put_nowait(body)
        except (FrameTooLarge, OSError, ConnectionError) as exc:
            if self._waiting:
                self._replies.put_nowait(exc)
            else:
                self._lose(f"{self.spec.host}:{self.spec.port}: {why(exc)}")

    async def _exchange(self, kind: str, payload: bytes) -> Verdict:
        """One frame out, its reply frame back, judged by the ack rule; a message that cannot
        be framed is refused (it can never go)."""
        spec = self.spec
        where = f"{spec.host}:{spec.port}"
        try:
            data = frame(payload, spec.delimiter)
        except FramingError as exc:
            return Verdict(REFUSE, f"cannot be framed: {exc}")
        try:
            if self._stream is None:
                stream = await self._connect()
                try:
                    await stream.write(data)
                    async with asyncio.timeout(spec.delivery.timeout):
                        reply = await stream.next_frame()
                finally:
                    await stream.close(1.0)
            else:
                self._waiting = True
                await self._stream.write(data)
                async with asyncio.timeout(spec.delivery.timeout):
                    got = await self._replies.get()
                if isinstance(got, Exception):
                    raise got
                reply = got
        except ConnectFailed as exc:
            return Verdict(NO_ANSWER, str(exc))
        except FrameTooLarge as exc:
            log.error("reply frame too large: check the delimiter and max_reply", extra={"fields": {
                "uplink": spec.name, "to": where, "error": str(exc)}})
            return Verdict(NO_ANSWER, f"{where}: reply frame too large: {exc}")
        except TimeoutError:
            return Verdict(NO_ANSWER, f"{where}: no reply within {spec.delivery.timeout:g}s")
        except (OSError, ConnectionError) as exc:
            return Verdict(NO_ANSWER, f"{where}: {why(exc)}")
        return judge(spec.ack, reply)

    async def close(self, grace: float) -> None:
        self._cancel()
        if self._stream is not None:
            await self._stream.close(grace)

    def _shut(self) -> None:
        self._cancel()
        if self._stream is not None:
            self._stream.abort()


class TcpConnector:
    def __init__(self, spec: TcpSpec, unanswered: Unanswered):
        self.spec, self.unanswered = spec, unanswered
        self.describe = f"{'tls' if spec.tls else 'tcp'}://{spec.host}:{spec.port}"
        self.connect_allowance = 2 * spec.delivery.timeout + CAP
        self.tls = client_tls(spec.ca_file) if spec.tls else None

    async def _open(self) -> _Stream:
        spec = self.spec
        reader, writer = await open_stream(spec.host, spec.port, self.tls, spec.delivery.timeout)
        return _Stream(spec, reader, writer)

    async def connect(self, on_ack: Callable[[int], None],
                      on_reject: Callable[[int, str], None]) -> TcpLink:
        """Persistent: the connection the link keeps. Per-message: a first connection proves
        the platform reachable (then closes); each message opens its own."""
        stream = await self._open()
        if self.spec.connection != "persistent":
            await stream.close(self.spec.delivery.timeout)
            return TcpLink(self.spec, self._open, None, self.unanswered, on_ack, on_reject)
        return TcpLink(self.spec, self._open, stream, self.unanswered, on_ack, on_reject)


class TcpUplink(PlatformUplink):
    """A `tcp` uplink: the drain loop, templated bodies, one delimited frame per message."""

    def __init__(self, spec: TcpSpec, ctx: UplinkContext, timezone: tzinfo | None = None):
        super().__init__(spec, ctx, timezone, TcpConnector, CONNECTION_KEYS)
