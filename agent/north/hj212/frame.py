"""HJ 212-2017 framing: `##` + 4-digit length + data segment + 4 hex CRC + CR LF.

The CRC is the standard's own, not CRC-16/MODBUS: start 0xFFFF; for each byte
crc = (crc >> 8) ^ byte, then 8 rounds of (shift right, xor 0xA001 if the bit shifted out was 1).
The first step leaves at most 8 bits, so each byte is one look-up in a 256-entry table.
A stream of frames splits with `agent.north.framing.Deframer(b"\\r\\n", MAX_FRAME)`, whose frames
`unpack` takes as they are (with or without the CR LF).
"""

from __future__ import annotations

HEADER = b"##"
TAIL = b"\r\n"
MAX_SEGMENT = 9999  # the length field has 4 decimal digits
MAX_FRAME = len(HEADER) + 4 + MAX_SEGMENT + 4  # without the CR LF
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HJ212Error(ValueError):
    """A frame or data segment that breaks HJ 212-2017."""


def _byte_table() -> tuple[int, ...]:
    table = []
    for value in range(256):
        crc = value
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _byte_table()


def crc16_hj212(data: bytes) -> int:
    """The HJ 212-2017 CRC of a data segment."""
    crc = 0xFFFF
    for byte in data:
        crc = _TABLE[(crc >> 8) ^ byte]
    return crc


def pack(segment: str) -> bytes:
    """One frame around a data segment (ASCII, at most 9999 bytes); the CRC is upper-case hex."""
    try:
        data = segment.encode("ascii")
    except UnicodeEncodeError as exc:
        raise HJ212Error(f"the data segment has {segment[exc.start]!r} at position {exc.start}; "
                         "HJ 212 data segments are ASCII") from None
    if len(data) > MAX_SEGMENT:
        raise HJ212Error(f"the data segment is {len(data)} bytes; HJ 212 frames hold at most "
                         f"{MAX_SEGMENT}: split it into PNUM/PNO packets")
    return b"%s%04d%s%04X%s" % (HEADER, len(data), data, crc16_hj212(data), TAIL)


def unpack(frame: bytes) -> str:
    """The data segment of one frame, after checking header, length and CRC (either hex case)."""
    body = frame[:-len(TAIL)] if frame.endswith(TAIL) else frame
    if not body.startswith(HEADER):
        raise HJ212Error(f"the frame starts with {body[:2]!r}, not {HEADER!r}")
    length = body[2:6]
    if len(length) != 4 or not length.isdigit():
        raise HJ212Error(f"the length field is {length!r}; it must be 4 decimal digits")
    size = int(length)
    if len(body) != 6 + size + 4:
        raise HJ212Error(f"the length field says {size} bytes of data segment, the frame holds "
                         f"{len(body) - 10} (between the length field and a 4-digit CRC)")
    data, crc_text = body[6:6 + size], body[6 + size:]
    if not _HEX.issuperset(crc_text):
        raise HJ212Error(f"the CRC field is {crc_text!r}; it must be 4 hex digits")
    expected = crc16_hj212(data)
    if int(crc_text, 16) != expected:
        raise HJ212Error(f"CRC {crc_text.decode()} does not match the data segment "
                         f"(computed {expected:04X})")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise HJ212Error(f"the data segment has byte 0x{data[exc.start]:02X} at position "
                         f"{exc.start}; HJ 212 data segments are ASCII") from None
