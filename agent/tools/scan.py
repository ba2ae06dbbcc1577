"""`hazgate scan`: a read-only register-range scan of an undocumented PLC.

Prints every address that answered, with its word in hex, as uint16 and int16, and the float32
byte orders of the word pair starting there whose value is plausible; then the answered and
the unanswered ranges."""

from __future__ import annotations

import dataclasses
import math
import sys

from agent.model import BYTE_ORDERS
from drivers.base import DeviceError, DeviceSpec
from drivers.modbus.address import BIT_TABLES
from drivers.modbus.codec import decode, registers_to_bytes
from drivers.modbus.scan import ScanRange, scan, scan_request
from drivers.registry import PROTOCOLS, make_driver

PLAUSIBLE = (1e-6, 1e9)  # magnitudes a float32 measurement has


def with_unit(device: DeviceSpec, unit: int) -> DeviceSpec:
    """`device` addressed as unit `unit`; ValueError when its protocol does not allow that unit."""
    lo, hi = PROTOCOLS[device.protocol].limits.get("unit", (0, 255))
    if not lo <= unit <= hi:
        raise ValueError(f"--unit {unit}: {device.protocol} units are {lo}-{hi}")
    return dataclasses.replace(device, options=dataclasses.replace(device.options, unit=unit))


def _floats(values: dict[int, int], address: int) -> str:
    pair = [values.get(address), values.get(address + 1)]
    if None in pair or pair == [0, 0]:  # a zero pair is 0 in every order: the integer columns say so
        return ""
    data = registers_to_bytes(pair)  # type: ignore[arg-type]
    shown = []
    for order in BYTE_ORDERS:
        v = decode(data, "float32", order)
        if math.isfinite(v) and PLAUSIBLE[0] <= abs(v) <= PLAUSIBLE[1]:
            shown.append(f"{order}={v:.7g}")
    return " ".join(shown)


def _runs(addresses: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for a in addresses:
        if runs and runs[-1][1] == a - 1:
            runs[-1] = (runs[-1][0], a)
        else:
            runs.append((a, a))
    return runs


def _span(table: str, first: int, last: int) -> str:
    return f"{table}:{first}" + (f"-{last}" if last != first else "")


async def scan_device(device: DeviceSpec, rng: ScanRange) -> int:
    driver = make_driver(device)
    request = scan_request(driver)
    if request is None:
        print(f"hazgate scan: device {device.name!r} speaks {device.protocol}, which has no register "
              "ranges; scan serves Modbus devices (for OPC UA, use hazgate browse)", file=sys.stderr)
        return 2
    try:
        await driver.connect()
    except DeviceError as exc:
        print(f"hazgate scan: device {device.name!r} unreachable: {exc}", file=sys.stderr)
        return 1
    bits = rng.table in BIT_TABLES
    try:
        result = await scan(request, rng, device.options.max_bits if bits else device.options.max_registers)
    finally:
        await driver.close()
    values = result.values
    if bits:
        rows = [("ADDRESS", "VALUE")] + [(f"{rng.table}:{a}", str(v)) for a, v in sorted(values.items())]
    else:
        rows = [("ADDRESS", "HEX", "UINT16", "INT16", "FLOAT32")]
        rows += [(f"{rng.table}:{a}", f"{w:04X}", str(w), str(w - 65536 if w > 32767 else w), _floats(values, a))
                 for a, w in sorted(values.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    answered = ", ".join(_span(rng.table, a, b) for a, b in _runs(sorted(values))) or "none"
    print(f"answered: {answered}")
    for first, last, why in result.failed:
        print(f"not answered: {_span(rng.table, first, last)}: {why}")
    print(f"{device.name} {device.options.where}: {rng}, {len(values)} of {rng.last - rng.first + 1} "
          f"addresses answered; {result.requests} requests")
    return 0
