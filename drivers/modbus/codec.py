"""Modbus register decoding and encoding for every type and byte order.

Byte orders name how the value's bytes, A being the most significant, sit on the wire:
ABCD big-endian, CDAB word-swapped, BADC byte-swapped within each word, DCBA little-endian.
For 64-bit values the same rule extends to four words (CDAB reverses the word order).
16-bit values only know byte swapping: ABCD/CDAB are big-endian, BADC/DCBA swapped.
"""

from __future__ import annotations

import struct

_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}


def _to_big_endian(data: bytes, order: str) -> bytes:
    """Rearrange wire bytes in `order` into big-endian (ABCD) order; an involution."""
    if order == "ABCD":
        return data
    if order == "DCBA":
        return data[::-1]
    swapped = bytes(b for i in range(0, len(data), 2) for b in (data[i + 1], data[i]))
    if order == "BADC":
        return swapped
    # CDAB: reverse the order of the 16-bit words
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    return b"".join(reversed(words)) if len(data) > 2 else data


def _order_16(order: str) -> str:
    return "ABCD" if order in ("ABCD", "CDAB") else "DCBA"


def decode(data: bytes, ptype: str, order: str, bit: int | None = None) -> float | int | bool:
    """Decode a point from the wire bytes of its registers."""
    if ptype == "bool":
        word = int.from_bytes(data[:2], "big")
        return bool(word >> bit & 1) if bit is not None else word != 0
    if len(data) == 2:
        order = _order_16(order)
    return struct.unpack(_FORMAT[ptype], _to_big_endian(data, order))[0]


def encode(value: float | int | bool, ptype: str, order: str) -> list[int]:
    """Registers that a device would hold for `value` (used by the simulator)."""
    if ptype == "bool":
        return [1 if value else 0]
    fmt = _FORMAT[ptype]
    if fmt[1] not in "fd":
        value = int(value)
    data = struct.pack(fmt, value)
    if len(data) == 2:
        order = _order_16(order)
    wire = _to_big_endian(data, order)
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


def registers_to_bytes(registers: list[int]) -> bytes:
    return struct.pack(f">{len(registers)}H", *registers)


_NATIVE = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}


class BlockDecoder:
    """Decodes the register points of one block read with one precompiled `struct` call.

    Points in big-endian order (ABCD; for 16-bit values ABCD or CDAB) become fields of one
    format over the whole block, gaps as pad bytes. The others (bools, swapped byte orders,
    points overlapping an earlier one) are decoded one by one with `decode`.
    """

    def __init__(self, start: int, points: list) -> None:  # points: agent.config.points.Point, block order
        fmt, cursor = [">"], 0  # cursor: registers covered so far, from the block's start
        self.fast: list[int] = []  # positions in `points` decoded by the struct
        self.slow: list[tuple[int, int]] = []  # (position, byte offset) decoded one by one
        for i, p in enumerate(points):
            off = p.location.index - start
            code = None if p.location.bit is not None else _NATIVE.get(p.type)
            if code is not None and p.location.width > 1 and p.byte_order != "ABCD":
                code = None
            if code is not None and p.location.width == 1 and _order_16(p.byte_order) != "ABCD":
                code = None
            if code is None or off < cursor:
                self.slow.append((i, off * 2))
                continue
            if off > cursor:
                fmt.append(f"{2 * (off - cursor)}x")
            fmt.append(code)
            cursor = off + p.location.width
            self.fast.append(i)
        self.struct = struct.Struct("".join(fmt))
        self.points = points

    def values(self, data: bytes) -> list[float | int | bool | Exception]:
        """Raw values in block order; a point that cannot be decoded gets its exception."""
        fast = self.struct.unpack_from(data)
        if not self.slow:
            return list(fast)
        out: list = [None] * len(self.points)
        for i, v in zip(self.fast, fast, strict=True):
            out[i] = v
        for i, off in self.slow:
            p = self.points[i]
            try:
                out[i] = decode(data[off : off + 2 * p.location.width], p.type, p.byte_order, p.location.bit)
            except (struct.error, ValueError) as exc:
                out[i] = exc
        return out
