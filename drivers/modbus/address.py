"""Modbus point addresses: the four tables, zero-based wire addresses, register bits, and the
classic one-based notation (40101 / 400101, 30008, 00013, 10004)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

BIT_TABLES = ("co", "di")
REGISTER_WIDTH = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}
_CLASSIC = {"0": "co", "1": "di", "3": "ir", "4": "hr"}
ADDRESS_VALID = (
    "hr:N, ir:N, co:N, di:N (zero-based), hr:N.B for bit B (0-15) of a register, "
    "or classic 40001-49999 / 400001-465536 style"
)


@dataclass(frozen=True, slots=True)
class ModbusAddress:
    table: str  # hr | ir | co | di
    index: int  # zero-based wire address
    bit: int | None = None
    width: int = 1  # registers (or bits) the point occupies, from its type

    def __str__(self) -> str:
        return f"{self.table}:{self.index}" + (f".{self.bit}" if self.bit is not None else "")


def parse_modbus_address(text: str, ptype: str = "bool") -> ModbusAddress:
    """Parse `hr:100`, `hr:10.3`, `40101`, `400101`, ... for a point of type `ptype`;
    raise ValueError naming what is valid."""
    s = text.strip()
    m = re.fullmatch(r"(hr|ir|co|di):(\d+)(?:\.(\d+))?", s, re.IGNORECASE)
    if m:
        table, index = sys.intern(m.group(1).lower()), int(m.group(2))
        bit = int(m.group(3)) if m.group(3) is not None else None
    else:
        m = re.fullmatch(r"([0134])(\d{4,5})(?:\.(\d+))?", s)
        if not m:
            raise ValueError(f"{text!r} is not a Modbus address; valid: {ADDRESS_VALID}")
        table, number = _CLASSIC[m.group(1)], int(m.group(2))
        if number == 0:
            raise ValueError(f"{text!r}: classic addresses count from 1; valid: {ADDRESS_VALID}")
        index = number - 1
        bit = int(m.group(3)) if m.group(3) is not None else None
    if index > 65535:
        raise ValueError(f"{text!r}: address {index} is beyond 65535; valid: {ADDRESS_VALID}")
    if bit is not None and (table in BIT_TABLES or bit > 15):
        raise ValueError(f"{text!r}: a bit index (.B) is only valid on hr/ir, 0-15")
    single = table in BIT_TABLES or bit is not None
    return ModbusAddress(table, index, bit, 1 if single else REGISTER_WIDTH.get(ptype, 1))
