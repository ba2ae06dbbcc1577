"""A read-only scan of a Modbus address range, for an undocumented PLC (`hazgate scan`).

The range is read in blocks as large as the device allows; a block refused with exception 2 or
3 is split in two until the refused addresses stand alone, so the scan ends knowing which
addresses answer. Only read requests are sent (`read.read_table` through the driver's request).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus.address import BIT_TABLES
from drivers.modbus.read import EXCEPTION_NAMES, REFUSED, BlockReader, Request

RANGE_VALID = "TABLE:FIRST-LAST such as hr:0-199 (tables hr, ir, co, di; zero-based, 0-65535)"


@dataclass(frozen=True)
class ScanRange:
    table: str
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.table}:{self.first}-{self.last}"


@dataclass
class ScanResult:
    values: dict[int, int] = field(default_factory=dict)  # address -> register word or bit (0/1)
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (first, last, why), in address order
    requests: int = 0

    def fail(self, first: int, last: int, why: str) -> None:
        """Record `first..last` as not answered, joined to the run before it when it says the same."""
        if self.failed and self.failed[-1][1] == first - 1 and self.failed[-1][2] == why:
            first = self.failed.pop()[0]
        self.failed.append((first, last, why))


def parse_range(text: str) -> ScanRange:
    """`hr:0-199` (or one address, `hr:7`); ValueError naming what is valid."""
    m = re.fullmatch(r"\s*(hr|ir|co|di):(\d+)(?:-(\d+))?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a range; valid: {RANGE_VALID}")
    first = int(m.group(2))
    last = int(m.group(3)) if m.group(3) is not None else first
    if last > 65535 or first > last:
        raise ValueError(f"{text!r}: addresses must rise and stay within 0-65535; valid: {RANGE_VALID}")
    return ScanRange(m.group(1).lower(), first, last)


def scan_request(driver: Any) -> Request | None:
    """The read request of a Modbus driver, as made outside a poll (None for a driver of
    another protocol)."""
    reader = getattr(driver, "reader", None)
    if not isinstance(reader, BlockReader):
        return None
    return getattr(driver, "request_outside_poll", reader.request)


async def scan(request: Request, rng: ScanRange, block: int) -> ScanResult:
    """Read `rng` in blocks of at most `block` items; which addresses answered, and why the
    others did not. A lost link ends the scan: the rest is reported as not read."""
    out = ScanResult()
    pending = [(a, min(a + block - 1, rng.last)) for a in range(rng.first, rng.last + 1, block)]
    while pending:
        first, last = pending.pop(0)
        out.requests += 1
        try:
            resp = await request(rng.table, first, last - first + 1)
        except (ModbusIOException, TimeoutError):
            out.fail(first, last, "no answer (timeout)")
            continue
        except (ConnectionException, OSError) as exc:
            out.fail(first, rng.last, f"not read: connection lost: {exc}")
            break
        except ModbusException as exc:
            out.fail(first, last, f"modbus error: {exc}")
            continue
        if resp.isError():
            code = getattr(resp, "exception_code", 0)
            if code in REFUSED and last > first:
                mid = (first + last) // 2
                pending[0:0] = [(first, mid), (mid + 1, last)]
                continue
            out.fail(first, last, f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
            continue
        items = resp.bits if rng.table in BIT_TABLES else resp.registers
        out.values.update((first + i, int(v)) for i, v in enumerate(items[: last - first + 1]))
    return out
