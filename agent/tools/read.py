"""`hazgate read`: one read of every point of a device, printed as a table for commissioning."""

from __future__ import annotations

import sys

from agent.pipeline.normalize import engineering
from drivers.base import DeviceError, DeviceSpec
from drivers.registry import make_driver


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


async def read_device(device: DeviceSpec) -> int:
    try:
        driver = make_driver(device)
        await driver.connect()
    except DeviceError as exc:
        print(f"hazgate read: device {device.name!r} unreachable: {exc}", file=sys.stderr)
        return 1
    try:
        samples = await driver.read()
    finally:
        await driver.close()
    rows = [("TAG", "ADDRESS", "RAW", "VALUE", "UNIT", "QUALITY")]
    for s in samples:
        value = engineering(s.point, s.raw) if s.raw is not None else None
        q, reason = s.quality, s.reason
        if s.raw is not None and value is None:  # as the running agent reports it
            q, reason = "bad", "decode error: not a finite number"
        quality = q + (f" ({reason})" if reason else "")
        rows.append((s.point.tag, s.point.address, _fmt(s.raw), _fmt(value), s.point.unit or "-", quality))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    bad = sum(1 for s in samples if s.quality != "good")
    print(f"{len(samples)} points, {bad} not good; {getattr(driver, 'reader', None) and driver.reader.requests} requests")
    return 0
