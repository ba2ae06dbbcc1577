"""What the Modbus peers share: the true register image, the request record and PDU building.

Function codes served: 1 read coils, 2 read discrete inputs, 3 read holding registers,
4 read input registers. Everything is hand-written (no pymodbus), so a peer can send exactly
the bytes a broken device would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TABLES = {1: "co", 2: "di", 3: "hr", 4: "ir"}
OTHER_FUNCTION = {1: 2, 2: 1, 3: 4, 4: 3}  # the answer a confused device gives instead
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS = 1, 2


class ModbusImage:
    """The true image: coils and discrete inputs (bool), holding and input registers (0..65535).

    Plain lists of `size` entries, all zero at first; a test sets and reads them directly
    (`image.hr[0:2] = [0x4148, 0]`). Addresses past the end are refused with exception 2.
    """

    def __init__(self, size: int = 256):
        self.co: list[bool] = [False] * size
        self.di: list[bool] = [False] * size
        self.hr: list[int] = [0] * size
        self.ir: list[int] = [0] * size

    def table(self, function: int) -> list:
        return getattr(self, TABLES[function])

    def values(self, function: int, address: int, count: int) -> list:
        """`count` entries from `address`, zeros past the end of the table (for the plausible lies)."""
        t, zero = self.table(function), (False if function in (1, 2) else 0)
        return [t[a] if 0 <= a < len(t) else zero for a in range(address, address + count)]

    def in_range(self, function: int, address: int, count: int) -> bool:
        return count >= 1 and address >= 0 and address + count <= len(self.table(function))


@dataclass
class Request:
    """One read request as the peer received it, and the mode it was answered in."""

    function: int
    unit: int
    address: int
    count: int
    tid: int | None = None  # Modbus TCP transaction id; None on RTU
    mode: str = ""
    at: float = field(default_factory=time.monotonic)


Mode = str | Callable[[Request], str]  # a fixed mode, or one chosen per request


def pack_bits(bits: Sequence[bool]) -> bytes:
    """Coil/discrete-input bits, first bit in the least significant bit of the first byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def read_response(function: int, values: Sequence[int | bool]) -> bytes:
    """A read response PDU: function code, byte count, data."""
    if function in (1, 2):
        data = pack_bits(values)
    else:
        data = b"".join(int(v).to_bytes(2, "big") for v in values)
    return bytes([function, len(data)]) + data


def exception_response(function: int, code: int) -> bytes:
    return bytes([function | 0x80, code])


def answer(image: ModbusImage, function: int, address: int, count: int, *, as_function: int | None = None,
           shift: int = 0, delta: int = 0) -> bytes:
    """The response PDU to a read, honest by default.

    as_function: answer with this function code and the data of its table (wrong function);
    shift: the data of `address + shift` (a plausible but wrong value);
    delta: data for `count + delta` registers, or `delta` bytes more or fewer of bits.
    Honest requests outside the image get exception 2; the lies are padded with zeros instead.
    """
    if function not in TABLES:
        return exception_response(function, ILLEGAL_FUNCTION)
    lying = as_function is not None or shift or delta
    if not lying and not image.in_range(function, address, count):
        return exception_response(function, ILLEGAL_ADDRESS)
    fn = as_function or function
    if fn in (3, 4):
        n = count + delta
    elif delta:  # bits travel in whole bytes: more or fewer bytes than the count needs
        n = 8 * ((count + 7) // 8 + delta)
    else:
        n = count
    return read_response(fn, image.values(fn, address + shift, max(0, n)))


def crc16(frame: bytes) -> bytes:
    """CRC-16/MODBUS of `frame`, low byte first (as it goes on the wire)."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")
