"""Modbus RTU slaves that lie on request, on one end of a socat pseudo-terminal pair.

    with HostileRtuSlave({1: ModbusImage(), 2: ModbusImage()}) as bus:
        bus.units[1].hr[0] = 1234
        bus.mode = lambda r: "late" if r.unit == 2 else "honest"
        ...  # the code under test opens bus.master_port

`socat -d -d pty,raw,echo=0 pty,raw,echo=0` runs as a child process (ended by its PID in
`stop()`); the slaves answer on the second pty from a thread using pyserial, with
CRC-16/MODBUS framing. Requests are 8-byte frames (unit, function 1-4, address, count, CRC);
a frame with a bad CRC, or bytes that make no frame, go to `rejected` unanswered, as on a real
bus. Units the slave does not serve (and broadcast, unit 0) never answer.

Modes (per request; `mode` may be switched at any time, or be a callable that gets the
`Request` and returns the mode):

- `honest`: correct answers; exception 2 outside the image, 1 for other function codes;
- `late`: the honest answer `delay` seconds late (default 0.45 s, for a master timeout of
  0.3 s). The thread is busy meanwhile: the next request waits, exactly like a slow slave,
  and the late answer reaches a master that is already waiting for its next request;
- `garbled`: the honest frame with one data byte flipped (its CRC no longer matches);
- `wrong_function`: answers 4 for 3, 3 for 4, 2 for 1, 1 for 2, with that table's data;
- `wrong_count`: a well-formed frame (good CRC) with byte count and data for `count_delta`
  more registers (negative: fewer; bits: more or fewer bytes);
- `silent`: no answer;
- `other_unit`: the honest answer under another unit id (unit + 1, 247 wraps to 1).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable

import serial

from . import check_mode, choose
from .modbus_image import OTHER_FUNCTION, ModbusImage, Mode, Request, answer, crc16

MODES = frozenset({"honest", "late", "garbled", "wrong_function", "wrong_count", "silent", "other_unit"})
FRAME = 8  # unit, function, address (2), count (2), CRC (2)
GAP = 0.05  # seconds of silence after which a partial frame is dropped
START_TIMEOUT = 5.0


class HostileRtuSlave:
    """Slaves for the unit ids in `units` (each with its own image) on a fresh pty pair."""

    def __init__(self, units: dict[int, ModbusImage] | Iterable[int] = (1,), *, mode: Mode = "honest",
                 delay: float = 0.45, count_delta: int = 1, baudrate: int = 38400):
        self.units: dict[int, ModbusImage] = (
            units if isinstance(units, dict) else {u: ModbusImage() for u in units})
        self.mode = mode
        self.delay, self.count_delta, self.baudrate = delay, count_delta, baudrate
        self.master_port = ""  # the pty the code under test opens, known after start()
        self.slave_port = ""  # the pty this slave serves on
        self.requests: list[Request] = []  # mode "" for units not served (never answered)
        self.rejected: list[bytes] = []
        self.errors: list[Exception] = []  # what stopped the serving thread
        self.socat_log: list[str] = []
        self._socat: subprocess.Popen | None = None
        self._serial: serial.Serial | None = None
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._server: threading.Thread | None = None

    @property
    def socat_pid(self) -> int | None:
        return self._socat.pid if self._socat is not None else None

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = check_mode(value, MODES)

    def start(self) -> HostileRtuSlave:
        """Start socat, wait (bounded) until it has both ptys and moves data, then serve."""
        exe = shutil.which("socat")
        if exe is None:
            raise FileNotFoundError("socat is not installed (apt-get install -y socat)")
        self._stop.clear()
        self._socat = subprocess.Popen([exe, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        ready = threading.Event()
        self._drainer = self._thread(self._drain_socat, ready)
        try:
            ready.wait(START_TIMEOUT)
            log = "".join(self.socat_log)
            ptys = re.findall(r"PTY is (\S+)", log)
            if "starting data transfer loop" not in log or len(ptys) != 2:
                raise RuntimeError(f"socat made no pty pair within {START_TIMEOUT:g} s:\n{log}")
            self.master_port, self.slave_port = ptys
            self._serial = serial.Serial(self.slave_port, self.baudrate, timeout=0.01)
        except BaseException:
            self.stop()
            raise
        self._server = self._thread(self._serve)
        return self

    def stop(self) -> None:
        """Stop serving, close the pty, end socat by its PID; bounded waits throughout."""
        self._stop.set()
        if self._server is not None:
            self._server.join(2.0)
            self._server = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        if self._socat is not None:
            if self._socat.poll() is None:
                os.kill(self._socat.pid, signal.SIGTERM)
                try:
                    self._socat.wait(2.0)
                except subprocess.TimeoutExpired:
                    os.kill(self._socat.pid, signal.SIGKILL)
                    self._socat.wait(2.0)
            if self._drainer is not None:
                self._drainer.join(2.0)  # socat's stderr is at its end now
            assert self._socat.stderr is not None
            self._socat.stderr.close()
            self._socat = self._drainer = None

    def __enter__(self) -> HostileRtuSlave:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _thread(target: Callable[..., None], *args: object) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"hostile-rtu{target.__name__}")
        t.start()
        return t

    def _drain_socat(self, ready: threading.Event) -> None:
        """Collect socat's log until it exits (it logs only at start and stop with -d -d); `ready`
        once it moves data, or once it has ended."""
        assert self._socat is not None and self._socat.stderr is not None
        for line in self._socat.stderr:
            self.socat_log.append(line)
            if "starting data transfer loop" in line:
                ready.set()
        ready.set()

    def _serve(self) -> None:
        assert self._serial is not None
        buf, last = b"", time.monotonic()
        try:
            while not self._stop.is_set():
                chunk = self._serial.read(256)
                if not chunk:
                    continue
                now = time.monotonic()
                if buf and now - last > GAP:  # the rest of a frame that never came
                    self.rejected.append(buf)
                    buf = b""
                buf, last = buf + chunk, now
                while len(buf) >= FRAME:
                    frame, buf = buf[:FRAME], buf[FRAME:]
                    if crc16(frame[:6]) != frame[6:]:
                        self.rejected.append(frame + buf)  # framing lost: drop all of it
                        buf = b""
                    else:
                        self._handle(frame)
        except Exception as exc:  # noqa: BLE001 - kept for the test to assert on
            self.errors.append(exc)

    def _handle(self, frame: bytes) -> None:
        unit, fn = frame[0], frame[1]
        address, count = struct.unpack(">HH", frame[2:6])
        request = Request(fn, unit, address, count)
        self.requests.append(request)
        image = self.units.get(unit)
        if image is None:
            return
        mode = choose(self.mode, request, MODES)
        if mode == "silent":
            return
        pdu = answer(image, fn, address, count,
                     as_function=OTHER_FUNCTION.get(fn) if mode == "wrong_function" else None,
                     delta=self.count_delta if mode == "wrong_count" else 0)
        out = bytearray([unit % 247 + 1 if mode == "other_unit" else unit]) + pdu
        out += crc16(out)
        if mode == "garbled":
            out[-3] ^= 0xFF  # the last data byte
        if mode == "late" and self._stop.wait(self.delay):
            return
        assert self._serial is not None
        self._serial.write(bytes(out))
        self._serial.flush()
