"""A Modbus TCP server that lies on request: hand-written MBAP + PDU on asyncio streams.

    async with HostileModbusTcp() as plc:           # 127.0.0.1, a free port: plc.port
        plc.image.hr[0:2] = [0x4148, 0x0000]        # the true image
        plc.mode = "wrong_function"                 # or a callable choosing per request
        ...
        assert plc.requests[-1].mode == "wrong_function"

Modes (per request; `mode` may be switched at any time, or be a callable that gets the
`Request` and returns the mode, so a property test can change it every poll):

- `honest`: correct answers to function codes 1-4; exception 2 outside the image, 1 for others;
- `wrong_function`: answers 4 for 3, 3 for 4, 2 for 1, 1 for 2, with that table's data;
- `extra_registers`: byte count and data for `extra` more registers (bits: more bytes);
- `fewer_registers`: one register fewer (bits: one byte fewer);
- `tid_zero`: transaction id 0 in the answer;
- `wrong_tid`: the request's transaction id + 1;
- `wrong_unit`: the request's unit id + 1;
- `late`: the honest answer (data as of the request) `delay` seconds later; the connection
  keeps serving meanwhile, so later requests may be answered first. With
  `late_tid="latest"` the late answer carries the transaction id of the newest request on
  the connection when it goes out, as a TCP-to-RTU gateway does when the serial answer comes
  after its own timeout: the client then takes it for the answer to that newer request;
- `shifted`: the data of `address + shift` (a plausible but wrong value);
- `garbage`: 1 to 32 random bytes (seeded `rng`);
- `reset_mid_frame`: the first half of the honest frame, then the connection is closed;
- `silent`: no answer;
- `exception`: exception `exception_code` (default 2, illegal data address).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct

from . import check_mode, choose
from .modbus_image import OTHER_FUNCTION, ModbusImage, Mode, Request, answer, exception_response

MODES = frozenset({
    "honest", "wrong_function", "extra_registers", "fewer_registers", "tid_zero", "wrong_tid",
    "wrong_unit", "late", "shifted", "garbage", "reset_mid_frame", "silent", "exception",
})
HOST = "127.0.0.1"


class HostileModbusTcp:
    """Serves `image` to any unit id; records every request in `requests` (with its mode)."""

    def __init__(self, image: ModbusImage | None = None, *, port: int = 0, mode: Mode = "honest",
                 delay: float = 0.5, late_tid: str = "own", shift: int = 2, extra: int = 1,
                 exception_code: int = 2, seed: int = 0):
        self.image = image or ModbusImage()
        self.port = port  # 0: a free one, known after start()
        self.mode = mode
        self.delay, self.shift, self.extra, self.exception_code = delay, shift, extra, exception_code
        if late_tid not in ("own", "latest"):
            raise ValueError(f"late_tid {late_tid!r} is not 'own' or 'latest'")
        self.late_tid = late_tid
        self.rng = random.Random(seed)
        self.requests: list[Request] = []
        self.connections = 0  # accepted so far
        self.errors: list[Exception] = []  # what broke a connection handler (e.g. an unknown mode)
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, int] = {}  # open connections: their newest request tid
        self._handlers: set[asyncio.Task] = set()
        self._late: set[asyncio.Task] = set()  # late answers not sent yet

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = check_mode(value, MODES)

    async def start(self) -> HostileModbusTcp:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection; cancel pending late answers."""
        if self._server is not None:
            self._server.close()
        for t in list(self._late):
            t.cancel()
        for w in list(self._open):
            w.close()  # the handler sees the end of the stream and returns
        pending = self._late | self._handlers
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HostileModbusTcp:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._open[writer] = 0
        self.connections += 1
        try:
            while not writer.is_closing():
                tid, pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                if pid != 0 or not 2 <= length <= 254:  # not Modbus: a real device drops the link
                    break
                self._handle(writer, tid, unit, await reader.readexactly(length - 1))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
            self.errors.append(exc)
        finally:
            writer.close()
            self._open.pop(writer, None)
            self._handlers.discard(task)

    def _handle(self, writer: asyncio.StreamWriter, tid: int, unit: int, pdu: bytes) -> None:
        address, count = struct.unpack(">HH", pdu[1:5]) if len(pdu) == 5 else (0, 0)
        request = Request(pdu[0], unit, address, count, tid)
        self.requests.append(request)
        self._open[writer] = tid
        mode = choose(self.mode, request, MODES)
        if mode == "silent":
            return
        if mode == "garbage":
            writer.write(self.rng.randbytes(self.rng.randint(1, 32)))
            return
        fn = request.function
        if mode == "exception":
            body = exception_response(fn, self.exception_code)
        else:
            body = answer(self.image, fn, address, count,
                          as_function=OTHER_FUNCTION.get(fn) if mode == "wrong_function" else None,
                          shift=self.shift if mode == "shifted" else 0,
                          delta={"extra_registers": self.extra, "fewer_registers": -1}.get(mode, 0))
        out_tid = {"tid_zero": 0, "wrong_tid": tid % 0xFFFF + 1}.get(mode, tid)
        out_unit = (unit + 1) % 256 if mode == "wrong_unit" else unit
        frame = struct.pack(">HHHB", out_tid, 0, len(body) + 1, out_unit) + body
        if mode == "late":
            late = asyncio.create_task(self._later(writer, frame))
            self._late.add(late)
            late.add_done_callback(self._late.discard)
        elif mode == "reset_mid_frame":
            writer.write(frame[: len(frame) // 2])
            writer.close()
        else:
            writer.write(frame)

    async def _later(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        await asyncio.sleep(self.delay)
        if writer.is_closing():
            return
        if self.late_tid == "latest":
            frame = self._open[writer].to_bytes(2, "big") + frame[2:]
        with contextlib.suppress(ConnectionError):
            writer.write(frame)
