"""Register words for the commissioning tools (`read --raw`, `watch`, `scan`): the words a point
came from, its value in every byte order, and a hint when a value is out of its ranges."""

from __future__ import annotations

import math
import struct
from typing import Any

from agent.model import BYTE_ORDERS, Point
from agent.pipeline.normalize import engineering
from drivers.modbus.codec import decode, registers_to_bytes

FACTORS = (0.1, 10.0, 0.01, 100.0, 0.001, 1000.0)  # powers of ten a mis-scaled value is off by
# A float this close to zero but not zero is no measurement: the bytes of a real value in the
# wrong order (12.5 sent CDAB and read ABCD is 2.3e-41), even when it lies inside the range.
TINY = 1e-12


def point_words(driver: Any, point: Point) -> list[int] | None:
    """The register words `point` was decoded from in the driver's last read (None: not a
    register point, or its block was not answered)."""
    words = getattr(getattr(driver, "reader", None), "words", None)
    loc = point.location
    if words is None or getattr(loc, "table", None) not in ("hr", "ir"):
        return None
    got = [words.get((loc.table, loc.index + i)) for i in range(loc.width)]
    return None if None in got else got  # type: ignore[return-value]


def hex_words(words: list[int] | None) -> str:
    """`41C8_0000`: the words in wire order, one token (tables stay splittable on spaces)."""
    return "_".join(f"{w:04X}" for w in words) if words else "-"


def _decoded(point: Point, words: list[int], order: str) -> float | int | None:
    try:
        return decode(registers_to_bytes(words), point.type, order)  # type: ignore[return-value]
    except (struct.error, ValueError):
        return None


def all_orders(point: Point, words: list[int] | None) -> dict[str, float | int | None]:
    """A multi-register point's raw value in each byte order (empty for anything else)."""
    if not words or len(words) < 2 or point.type == "bool":
        return {}
    return {order: _decoded(point, words, order) for order in BYTE_ORDERS}


def out_of_range(point: Point, raw: float | int | bool | None) -> str | None:
    """Which declared range (eng_min..eng_max, raw_min..raw_max) `raw` falls outside, or that it
    is a float too close to zero to be a measurement; None when it is plausible."""
    if raw is None or point.type == "bool":
        return None
    if point.type.startswith("float") and raw != 0 and abs(raw) < TINY:
        return f"{raw:.6g} is too close to zero to be a measurement"
    eng = engineering(point, raw)
    if eng is None:
        return "not a finite number"
    for name, value, lo, hi in (("raw", raw, point.raw_min, point.raw_max), ("eng", eng, point.eng_min, point.eng_max)):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return f"{value:.6g} is outside {name}_min..{name}_max {_span(lo, hi)}"
    return None


def _span(lo: float | None, hi: float | None) -> str:
    return f"{'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}"


def _fits(point: Point, raw: float | int | None) -> bool:
    return raw is not None and not (isinstance(raw, float) and not math.isfinite(raw)) and out_of_range(point, raw) is None


def range_hint(point: Point, raw: float | int | bool | None, words: list[int] | None) -> str | None:
    """None when `raw` is in the point's ranges; else what is wrong and the byte order or the
    scale that would bring it inside them."""
    wrong = out_of_range(point, raw)
    if wrong is None:
        return None
    fits: list[str] = []
    if words:
        for order in BYTE_ORDERS:
            other = _decoded(point, words, order)
            if order != point.byte_order and other != raw and _fits(point, other):
                fits.append(f"byte_order {order} gives {engineering(point, other):.6g}")  # type: ignore[arg-type]
                break
    if not fits and isinstance(raw, int | float) and math.isfinite(raw):
        ranged = point.raw_min is not None and point.raw_max is not None
        for f in FACTORS:
            if _fits(point, raw * f):
                eng = engineering(point, raw * f)
                fits.append(f"raw_min..raw_max {point.raw_min / f:g}..{point.raw_max / f:g} gives {eng:.6g}"  # type: ignore[operator]
                            if ranged else f"scale {point.scale * f:g} gives {eng:.6g}")
                break
    fix = fits[0] if fits else "no byte order or power-of-ten scale fits: check the address and type"
    return f"{point.tag}: {wrong}; {fix}"
