"""`hazgate read`: one read of every point of a device, printed as a table for commissioning.

Values outside a point's eng_min..eng_max or raw_min..raw_max get a hint naming the byte order
or scale that would fit; `--raw` adds the register words in hex and, for multi-register points,
the value in all four byte orders."""

from __future__ import annotations

import sys

from agent.model import BYTE_ORDERS
from agent.pipeline.normalize import engineering
from agent.tools.words import all_orders, hex_words, point_words, range_hint
from drivers.base import DeviceError, DeviceSpec
from drivers.registry import make_driver


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


async def read_device(device: DeviceSpec, raw: bool = False) -> int:
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
    head = ("TAG", "ADDRESS", "RAW", "VALUE", "UNIT") + (("WORDS", *BYTE_ORDERS) if raw else ()) + ("QUALITY",)
    rows, hints = [head], []
    for s in samples:
        value = engineering(s.point, s.raw) if s.raw is not None else None
        q, reason = s.quality, s.reason
        if s.raw is not None and value is None:  # as the running agent reports it
            q, reason = "bad", "decode error: not a finite number"
        quality = q + (f" ({reason})" if reason else "")
        words = point_words(driver, s.point) if s.raw is not None else None
        extra: tuple[str, ...] = ()
        if raw:
            orders = all_orders(s.point, words)
            extra = (hex_words(words), *(_fmt(orders.get(o)) for o in BYTE_ORDERS))
        rows.append((s.point.tag, s.point.address, _fmt(s.raw), _fmt(value), s.point.unit or "-", *extra, quality))
        if s.raw is not None and (hint := range_hint(s.point, s.raw, words)):
            hints.append(hint)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    for hint in hints:
        print(f"hint: {hint}")
    bad = sum(1 for s in samples if s.quality != "good")
    print(f"{len(samples)} points, {bad} not good; {getattr(driver, 'reader', None) and driver.reader.requests} requests")
    return 0
