"""Modbus RTU driver (pymodbus serial client over pyserial), strictly read-only.

Several units (slaves) share one RS-485 bus, and each is its own device in the config with its
own point table, poll interval and timeout, so the scheduler runs one task per unit. They meet
here: one `SerialBus` per serial port owns the port and serializes every request of every unit
on it (a fair FIFO lock), keeps a quiet pause between requests (`request_pause`), and applies the
asking unit's own timeout to each request.

A serial device server (RS-485 to Ethernet: Moxa NPort, USR and the like) puts the same bus behind
a TCP or UDP port (`port = "tcp://HOST:PORT"`): RTU frames travel unchanged inside the stream or
the datagrams, so everything above holds; only the transport differs (one connection per bus,
reopened with the same back-off when the device server drops it or cannot be reached). pymodbus
3.16.1 closes a TCP or UDP connection after four requests in a row without an answer, which
happens only when no unit on the bus answers (an answering neighbour resets that count): the
next request then connects again.

A unit that does not answer, or answers with garbage (bad CRC, noise), costs only itself: after
FAILS_BEFORE_BACKOFF polls without an answer it is backed off (1 s doubling to 30 s, then one
probe request), and while it is failing a poll stops at its first unanswered request instead of
spending a timeout on every block. The port itself is never closed for a unit's failure; it is
reopened (with back-off) only when the port fails (adapter unplugged, device gone).

RTU frames carry no transaction id, so a unit's answer that comes after its request's timeout
would be taken for the answer to its next request of the same shape. After a request without a
valid answer (timeout, garbled, or refused by `read_table`'s check of unit, function code and
byte count) that unit is not asked again for its timeout, and no request starts within the
pause between frames after the last byte heard; its late answer, if it comes in that time, is
discarded (pymodbus 3.16.1 drops a frame while no request waits, skips a frame of another unit,
and empties its receive buffer when it sends a request). The other units keep the line
meanwhile: a frame of one unit is never taken for another's, since the unit id is checked, so a
failing neighbour does not slow their polls. An answer later than twice the timeout cannot be
told from a timely one by any RTU master; it still has to match the next request's unit,
function code and byte count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, AsyncModbusUdpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from agent.model import BAD, Sample
from drivers.base import DeviceError, DeviceSpec
from drivers.modbus.answer import WrongAnswer
from drivers.modbus.options import DeviceServer, ModbusRtuOptions, device_server
from drivers.modbus.read import BlockReader, checked_client, read_table

log = logging.getLogger("hazgate.rtu")

UNIT_BACKOFF_MIN, UNIT_BACKOFF_MAX = 1.0, 30.0
PORT_BACKOFF_MIN, PORT_BACKOFF_MAX = 0.5, 30.0
FAILS_BEFORE_BACKOFF = 2
LOW_WAIT_MAX = 2.0  # longest a failing unit's request yields the line to answering units
# a port's lock outlives its closing program by a moment: look again before calling it busy
BUSY_LOOKS, BUSY_LOOK_EVERY = 3, 0.1
BUSY = "is busy: another program has it open (a terminal, a second gateway)"


class GarbledAnswer(ModbusException):
    """Bytes came back but no valid frame: bad CRC, wrong length or noise on the line."""

    def __str__(self) -> str:
        return self.string


class PortUnavailable(ConnectionException):
    def __init__(self, string: str) -> None:
        super().__init__(string)
        self.string = string  # without pymodbus's "[Connection]" prefix

    def __str__(self) -> str:
        return self.string


def serial_settings(options: ModbusRtuOptions) -> dict:
    s = options.line()
    if s["request_pause"] is None:  # 3.5 character times (11 bits each), at least 5 ms
        s["request_pause"] = max(0.005, 3.5 * 11 / s["baudrate"])
    return s


def port_problem(port: str, s: dict) -> str | None:
    """Why the serial port cannot be opened, in words a technician can act on; None if it can (a
    device server's port is tried by connecting to it)."""
    if device_server(port) is not None:
        return None
    try:
        probe = serial.Serial(port, baudrate=s["baudrate"], bytesize=s["bytesize"], parity=s["parity"],
                              stopbits=s["stopbits"], timeout=0, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        errno, text = getattr(exc, "errno", None), str(exc)
        if errno == 2 or "No such file" in text:
            return (f"serial port {port} does not exist; valid: the RS-485 adapter's device, "
                    "e.g. /dev/ttyUSB0 (list them with: ls /dev/ttyUSB* /dev/ttyS*)")
        if errno in (11, 16) or "exclusively lock" in text:
            return f"serial port {port} {BUSY}"
        if errno == 13:
            return f"serial port {port}: permission denied; valid: run hazgate as a user in the 'dialout' group"
        return f"serial port {port} cannot be opened: {text}"
    probe.close()
    return None


def server_problem(server: DeviceServer) -> str:
    """What to check when a serial device server does not take the connection."""
    if server.scheme == "udp":
        return f"serial device server {server} cannot be reached: no route to it or its address does not resolve"
    return (f"serial device server {server} does not accept a connection; check its address, that the "
            f"port is the serial line's (Moxa NPort: 4001 for port 1) in TCP Server mode, and that no other "
            f"program holds its only connection")


class SerialBus:
    """The one worker of a serial port (local or behind a device server): opens it, and runs one
    request at a time on it."""

    def __init__(self, port: str, settings: dict, key: tuple):
        self.port, self.settings, self.key = port, settings, key
        self.server = device_server(port)
        self.name = str(self.server) if self.server else port  # in messages and logs
        self.pause = settings["request_pause"]
        self._turns = asyncio.Condition()  # one request on the line at a time
        self._busy = False
        self._urgent = 0  # requests of answering units waiting for their turn
        self.client: AsyncModbusSerialClient | None = None
        self.users: set[int] = set()
        self.last_error = "not opened yet"
        self._logged: str | None = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._idle_since = 0.0
        self._rx = 0  # bytes seen since the request went out
        self._heard_at = 0.0  # when bytes last arrived
        self._quiet_until: dict[int, float] = {}  # unit -> not asked before then (its late answer)
        self.requests = 0

    def _client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient | AsyncModbusUdpClient:
        s, common = self.settings, {"framer": FramerType.RTU, "timeout": 1.0, "retries": 0,
                                    "reconnect_delay": 0, "name": f"rtu:{self.name}", "trace_packet": self._trace}
        if self.server is None:
            return AsyncModbusSerialClient(self.port, baudrate=s["baudrate"], bytesize=s["bytesize"],
                                           parity=s["parity"], stopbits=s["stopbits"], **common)
        kind = AsyncModbusTcpClient if self.server.scheme == "tcp" else AsyncModbusUdpClient
        return kind(self.server.host, port=self.server.port, **common)

    @property
    def is_open(self) -> bool:
        return self.client is not None and self.client.connected

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx += len(data)
            self._heard_at = time.monotonic()
        return data

    @contextlib.asynccontextmanager
    async def turn(self, low: bool = False):  # noqa: ANN201 - an async context manager
        """Exclusive use of the line, in arrival order. `low` (a unit that is failing) waits while
        answering units want the line, at most LOW_WAIT_MAX, so a dead unit never delays the others."""
        async with self._turns:
            if low:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOW_WAIT_MAX):
                        await self._turns.wait_for(lambda: not self._busy and not self._urgent)
                await self._turns.wait_for(lambda: not self._busy)
            else:
                self._urgent += 1
                try:
                    await self._turns.wait_for(lambda: not self._busy)
                finally:
                    self._urgent -= 1
            self._busy = True
        try:
            yield
        finally:
            async with self._turns:
                self._busy = False
                self._turns.notify_all()

    async def open(self) -> bool:
        async with self.turn():
            return await self._open()

    async def _open(self) -> bool:
        if self.is_open:
            return True
        self._close()
        if time.monotonic() < self._retry_at:
            return False
        s = self.settings
        problem = port_problem(self.port, s)
        for _ in range(BUSY_LOOKS - 1):
            if problem is None or not problem.endswith(BUSY):
                break
            await asyncio.sleep(BUSY_LOOK_EVERY)
            problem = port_problem(self.port, s)
        if problem is None:
            client = checked_client(self._client())
            if await client.connect():
                self.client = client
                self._backoff, self.last_error, self._logged = 0.0, "", None
                self._idle_since = time.monotonic()
                log.info("serial port open", extra={"fields": {"port": self.name, **{
                    k: s[k] for k in ("baudrate", "parity", "bytesize", "stopbits")}}})
                return True
            client.close()
            problem = server_problem(self.server) if self.server else f"serial port {self.port} could not be opened"
        self.last_error = problem
        self._backoff = min(PORT_BACKOFF_MAX, max(PORT_BACKOFF_MIN, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        if problem != self._logged:
            self._logged = problem
            log.warning("serial port unavailable", extra={"fields": {"port": self.name, "reason": problem}})
        return False

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def request(self, unit: int, table: str, start: int, count: int, answer_within: float,
                      low: bool = False):
        """One read request of `unit`; raises ModbusIOException (no answer), GarbledAnswer,
        WrongAnswer, PortUnavailable or ConnectionException like the TCP transport would."""
        quiet = self._quiet_until.get(unit, 0.0) - time.monotonic()
        if quiet > 0:
            await asyncio.sleep(quiet)  # outside the turn: the other units use the line meanwhile
        async with self.turn(low):
            if not await self._open():
                raise PortUnavailable(self.last_error)
            wait = max(self._idle_since, self._heard_at) + self.pause - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            c = self.client
            assert c is not None
            c.ctx.comm_params.timeout_connect = answer_within  # the asking unit's own timeout
            self._rx = 0
            self.requests += 1
            try:
                return await read_table(c, table, start, count, unit)
            except (ModbusIOException, WrongAnswer) as exc:
                self._quiet_until[unit] = time.monotonic() + answer_within
                if self._rx and isinstance(exc, ModbusIOException):
                    raise GarbledAnswer(f"garbled answer ({self._rx} bytes without a valid frame: bad "
                                        "CRC, line noise or another unit's answer)") from None
                raise
            except (ConnectionException, OSError) as exc:
                self.last_error = f"{'serial device server' if self.server else 'serial port'} {self.name} failed: {exc}"
                self._close()
                raise PortUnavailable(self.last_error) from None
            finally:
                self._idle_since = time.monotonic()

    def release(self, user: int) -> None:
        self.users.discard(user)
        if not self.users:
            self._close()
            _BUSES.pop(self.key, None)


_BUSES: dict[tuple, SerialBus] = {}


def bus_for(device: DeviceSpec) -> SerialBus:
    """The worker of the device's port, shared by every device configured on that port."""
    o = device.options
    key = (id(asyncio.get_running_loop()), o.bus if o.server else os.path.realpath(o.port))
    bus = _BUSES.get(key)
    if bus is None:
        bus = _BUSES[key] = SerialBus(o.port, serial_settings(o), key)
    return bus


class ModbusRtuDriver:
    def __init__(self, device: DeviceSpec):
        self.device = device
        self.settings = serial_settings(device.options)
        self.bus: SerialBus | None = None
        self.reader = BlockReader(device, self._request)
        self._fails = 0  # polls in a row in which the unit never answered
        self._skip_until = 0.0
        self._last_reason = "not polled yet"
        self._failure: Exception | None = None
        self._answered = False
        self._ever_answered = False
        self.backoffs = 0

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.is_open and self._fails == 0

    def describe(self) -> str:
        s = self.settings
        return (f"Modbus RTU {self.device.options.bus} unit {self.device.options.unit} "
                f"({s['baudrate']} {s['bytesize']}{s['parity']}{s['stopbits']}), timeout {self.device.timeout:g}s")

    def _bus(self) -> SerialBus:
        if self.bus is None:
            self.bus = bus_for(self.device)
            self.bus.users.add(id(self))
        return self.bus

    async def connect(self, attempts: int = 1) -> None:
        """Open the serial port (a unit itself has no connection); DeviceError if it cannot."""
        if not await self._bus().open():
            raise DeviceError(f"{self.describe()}: {self._bus().last_error}")

    async def _request(self, table: str, start: int, count: int):
        if self._failure is not None:  # the unit already failed this poll: no more bus time for it
            raise self._failure
        try:
            resp = await self._bus().request(self.device.options.unit, table, start, count, self.device.timeout,
                                             low=self._fails > 0)
        except (ModbusIOException, GarbledAnswer, WrongAnswer) as exc:
            # a unit that missed its last poll, or has not answered since the start, gets no more
            # line time this poll once a request fails; one that answered last time tries every block
            if self._fails or (not self._answered and not self._ever_answered):
                self._failure = exc
            raise
        self._answered = self._ever_answered = True
        return resp

    async def request_outside_poll(self, table: str, start: int, count: int):  # noqa: ANN201 - a pymodbus PDU
        """One read request of this unit outside any poll (`hazgate scan`): a request that gets no
        answer does not cost the unit its later requests, as it does within a poll."""
        return await self._bus().request(self.device.options.unit, table, start, count, self.device.timeout)

    async def read(self) -> list[Sample]:
        now = time.monotonic()
        if now < self._skip_until:
            return [Sample(p, None, BAD, self._last_reason) for p in self.device.points]
        bus = self._bus()
        if not bus.is_open and not await bus.open():
            return [Sample(p, None, BAD, bus.last_error) for p in self.device.points]
        self._failure, self._answered = None, False
        try:
            samples, link_lost = await self.reader.read_all()
        except Exception as exc:  # never end the device task
            log.exception("RTU poll failed", extra={"fields": {"device": self.device.name}})
            return [Sample(p, None, BAD, f"internal error: {exc!r}") for p in self.device.points]
        if link_lost:
            return samples
        if self._answered:
            if self._fails >= FAILS_BEFORE_BACKOFF:
                log.info("unit answers again", extra={"fields": {"device": self.device.name, "unit": self.device.options.unit}})
            self._fails = 0
            return samples
        self._fails += 1
        self._last_reason = next((s.reason for s in samples if s.reason), "no answer")
        if self._fails >= FAILS_BEFORE_BACKOFF:
            pause = min(UNIT_BACKOFF_MAX, UNIT_BACKOFF_MIN * 2 ** (self._fails - FAILS_BEFORE_BACKOFF))
            self._skip_until = time.monotonic() + pause
            self.backoffs += 1
            if self._fails == FAILS_BEFORE_BACKOFF:
                log.warning("unit backed off", extra={"fields": {
                    "device": self.device.name, "port": self.device.options.bus, "unit": self.device.options.unit,
                    "reason": self._last_reason}})
        return samples

    async def close(self) -> None:
        if self.bus is not None:
            self.bus.release(id(self))
            self.bus = None
