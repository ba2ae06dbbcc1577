"""An MQTT 3.1.1 broker that withholds, repeats or reorders its PUBACKs (hand-written, asyncio).

    async with HostileBroker(mode="no_puback") as broker:   # mqtt://127.0.0.1:<broker.port>
        ...  # the code under test publishes at QoS 1
        assert broker.publishes[-1].qos == 1
        await broker.drop()  # every client connection cut, as when a broker host dies

It accepts every CONNECT (CONNACK 0, session present 0: there are no sessions, no retained
store, no last-will delivery and no keep-alive enforcement), answers PINGREQ and SUBSCRIBE (QoS granted at most 1) and
routes PUBLISH to matching subscriptions (`+`, `#`) at QoS 0 or 1. QoS 2 is not supported:
such a PUBLISH is recorded and the connection closed. Anything malformed closes the connection.

Modes (for the PUBACK of each QoS 1 PUBLISH; `mode` may be switched at any time, or be a
callable that gets the `Publish` and returns the mode):

- `honest`: one PUBACK at once;
- `no_puback`: never a PUBACK (the message is taken and routed all the same);
- `puback_twice`: two PUBACKs for the same packet id;
- `puback_out_of_order`: PUBACKs held until `reorder_batch` are due (or `reorder_hold`
  seconds passed) and then sent newest first.

Records: `connections` (one `Connection` per TCP connection with its CONNECT fields and how it
ended), `publishes` (every PUBLISH from a client: topic, payload, qos, retain, dup, packet
id), `acks` (PUBACKs received from subscribers, per connection).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import check_mode, choose

MODES = frozenset({"honest", "no_puback", "puback_twice", "puback_out_of_order"})
HOST = "127.0.0.1"
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14


class ProtocolError(Exception):
    """The client sent something this broker does not take; the connection is closed."""


@dataclass
class Connection:
    """One client TCP connection."""

    number: int  # index in HostileBroker.connections
    opened: float = field(default_factory=time.monotonic)
    client_id: str = ""
    clean_session: bool = True
    keepalive: int = 0
    username: str | None = None
    will_topic: str | None = None
    will_payload: bytes | None = None
    subscriptions: list[tuple[str, int]] = field(default_factory=list)  # (filter, QoS granted)
    pings: int = 0
    closed: float | None = None
    ended: str = ""  # disconnect | closed by client | dropped | stopped | protocol error: <what>


@dataclass
class Publish:
    """One PUBLISH received from a client, and the PUBACK mode it was answered in."""

    conn: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    mode: str = ""
    at: float = field(default_factory=time.monotonic)


PubMode = str | Callable[[Publish], str]


def topic_matches(topic_filter: str, topic: str) -> bool:
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or part not in ("+", t[i]):
            return False
    return len(f) == len(t)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header (type, flags, remaining length) + body."""
    out, n = bytearray([ptype << 4 | flags]), len(body)
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def mqtt_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


class _Reader:
    """Cursor over one packet's body."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        self.at += n
        return self.data[self.at - n:self.at]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            return self.binary().decode()
        except UnicodeDecodeError:
            raise ProtocolError("a string is not UTF-8") from None

    def rest(self) -> bytes:
        self.at, rest = len(self.data), self.data[self.at:]
        return rest


class _Client:
    """Broker-side state of one connection."""

    def __init__(self, record: Connection, writer: asyncio.StreamWriter):
        self.record, self.writer = record, writer
        self.next_id = 0
        self.held: list[int] = []  # PUBACKs waiting to go out in reverse order
        self.flush_timer: asyncio.TimerHandle | None = None

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def packet_id(self) -> int:
        self.next_id = self.next_id % 0xFFFF + 1
        return self.next_id

    def flush_held(self) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        for pid in reversed(self.held):
            self.send(packet(PUBACK, 0, struct.pack(">H", pid)))
        self.held.clear()


class HostileBroker:
    """Takes every client on 127.0.0.1:`port`; answers QoS 1 PUBLISH as `mode` says."""

    def __init__(self, *, port: int = 0, mode: PubMode = "honest", reorder_batch: int = 2,
                 reorder_hold: float = 0.3, max_packet: int = 16 << 20):
        self.port = port  # 0: a free one, known after start()
        self.mode = mode
        self.reorder_batch, self.reorder_hold, self.max_packet = reorder_batch, reorder_hold, max_packet
        self.connections: list[Connection] = []
        self.publishes: list[Publish] = []
        self.acks: list[tuple[int, int]] = []  # (connection number, packet id) of subscribers' PUBACKs
        self.errors: list[Exception] = []  # unexpected failures of a connection handler
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task, _Client] = {}

    @property
    def mode(self) -> PubMode:
        return self._mode

    @mode.setter
    def mode(self, value: PubMode) -> None:
        self._mode = check_mode(value, MODES)

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    async def start(self) -> HostileBroker:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut("stopped")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def drop(self) -> None:
        """Cut every client connection at once (no DISCONNECT, no will), and keep listening."""
        await self._cut("dropped")

    async def __aenter__(self) -> HostileBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def live(self) -> list[Connection]:
        """Connections open right now."""
        return [c.record for c in self._clients.values() if c.record.closed is None]

    def deliver(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Send a message from the broker itself to every matching subscription; how many got it."""
        sent = 0
        for client in list(self._clients.values()):
            granted = [q for f, q in client.record.subscriptions if topic_matches(f, topic)]
            if granted and client.record.closed is None:
                q = min(qos, max(granted))
                head = mqtt_string(topic) + (struct.pack(">H", client.packet_id()) if q else b"")
                client.send(packet(PUBLISH, q << 1, head + payload))
                sent += 1
        return sent

    async def _cut(self, why: str) -> None:
        for client in self._clients.values():
            if not client.record.ended:
                client.record.ended = why
            client.writer.transport.abort()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        record = Connection(len(self.connections))
        self.connections.append(record)
        client = self._clients[task] = _Client(record, writer)
        try:
            ptype, _, body = await self._read(reader)
            if ptype != CONNECT:
                raise ProtocolError(f"first packet is type {ptype}, not CONNECT")
            self._connect(record, _Reader(body))
            client.send(packet(CONNACK, 0, b"\x00\x00"))
            while not record.ended:
                ptype, flags, body = await self._read(reader)
                self._packet(client, ptype, flags, _Reader(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            record.ended = record.ended or "closed by client"
        except ProtocolError as exc:
            record.ended = f"protocol error: {exc}"
        except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
            record.ended = f"broker error: {exc!r}"
            self.errors.append(exc)
        finally:
            record.closed = time.monotonic()
            if client.flush_timer is not None:
                client.flush_timer.cancel()
            writer.close()
            del self._clients[task]

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length = 0
        for i in range(4):
            digit = (await reader.readexactly(1))[0]
            length += (digit & 0x7F) << (7 * i)
            if not digit & 0x80:
                break
        else:
            raise ProtocolError("remaining length runs over 4 bytes")
        if length > self.max_packet:
            raise ProtocolError(f"packet of {length} bytes is over {self.max_packet}")
        return first >> 4, first & 0x0F, await reader.readexactly(length)

    @staticmethod
    def _connect(record: Connection, r: _Reader) -> None:
        name, level, flags = r.text(), r.take(1)[0], r.take(1)[0]
        if name != "MQTT" or level != 4:
            raise ProtocolError(f"protocol {name!r} level {level}, not MQTT 3.1.1")
        record.keepalive = r.u16()
        record.client_id = r.text()
        record.clean_session = bool(flags & 0x02)
        if flags & 0x04:
            record.will_topic, record.will_payload = r.text(), r.binary()
        if flags & 0x80:
            record.username = r.text()
        if flags & 0x40:
            r.binary()  # the password: accepted, not kept

    def _packet(self, client: _Client, ptype: int, flags: int, r: _Reader) -> None:
        record = client.record
        if ptype == PUBLISH:
            self._publish(client, flags, r)
        elif ptype == PUBACK:
            self.acks.append((record.number, r.u16()))
        elif ptype == SUBSCRIBE:
            pid, granted = r.u16(), bytearray()
            while r.at < len(r.data):
                topic_filter, qos = r.text(), min(r.take(1)[0], 1)
                record.subscriptions.append((topic_filter, qos))
                granted.append(qos)
            client.send(packet(SUBACK, 0, struct.pack(">H", pid) + granted))
        elif ptype == PINGREQ:
            record.pings += 1
            client.send(packet(PINGRESP, 0, b""))
        elif ptype == DISCONNECT:
            record.ended = "disconnect"
        else:
            raise ProtocolError(f"packet type {ptype} not handled")

    def _publish(self, client: _Client, flags: int, r: _Reader) -> None:
        qos = flags >> 1 & 3
        topic = r.text()
        pid = r.u16() if qos else None
        msg = Publish(client.record.number, topic, r.rest(), qos, bool(flags & 1), bool(flags & 8), pid)
        self.publishes.append(msg)
        if qos > 1:
            raise ProtocolError(f"QoS {qos} is not supported by this broker")
        if qos == 1:
            assert pid is not None
            self._puback(client, choose(self.mode, msg, MODES), pid)
        self.deliver(topic, msg.payload, qos)

    def _puback(self, client: _Client, mode: str, pid: int) -> None:
        ack = packet(PUBACK, 0, struct.pack(">H", pid))
        if mode == "honest":
            client.send(ack)
        elif mode == "puback_twice":
            client.send(ack + ack)
        elif mode == "puback_out_of_order":
            client.held.append(pid)
            if len(client.held) >= self.reorder_batch:
                client.flush_held()
            elif client.flush_timer is None:
                client.flush_timer = asyncio.get_running_loop().call_later(self.reorder_hold, client.flush_held)
