"""Range hints of the commissioning tools (agent/tools/words.py), from register words alone."""

from __future__ import annotations

from agent.model import Point
from agent.tools.words import all_orders, hex_words, range_hint
from drivers.modbus.address import parse_modbus_address
from drivers.modbus.codec import decode, encode, registers_to_bytes


def _point(ptype: str, order: str = "ABCD", **kw: float) -> Point:
    p = Point("P", "hr:0", ptype, 2, "t.csv", byte_order=order, **kw)  # type: ignore[arg-type]
    p.location = parse_modbus_address("hr:0", ptype)
    return p


def _raw(p: Point, words: list[int]) -> float | int:
    return decode(registers_to_bytes(words), p.type, p.byte_order)  # type: ignore[return-value]


def test_in_range_has_no_hint() -> None:
    p = _point("float32", "CDAB", eng_min=0, eng_max=20)
    words = encode(12.5, "float32", "CDAB")
    assert range_hint(p, _raw(p, words), words) is None
    assert hex_words(words) == "0000_4148"
    assert all_orders(p, words)["CDAB"] == 12.5


def test_byte_swapped_int16_is_named() -> None:
    p = _point("uint16", eng_min=0, eng_max=1000)
    words = encode(500, "uint16", "BADC")  # 0xF401 read big-endian: 62465
    assert range_hint(p, _raw(p, words), words) == ("P: 62465 is outside eng_min..eng_max 0..1000; "
                                                    "byte_order BADC gives 500")
    assert all_orders(p, words) == {}  # one register: no byte-order columns


def test_raw_range_off_by_ten_names_the_raw_range_that_fits() -> None:
    p = _point("uint16", raw_min=0, raw_max=4000, eng_min=0, eng_max=100)
    assert range_hint(p, 20000, [20000]) == ("P: 20000 is outside raw_min..raw_max 0..4000; "
                                              "raw_min..raw_max 0..40000 gives 50")


def test_nothing_fits() -> None:
    p = _point("int16", eng_min=0, eng_max=10)
    assert range_hint(p, -7, [0xFFF9]) == ("P: -7 is outside eng_min..eng_max 0..10; no byte order or "
                                           "power-of-ten scale fits: check the address and type")


def test_bools_and_unbounded_points_get_no_hint() -> None:
    assert range_hint(_point("bool"), True, [1]) is None
    assert range_hint(_point("float32"), 1e30, encode(1e30, "float32", "ABCD")) is None
