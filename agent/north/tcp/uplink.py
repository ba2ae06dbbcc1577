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
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import tzinfo

from agent.north.ack import ACCEPT, NO_ANSWER, Verdict, judge
from agent.north.backoff import CAP
from agent.north.base import ConnectFailed, UplinkContext
from agent.north.framing import Deframer, FrameTooLarge, FramingError, frame
from agent.north.platform import PlatformUplink, Unanswered, client_tls, guarded, open_stream, why
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
            await asyncio.wait_for(self.writer.wait_closed(), grace)


class TcpLink:
    """Messages framed and written one after the other, each awaiting its reply frame.

    `stream` is the persistent connection (None: a connection per message, opened with
    `connect`). On a persistent connection one reader task takes every frame that comes: a
    frame with no message waiting for it means the two ends are out of step, and ends the link.
    """

    def __init__(self, spec: TcpSpec, connect: Callable[[], Awaitable[_Stream]],
                 stream: _Stream | None, unanswered: Unanswered, on_ack: Callable[[int], None],
                 on_reject: Callable[[int, str], None]):
        self.spec, self._connect, self._stream, self.unanswered = spec, connect, stream, unanswered
        self.on_ack, self.on_reject = on_ack, on_reject
        self.lost = asyncio.Event()
        self.reason = ""  # why it was lost, for the uplink's last error
        self._queue: deque[tuple[int, bytes]] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._waiting = False  # persistent: a frame is out and its reply not yet taken
        self._replies: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        self._tasks = [asyncio.ensure_future(guarded(self._work(), self.spec.name, self.lost))]
        if stream is not None:
            self._tasks.append(asyncio.ensure_future(guarded(self._read(stream), self.spec.name, self.lost)))

    def send(self, seq: int, kind: str, payload: bytes, retain: bool) -> bool:
        if self.lost.is_set():
            return False
        self._queue.append((seq, payload))
        self._wake.set()
        return True

    def opened(self) -> None:
        """No session message: the platform sees only numbered messages."""

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.unanswered.failed(reason)
            self.reason = reason
            self.lost.set()

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

    async def _work(self) -> None:
        while not self.lost.is_set():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            seq, payload = self._queue[0]
            try:
                data = frame(payload, self.spec.delimiter)
            except FramingError as exc:  # this message can never go: refuse it, move on
                self._queue.popleft()
                self.on_reject(seq, f"cannot be framed: {exc}")
                continue
            verdict = await self._exchange(data)
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

    async def _exchange(self, data: bytes) -> Verdict:
        """One frame out, its reply frame back, judged by the ack rule."""
        spec = self.spec
        where = f"{spec.host}:{spec.port}"
        try:
            if self._stream is None:
                stream = await self._connect()
                try:
                    await stream.write(data)
                    reply = await asyncio.wait_for(stream.next_frame(), spec.delivery.timeout)
                finally:
                    await stream.close(1.0)
            else:
                self._waiting = True
                await self._stream.write(data)
                got = await asyncio.wait_for(self._replies.get(), spec.delivery.timeout)
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

    def _cancel(self) -> None:
        self.lost.set()
        for task in self._tasks:
            task.cancel()

    def abandon(self) -> None:
        """From a worker thread: stop and drop the connection on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is left open
            self._loop.call_soon_threadsafe(self._shut)

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
