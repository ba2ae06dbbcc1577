"""Register decoding: known wire patterns for every type and byte order, round trips, scaling.

The vectors below are written out by hand from the IEEE 754 / two's complement bit patterns,
not computed with the codec, so a wrong byte order in the codec cannot agree with itself.
Byte orders: A is the most significant byte. ABCD big-endian, CDAB word-swapped, BADC
byte-swapped within each word, DCBA little-endian. For 64-bit values CDAB reverses the order
of the four words; 16-bit values only know ABCD = CDAB (big-endian) and BADC = DCBA (swapped).
"""

from __future__ import annotations

import math
import random
import struct

import pytest

from agent.model import BYTE_ORDERS, TYPES, Point
from agent.pipeline.normalize import engineering
from drivers.modbus.address import parse_modbus_address
from drivers.modbus.codec import BlockDecoder, decode, encode, registers_to_bytes

NAN, INF = float("nan"), float("inf")

# (type, value, {order: registers on the wire})
VECTORS: list[tuple[str, float | int, dict[str, list[int]]]] = [
    # --- float32
    ("float32", 1.0, {"ABCD": [0x3F80, 0x0000], "CDAB": [0x0000, 0x3F80],
                      "BADC": [0x803F, 0x0000], "DCBA": [0x0000, 0x803F]}),
    ("float32", -2.5, {"ABCD": [0xC020, 0x0000], "CDAB": [0x0000, 0xC020],
                       "BADC": [0x20C0, 0x0000], "DCBA": [0x0000, 0x20C0]}),
    # 0x4048F5C3 is the float32 nearest 3.14; all four bytes differ, so every swap shows
    ("float32", 3.140000104904175, {"ABCD": [0x4048, 0xF5C3], "CDAB": [0xF5C3, 0x4048],
                                    "BADC": [0x4840, 0xC3F5], "DCBA": [0xC3F5, 0x4840]}),
    ("float32", -1234.5, {"ABCD": [0xC49A, 0x5000], "CDAB": [0x5000, 0xC49A],
                          "BADC": [0x9AC4, 0x0050], "DCBA": [0x0050, 0x9AC4]}),
    ("float32", INF, {"ABCD": [0x7F80, 0x0000], "CDAB": [0x0000, 0x7F80],
                      "BADC": [0x807F, 0x0000], "DCBA": [0x0000, 0x807F]}),
    ("float32", -INF, {"ABCD": [0xFF80, 0x0000], "CDAB": [0x0000, 0xFF80],
                       "BADC": [0x80FF, 0x0000], "DCBA": [0x0000, 0x80FF]}),
    ("float32", NAN, {"ABCD": [0x7FC0, 0x0000], "CDAB": [0x0000, 0x7FC0],
                      "BADC": [0xC07F, 0x0000], "DCBA": [0x0000, 0xC07F]}),
    # --- float64
    ("float64", 1.0, {"ABCD": [0x3FF0, 0x0000, 0x0000, 0x0000], "CDAB": [0x0000, 0x0000, 0x0000, 0x3FF0],
                      "BADC": [0xF03F, 0x0000, 0x0000, 0x0000], "DCBA": [0x0000, 0x0000, 0x0000, 0xF03F]}),
    ("float64", -2.5, {"ABCD": [0xC004, 0x0000, 0x0000, 0x0000], "CDAB": [0x0000, 0x0000, 0x0000, 0xC004],
                       "BADC": [0x04C0, 0x0000, 0x0000, 0x0000], "DCBA": [0x0000, 0x0000, 0x0000, 0x04C0]}),
    # 0x400921FB54442D18 = pi
    ("float64", math.pi, {"ABCD": [0x4009, 0x21FB, 0x5444, 0x2D18], "CDAB": [0x2D18, 0x5444, 0x21FB, 0x4009],
                          "BADC": [0x0940, 0xFB21, 0x4454, 0x182D], "DCBA": [0x182D, 0x4454, 0xFB21, 0x0940]}),
    ("float64", INF, {"ABCD": [0x7FF0, 0, 0, 0], "CDAB": [0, 0, 0, 0x7FF0],
                      "BADC": [0xF07F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF07F]}),
    ("float64", -INF, {"ABCD": [0xFFF0, 0, 0, 0], "CDAB": [0, 0, 0, 0xFFF0],
                       "BADC": [0xF0FF, 0, 0, 0], "DCBA": [0, 0, 0, 0xF0FF]}),
    ("float64", NAN, {"ABCD": [0x7FF8, 0, 0, 0], "CDAB": [0, 0, 0, 0x7FF8],
                      "BADC": [0xF87F, 0, 0, 0], "DCBA": [0, 0, 0, 0xF87F]}),
    # --- int32
    ("int32", -2, {"ABCD": [0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF],
                   "BADC": [0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF]}),
    ("int32", 0x12345678, {"ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
                           "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412]}),
    ("int32", -123456789, {"ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4],   # 0xF8A432EB
                           "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8]}),
    ("int32", -2147483648, {"ABCD": [0x8000, 0x0000], "CDAB": [0x0000, 0x8000],
                            "BADC": [0x0080, 0x0000], "DCBA": [0x0000, 0x0080]}),
    # --- uint32
    ("uint32", 4294967294, {"ABCD": [0xFFFF, 0xFFFE], "CDAB": [0xFFFE, 0xFFFF],
                            "BADC": [0xFFFF, 0xFEFF], "DCBA": [0xFEFF, 0xFFFF]}),
    ("uint32", 0x89ABCDEF, {"ABCD": [0x89AB, 0xCDEF], "CDAB": [0xCDEF, 0x89AB],
                            "BADC": [0xAB89, 0xEFCD], "DCBA": [0xEFCD, 0xAB89]}),
    ("uint32", 70000, {"ABCD": [0x0001, 0x1170], "CDAB": [0x1170, 0x0001],   # 0x00011170
                       "BADC": [0x0100, 0x7011], "DCBA": [0x7011, 0x0100]}),
    # --- int16: one register; CDAB behaves as ABCD, DCBA as BADC
    ("int16", -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    ("int16", -12345, {"ABCD": [0xCFC7], "CDAB": [0xCFC7], "BADC": [0xC7CF], "DCBA": [0xC7CF]}),
    ("int16", -32768, {"ABCD": [0x8000], "CDAB": [0x8000], "BADC": [0x0080], "DCBA": [0x0080]}),
    ("int16", 4660, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    # --- uint16
    ("uint16", 4660, {"ABCD": [0x1234], "CDAB": [0x1234], "BADC": [0x3412], "DCBA": [0x3412]}),
    ("uint16", 65534, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    ("uint16", 1, {"ABCD": [0x0001], "CDAB": [0x0001], "BADC": [0x0100], "DCBA": [0x0100]}),
]

CASES = [
    pytest.param(ptype, value, order, regs, id=f"{ptype}-{value!r}-{order}")
    for ptype, value, by_order in VECTORS
    for order, regs in by_order.items()
]


def wire(regs: list[int]) -> bytes:
    """Registers as they arrive in a response PDU: each one big-endian."""
    return b"".join(r.to_bytes(2, "big") for r in regs)


def same(a: float | int, b: float | int) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def test_vectors_cover_every_type_and_order() -> None:
    covered = {(t, o) for t, _, by_order in VECTORS for o in by_order}
    assert covered == {(t, o) for t in TYPES if t != "bool" for o in BYTE_ORDERS}
    negatives = {t for t, v, _ in VECTORS if not math.isnan(v) and v < 0}
    assert negatives == {"int16", "int32", "float32", "float64"}


@pytest.mark.parametrize(("ptype", "value", "order", "regs"), CASES)
def test_decode_known_pattern(ptype: str, value: float | int, order: str, regs: list[int]) -> None:
    got = decode(wire(regs), ptype, order)
    assert same(got, value), f"{ptype} {order} {[hex(r) for r in regs]} -> {got!r}, want {value!r}"
    if ptype.startswith("float"):
        assert isinstance(got, float)
    else:
        assert isinstance(got, int) and not isinstance(got, bool)


@pytest.mark.parametrize(("ptype", "value", "order", "regs"), CASES)
def test_encode_known_pattern(ptype: str, value: float | int, order: str, regs: list[int]) -> None:
    """The simulator's encoder produces exactly the device's wire registers."""
    assert encode(value, ptype, order) == regs


def test_float32_nan_payload_and_sign_survive_any_order() -> None:
    # a negative quiet NaN with a payload: still NaN whichever order it is read in
    for order, regs in {"ABCD": [0xFFC0, 0x0001], "CDAB": [0x0001, 0xFFC0],
                        "BADC": [0xC0FF, 0x0100], "DCBA": [0x0100, 0xC0FF]}.items():
        assert math.isnan(decode(wire(regs), "float32", order))


def test_wrong_order_gives_a_different_value() -> None:
    """A sanity check that the orders are really distinct for a 4-byte value."""
    data = wire([0x4048, 0xF5C3])
    values = {order: decode(data, "float32", order) for order in BYTE_ORDERS}
    assert len(set(values.values())) == 4
    assert values["ABCD"] == pytest.approx(3.14, abs=1e-6)


# --- bool: a whole register (non-zero = true) or one bit of it; byte order does not apply


@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_bool_whole_register(order: str) -> None:
    assert decode(wire([0x0000]), "bool", order) is False
    assert decode(wire([0x0001]), "bool", order) is True
    assert decode(wire([0x8000]), "bool", order) is True
    assert decode(wire([0xFFFF]), "bool", order) is True


@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_bool_bits_of_a_register(order: str) -> None:
    # 0x8005 = bits 15, 2 and 0 set; bit 0 is the least significant bit of the register value
    data = wire([0x8005])
    got = [decode(data, "bool", order, bit) for bit in range(16)]
    assert got == [True, False, True] + [False] * 12 + [True]
    # 0x0100: only bit 8, which is the low bit of the high (first) byte
    assert [b for b in range(16) if decode(wire([0x0100]), "bool", order, b)] == [8]


def test_bool_bit_address_parses() -> None:
    a = parse_modbus_address("hr:10.3")
    assert (a.table, a.index, a.bit) == ("hr", 10, 3)
    assert decode(wire([0b1000]), "bool", "ABCD", a.bit) is True
    assert decode(wire([0b0111]), "bool", "ABCD", a.bit) is False


@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_encode_bool(order: str) -> None:
    assert encode(True, "bool", order) == [1]
    assert encode(False, "bool", order) == [0]


# --- round trips


ROUND_TRIP = {
    "int16": [0, 1, -1, 2, -2, 32767, -32768, -12345, 300],
    "uint16": [0, 1, 255, 256, 4660, 32768, 65535],
    "int32": [0, -1, -2, 65536, -65536, 2147483647, -2147483648, -123456789],
    "uint32": [0, 1, 65535, 65536, 4294967295, 0x89ABCDEF],
    "float32": [0.0, -0.0, 1.0, -2.5, 0.15625, 1234.5, -(2.0**-100), 3.4028234663852886e38, INF, -INF, NAN],
    "float64": [0.0, -0.0, 1.0, -2.5, math.pi, -1e-300, 1.7976931348623157e308, 123456.789, INF, -INF, NAN],
}


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("ptype", sorted(ROUND_TRIP))
def test_round_trip(ptype: str, order: str) -> None:
    width = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}[ptype]
    for value in ROUND_TRIP[ptype]:
        regs = encode(value, ptype, order)
        assert len(regs) == width and all(0 <= r <= 0xFFFF for r in regs)
        got = decode(registers_to_bytes(regs), ptype, order)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got)
        else:
            assert got == value
            assert math.copysign(1, got) == math.copysign(1, value)


def test_round_trip_float32_rounds_to_nearest_single() -> None:
    for order in BYTE_ORDERS:
        got = decode(registers_to_bytes(encode(0.1, "float32", order)), "float32", order)
        assert got == struct.unpack(">f", struct.pack(">f", 0.1))[0]
        assert got == pytest.approx(0.1, rel=1e-7)


def test_encode_out_of_range_raises() -> None:
    with pytest.raises(struct.error):
        encode(70000, "uint16", "ABCD")
    with pytest.raises(struct.error):
        encode(-1, "uint32", "ABCD")


def test_registers_to_bytes() -> None:
    assert registers_to_bytes([0x1234, 0xABCD]) == b"\x12\x34\xab\xcd"


# --- scaling: Point.to_engineering / to_raw and normalize.engineering


def point(ptype: str = "int16", **kw: object) -> Point:
    return Point(tag="T", address="hr:0", type=ptype, line=2, file="t.csv",
                 location=parse_modbus_address("hr:0", ptype), **kw)  # type: ignore[arg-type]


def test_no_scaling_passes_raw_through() -> None:
    p = point("int16")
    assert p.to_engineering(-5) == -5 and isinstance(p.to_engineering(-5), int)
    assert p.to_raw(-5) == -5
    f = point("float32")
    assert f.to_engineering(1.5) == 1.5


def test_scale_and_offset() -> None:
    p = point("int16", scale=0.1, offset=-50.0)
    assert p.to_engineering(713) == pytest.approx(21.3)
    assert p.to_engineering(0) == pytest.approx(-50.0)
    assert p.to_engineering(-100) == pytest.approx(-60.0)
    assert p.to_raw(21.3) == 713 and isinstance(p.to_raw(21.3), int)
    assert p.to_raw(-60.0) == -100
    q = point("uint16", scale=0.01)
    assert q.to_engineering(350) == pytest.approx(3.5)
    assert q.to_raw(3.5) == 350


def test_scale_on_float_point_keeps_float_raw() -> None:
    p = point("float32", scale=2.0, offset=1.0)
    assert p.to_engineering(1.25) == 3.5
    assert p.to_raw(3.5) == 1.25 and isinstance(p.to_raw(3.5), float)


def test_raw_and_engineering_ranges() -> None:
    # 4-20 mA on a 0..32000 analogue input card: 6400 = 4 mA = 0 %, 32000 = 20 mA = 100 %
    p = point("uint16", raw_min=6400.0, raw_max=32000.0, eng_min=0.0, eng_max=100.0)
    assert p.to_engineering(6400) == 0.0
    assert p.to_engineering(32000) == 100.0
    assert p.to_engineering(19200) == pytest.approx(50.0)
    assert p.to_engineering(0) == pytest.approx(-25.0)  # below range: a broken loop shows as such
    assert p.to_raw(50.0) == 19200
    assert p.to_raw(0.0) == 6400
    # offset engineering range
    t = point("int16", raw_min=0.0, raw_max=1000.0, eng_min=-20.0, eng_max=80.0)
    assert t.to_engineering(250) == pytest.approx(5.0)
    assert t.to_raw(5.0) == 250
    # a reversed raw range (transmitter counting down) works too
    r = point("uint16", raw_min=4095.0, raw_max=0.0, eng_min=0.0, eng_max=100.0)
    assert r.to_engineering(4095) == 0.0
    assert r.to_engineering(0) == 100.0


def test_bool_ignores_scaling() -> None:
    p = point("bool")
    assert p.to_engineering(1) is True
    assert p.to_engineering(0) is False
    assert p.to_raw(True) is True


def test_engineering_maps_non_finite_to_none() -> None:
    f = point("float32")
    assert engineering(f, NAN) is None
    assert engineering(f, INF) is None
    assert engineering(f, -INF) is None
    assert engineering(f, 2.5) == 2.5
    scaled = point("float32", scale=10.0)
    assert engineering(scaled, NAN) is None
    assert engineering(scaled, 0.25) == 2.5
    assert engineering(point("int16", scale=0.5), 3) == 1.5
    assert engineering(point("bool"), 1) is True
    assert engineering(point("bool"), 0) is False


def test_engineering_of_decoded_nan_register() -> None:
    """The path the driver takes: NaN on the wire becomes no value, not a number."""
    f = point("float32", byte_order="CDAB")
    raw = decode(wire([0x0000, 0x7FC0]), f.type, f.byte_order)
    assert engineering(f, raw) is None


def test_block_decoder_agrees_with_point_by_point_decoding() -> None:
    """One struct call per block gives what `decode` gives each point: every type and byte
    order, gaps between points, bits of one register, and a point overlapping another."""
    rng = random.Random(7)
    points, index = [], 0
    for k in range(400):
        ptype, order = rng.choice(TYPES), rng.choice(BYTE_ORDERS)
        if ptype == "bool":
            address = f"hr:{index}.{rng.randrange(16)}" if rng.random() < 0.5 else f"hr:{index}"
        else:
            address = f"hr:{index}"
        p = Point(tag=f"T{k}", address=address, type=ptype, line=k + 2, file="t.csv", byte_order=order,
                  overlap=True, location=parse_modbus_address(address, ptype))
        points.append(p)
        index += p.location.width if rng.random() < 0.8 else 0  # 20 %: the next point shares registers
        index += rng.choice((0, 0, 0, 1, 3))  # gaps
    data = bytes(rng.randrange(256) for _ in range(2 * (index + 4)))
    decoder = BlockDecoder(0, points)
    assert decoder.fast and decoder.slow  # both paths are exercised
    for p, got in zip(points, decoder.values(data), strict=True):
        off = 2 * p.location.index
        want = decode(data[off : off + 2 * p.location.width], p.type, p.byte_order, p.location.bit)
        assert (math.isnan(got) and math.isnan(want)) if isinstance(want, float) and math.isnan(want) else got == want, p
