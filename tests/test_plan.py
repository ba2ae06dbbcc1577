"""Read planning (drivers.modbus.plan) and plan execution (drivers.modbus.read.BlockReader).

BlockReader runs against a fake in-memory PLC: an async `request(table, start, count)` that
answers with pymodbus's own response classes, and refuses with exception 2 (illegal data
address) any request whose range touches a refused address, as real PLCs do.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pymodbus.exceptions import ConnectionException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from agent.model import BAD, GOOD, Point
from drivers.base import DeviceSpec
from drivers.modbus.address import parse_modbus_address
from drivers.modbus.codec import encode
from drivers.modbus.options import ModbusTcpOptions
from drivers.modbus.plan import Block, plan_blocks, split_block
from drivers.modbus.read import BlockReader

FC = {"co": 1, "di": 2, "hr": 3, "ir": 4}


def pt(address: str, ptype: str = "uint16", order: str = "ABCD", tag: str | None = None) -> Point:
    return Point(tag=tag or address.replace(":", "_").replace(".", "_"), address=address, type=ptype,
                 line=2, file="t.csv", byte_order=order, location=parse_modbus_address(address, ptype))


def spans(blocks: list[Block]) -> list[str]:
    return [str(b) for b in blocks]


def assert_sound(points: list[Point], blocks: list[Block], max_registers: int = 125, max_bits: int = 2000) -> None:
    """Every point in exactly one block, wholly inside it; no block over the protocol limit."""
    seen = [id(p) for b in blocks for p in b.points]
    assert sorted(seen) == sorted(id(p) for p in points)
    for b in blocks:
        limit = max_bits if b.table in ("co", "di") else max_registers
        assert 1 <= b.count <= limit, b
        for p in b.points:
            assert p.location.table == b.table
            assert b.start <= p.location.index and p.location.index + p.location.width <= b.start + b.count, (p.address, b)


# --- plan_blocks


def test_neighbours_merge_into_one_block() -> None:
    points = [pt("hr:2"), pt("hr:0"), pt("hr:1")]
    blocks = plan_blocks(points)
    assert spans(blocks) == ["hr:0+3"]
    assert [p.address for p in blocks[0].points] == ["hr:0", "hr:1", "hr:2"]


def test_multi_register_neighbours_merge() -> None:
    points = [pt("hr:0", "float32"), pt("hr:2", "float64"), pt("hr:6", "int32"), pt("hr:8")]
    assert spans(plan_blocks(points)) == ["hr:0+9"]


@pytest.mark.parametrize(
    ("addresses", "max_gap", "want"),
    [
        (["hr:0", "hr:9"], 8, ["hr:0+10"]),            # 8 unread registers between: still one read
        (["hr:0", "hr:10"], 8, ["hr:0+1", "hr:10+1"]),  # 9 unread: two reads
        (["hr:0", "hr:1"], 0, ["hr:0+2"]),             # max_gap 0: only touching points merge
        (["hr:0", "hr:2"], 0, ["hr:0+1", "hr:2+1"]),
        (["hr:0", "hr:50"], 49, ["hr:0+51"]),
        (["hr:0", "hr:5", "hr:20", "hr:24"], 4, ["hr:0+6", "hr:20+5"]),
    ],
)
def test_gap_limit(addresses: list[str], max_gap: int, want: list[str]) -> None:
    points = [pt(a) for a in addresses]
    blocks = plan_blocks(points, max_gap=max_gap)
    assert spans(blocks) == want
    assert_sound(points, blocks)


def test_gap_is_measured_after_a_multi_register_point() -> None:
    # float32 at hr:0 ends at hr:2; hr:10 is 8 registers later
    assert spans(plan_blocks([pt("hr:0", "float32"), pt("hr:10")], max_gap=8)) == ["hr:0+11"]
    assert spans(plan_blocks([pt("hr:0", "float32"), pt("hr:11")], max_gap=8)) == ["hr:0+2", "hr:11+1"]


def test_125_register_limit() -> None:
    full = [pt(f"hr:{i}") for i in range(125)]
    assert spans(plan_blocks(full)) == ["hr:0+125"]
    over = [pt(f"hr:{i}") for i in range(126)]
    blocks = plan_blocks(over)
    assert spans(blocks) == ["hr:0+125", "hr:125+1"]
    assert_sound(over, blocks)
    # a gap counts against the limit too: hr:0 and hr:125 cannot share a read
    assert spans(plan_blocks([pt("hr:0"), pt("hr:120"), pt("hr:125")], max_gap=120)) == ["hr:0+121", "hr:125+1"]


def test_configured_register_limit() -> None:
    points = [pt(f"ir:{i}") for i in range(30)]
    blocks = plan_blocks(points, max_registers=10)
    assert spans(blocks) == ["ir:0+10", "ir:10+10", "ir:20+10"]


@pytest.mark.parametrize("table", ["co", "di"])
def test_2000_bit_limit(table: str) -> None:
    full = [pt(f"{table}:{i}", "bool") for i in range(2000)]
    assert spans(plan_blocks(full)) == [f"{table}:0+2000"]
    over = [pt(f"{table}:{i}", "bool") for i in range(2500)]
    blocks = plan_blocks(over)
    assert spans(blocks) == [f"{table}:0+2000", f"{table}:2000+500"]
    assert_sound(over, blocks)
    # the register limit does not apply to bits
    assert len(plan_blocks([pt(f"{table}:{i}", "bool") for i in range(300)])) == 1


def test_multi_register_points_are_never_split() -> None:
    # float32 at hr:123 ends exactly at the 125 limit; at hr:124 it would need 126
    assert spans(plan_blocks([pt("hr:0"), pt("hr:123", "float32")], max_gap=125)) == ["hr:0+125"]
    assert spans(plan_blocks([pt("hr:0"), pt("hr:124", "float32")], max_gap=125)) == ["hr:0+1", "hr:124+2"]
    points = [pt(f"hr:{4 * i}", "float64") for i in range(10)]
    blocks = plan_blocks(points, max_registers=10)
    assert spans(blocks) == ["hr:0+8", "hr:8+8", "hr:16+8", "hr:24+8", "hr:32+8"]
    assert_sound(points, blocks, max_registers=10)


def test_tables_are_kept_apart() -> None:
    points = [pt("ir:1"), pt("hr:0"), pt("co:0", "bool"), pt("ir:0"), pt("di:0", "bool"), pt("hr:1")]
    blocks = plan_blocks(points)
    assert spans(blocks) == ["co:0+1", "di:0+1", "hr:0+2", "ir:0+2"]
    assert_sound(points, blocks)


def test_bits_of_one_register_share_it() -> None:
    points = [pt("hr:10.0", "bool"), pt("hr:10.15", "bool"), pt("hr:10.3", "bool"), pt("hr:11", "int16")]
    blocks = plan_blocks(points)
    assert spans(blocks) == ["hr:10+2"]
    assert len(blocks[0].points) == 4


def test_classic_addresses_plan_like_their_zero_based_twins() -> None:
    classic = [pt("40101"), pt("40102"), pt("30001"), pt("00013", "bool"), pt("10004", "bool")]
    assert spans(plan_blocks(classic)) == ["co:12+1", "di:3+1", "hr:100+2", "ir:0+1"]


def test_thousand_float32_points_plan_to_a_few_tens_of_blocks() -> None:
    """1000 consecutive float32 = 2000 registers. A 125-register read holds 62 whole float32
    (124 registers; a 63rd would need 126), so the plan is ceil(1000 / 62) = 17 reads, not 16:
    points are never split across two reads."""
    points = [pt(f"hr:{2 * i}", "float32") for i in range(1000)]
    blocks = plan_blocks(points)
    assert len(blocks) == math.ceil(1000 / 62) == 17
    assert [b.count for b in blocks] == [124] * 16 + [16]
    assert_sound(points, blocks)
    # with max_registers 124 nothing changes; 16 blocks need 2000 / 16 = 125 registers and whole points
    assert len(plan_blocks(points, max_registers=124)) == 17


def test_empty_table_plans_nothing() -> None:
    assert plan_blocks([]) == []


# --- split_block


def test_split_single_point_block_is_empty() -> None:
    assert split_block(Block("hr", 0, 2, [pt("hr:0", "float32")])) == []
    assert split_block(Block("hr", 0, 1, [])) == []


def test_split_block_halves_points_and_covers_them_tightly() -> None:
    points = [pt("hr:0"), pt("hr:3", "float32"), pt("hr:10"), pt("hr:12", "float64")]
    block = plan_blocks(points)[0]
    assert str(block) == "hr:0+16"
    left, right = split_block(block)
    assert (str(left), [p.address for p in left.points]) == ("hr:0+5", ["hr:0", "hr:3"])
    assert (str(right), [p.address for p in right.points]) == ("hr:10+6", ["hr:10", "hr:12"])
    # odd count: the right half takes the extra point
    left, right = split_block(Block("co", 0, 5, [pt(f"co:{i}", "bool") for i in range(5)]))
    assert (str(left), str(right)) == ("co:0+2", "co:2+3")


def test_split_until_single_points() -> None:
    block = plan_blocks([pt(f"hr:{i}") for i in range(8)])[0]
    queue, singles = [block], []
    while queue:
        b = queue.pop()
        parts = split_block(b)
        if parts:
            queue.extend(parts)
        else:
            singles.append(str(b))
    assert sorted(singles, key=lambda s: int(s.split(":")[1].split("+")[0])) == [f"hr:{i}+1" for i in range(8)]


# --- BlockReader against a fake PLC


class FakePlc:
    """Registers and bits in memory; refuses any request that touches a refused address."""

    def __init__(self, refuse: tuple[str, ...] = (), code: int = 2):
        self.regs: dict[tuple[str, int], int] = {}
        self.bits: dict[tuple[str, int], bool] = {}
        self.refuse = [parse_modbus_address(a) for a in refuse]
        self.code = code
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}  # str(block) -> exception to raise
        self.short = False

    def load(self, points: list[Point], values: dict[str, object]) -> None:
        for p in points:
            v = values[p.tag]
            a = p.location
            if a.table in ("co", "di"):
                self.bits[(a.table, a.index)] = bool(v)
            elif a.bit is not None:
                old = self.regs.get((a.table, a.index), 0)
                self.regs[(a.table, a.index)] = old | (int(bool(v)) << a.bit)
            else:
                for i, word in enumerate(encode(v, p.type, p.byte_order)):  # type: ignore[arg-type]
                    self.regs[(a.table, a.index + i)] = word

    async def request(self, table: str, start: int, count: int):
        key = f"{table}:{start}+{count}"
        self.calls.append(key)
        if key in self.fail:
            raise self.fail[key]
        if any(r.table == table and start <= r.index < start + count for r in self.refuse):
            return ExceptionResponse(FC[table], self.code)
        if table in ("co", "di"):
            bits = [self.bits.get((table, start + i), False) for i in range(count)]
            bits += [False] * (-len(bits) % 8)  # the wire pads to whole bytes
            return ReadCoilsResponse(bits=bits[: count - 1] if self.short else bits)
        regs = [self.regs.get((table, start + i), 0) for i in range(count)]
        return ReadHoldingRegistersResponse(registers=regs[:-1] if self.short else regs)


def device(points: list[Point], **kw: object) -> DeviceSpec:
    return DeviceSpec(name="plc", protocol="modbus-tcp", poll_interval=1.0, points_file=Path("t.csv"),
                      options=ModbusTcpOptions("127.0.0.1", **kw), points=points)  # type: ignore[arg-type]


MIXED = [
    pt("hr:0", "float32", "ABCD", "F32_ABCD"), pt("hr:2", "float32", "CDAB", "F32_CDAB"),
    pt("hr:4", "float32", "BADC", "F32_BADC"), pt("hr:6", "float32", "DCBA", "F32_DCBA"),
    pt("hr:8", "float64", "CDAB", "F64"), pt("hr:12", "int16", "ABCD", "I16"),
    pt("hr:13", "uint16", "BADC", "U16"), pt("hr:14", "int32", "DCBA", "I32"),
    pt("hr:16", "uint32", "CDAB", "U32"), pt("hr:18.0", "bool", tag="BIT0"),
    pt("hr:18.5", "bool", tag="BIT5"), pt("hr:18.15", "bool", tag="BIT15"),
    pt("hr:19", "int16", tag="I16B"), pt("hr:20", "uint16", tag="U16B"),
    pt("hr:21", "int16", tag="I16C"), pt("hr:22", "uint16", tag="U16C"),
    pt("ir:0", "int16", tag="IR0"), pt("co:0", "bool", tag="CO0"), pt("co:9", "bool", tag="CO9"),
    pt("di:3", "bool", tag="DI3"),
]
MIXED_VALUES = {
    "F32_ABCD": 1.5, "F32_CDAB": -2.25, "F32_BADC": 1234.5, "F32_DCBA": 0.15625, "F64": -98765.4321,
    "I16": -300, "U16": 65000, "I32": -123456789, "U32": 4000000000, "BIT0": True, "BIT5": False,
    "BIT15": True, "I16B": -1, "U16B": 7, "I16C": 12, "U16C": 13, "IR0": -2, "CO0": True, "CO9": True,
    "DI3": True,
}


async def test_reads_every_type_and_order() -> None:
    plc = FakePlc()
    plc.load(MIXED, MIXED_VALUES)
    reader = BlockReader(device(MIXED), plc.request)
    samples, lost = await reader.read_all()
    assert lost is None
    got = {s.point.tag: s for s in samples}
    assert set(got) == set(MIXED_VALUES)
    for tag, want in MIXED_VALUES.items():
        assert got[tag].quality == GOOD and got[tag].reason is None
        assert got[tag].raw == want, tag
    assert plc.calls == ["co:0+10", "di:3+1", "hr:0+23", "ir:0+1"]
    assert reader.requests == 4


REFUSE_POINTS = [pt(f"hr:{2 * i}", "float32", tag=f"P{i}") for i in range(10)] + [pt("co:0", "bool", tag="C0")]
REFUSE_VALUES = {**{f"P{i}": float(i) + 0.5 for i in range(10)}, "C0": True}


async def test_refused_address_costs_only_its_own_point() -> None:
    plc = FakePlc(refuse=("hr:10",))  # first register of P5 (hr:10-11)
    plc.load(REFUSE_POINTS, REFUSE_VALUES)
    reader = BlockReader(device(REFUSE_POINTS), plc.request)

    samples, lost = await reader.read_all()
    assert lost is None
    first_cost = reader.requests
    by_tag = {s.point.tag: s for s in samples}
    assert len(samples) == len(REFUSE_POINTS)
    bad = by_tag.pop("P5")
    assert bad.quality == BAD and bad.raw is None
    assert "exception 2" in bad.reason and "illegal data address" in bad.reason
    for tag, s in by_tag.items():
        assert s.quality == GOOD and s.raw == REFUSE_VALUES[tag], tag
    assert plc.calls[:2] == ["co:0+1", "hr:0+20"]  # the whole block was tried first

    # the plan was refined: the next poll skips the refusals and the halving
    plc.calls.clear()
    samples, _ = await reader.read_all()
    second_cost = reader.requests - first_cost
    assert second_cost < first_cost
    assert second_cost == len(plc.calls) == len(reader.blocks)
    assert "hr:10+2" in plc.calls  # the refused point alone, still retried each poll
    assert not any(c != "hr:10+2" and c.startswith("hr:") and _touches(c, 10) for c in plc.calls)
    by_tag = {s.point.tag: s for s in samples}
    assert by_tag["P5"].quality == BAD and "exception 2" in by_tag["P5"].reason
    assert all(s.quality == GOOD for t, s in by_tag.items() if t != "P5")

    # and stays refined: a third poll costs the same as the second
    plc.calls.clear()
    await reader.read_all()
    assert len(plc.calls) == second_cost


def _touches(span: str, address: int) -> bool:
    start, count = (int(x) for x in span.split(":")[1].split("+"))
    return start <= address < start + count


async def test_refused_register_in_the_second_word_of_a_point() -> None:
    plc = FakePlc(refuse=("hr:7",))  # second register of P3 (hr:6-7)
    plc.load(REFUSE_POINTS, REFUSE_VALUES)
    samples, _ = await BlockReader(device(REFUSE_POINTS), plc.request).read_all()
    bad = [s.point.tag for s in samples if s.quality != GOOD]
    assert bad == ["P3"]


async def test_refused_address_in_a_gap_loses_nothing() -> None:
    points = [pt("hr:0", tag="A"), pt("hr:2", tag="B")]
    plc = FakePlc(refuse=("hr:1",))
    plc.load(points, {"A": 1, "B": 2})
    reader = BlockReader(device(points), plc.request)
    samples, _ = await reader.read_all()
    assert [(s.point.tag, s.quality, s.raw) for s in samples] == [("A", GOOD, 1), ("B", GOOD, 2)]
    assert plc.calls == ["hr:0+3", "hr:0+1", "hr:2+1"]
    plc.calls.clear()
    await reader.read_all()
    assert plc.calls == ["hr:0+1", "hr:2+1"]


async def test_other_exceptions_do_not_split() -> None:
    points = [pt("hr:0", tag="A"), pt("hr:1", tag="B"), pt("ir:0", tag="C")]
    plc = FakePlc(refuse=("hr:1",), code=4)  # device failure: splitting would not help
    plc.load(points, {"A": 1, "B": 2, "C": 3})
    reader = BlockReader(device(points), plc.request)
    samples, lost = await reader.read_all()
    assert lost is None
    assert plc.calls == ["hr:0+2", "ir:0+1"]
    by_tag = {s.point.tag: s for s in samples}
    for tag in ("A", "B"):
        assert by_tag[tag].quality == BAD and "exception 4" in by_tag[tag].reason
        assert "device failure" in by_tag[tag].reason
    assert by_tag["C"].quality == GOOD and by_tag["C"].raw == 3


async def test_timeout_marks_only_its_block_bad() -> None:
    points = [pt("hr:0", tag="A"), pt("hr:100", tag="B")]
    plc = FakePlc()
    plc.load(points, {"A": 1, "B": 2})
    plc.fail["hr:0+1"] = TimeoutError()
    samples, lost = await BlockReader(device(points), plc.request).read_all()
    assert lost is None
    assert [(s.point.tag, s.quality, s.reason) for s in samples] == [("A", BAD, "timeout"), ("B", GOOD, None)]


async def test_lost_connection_stops_requests_and_marks_the_rest_bad() -> None:
    points = [pt("co:0", "bool", tag="A"), pt("hr:0", tag="B"), pt("ir:0", tag="C")]
    plc = FakePlc()
    plc.load(points, {"A": True, "B": 2, "C": 3})
    plc.fail["hr:0+1"] = ConnectionException("peer closed")
    reader = BlockReader(device(points), plc.request)
    samples, lost = await reader.read_all()
    assert lost and "connection lost" in lost
    assert plc.calls == ["co:0+1", "hr:0+1"]  # nothing sent after the link broke
    assert [(s.point.tag, s.quality) for s in samples] == [("A", GOOD), ("B", BAD), ("C", BAD)]
    assert samples[2].reason == lost
    assert len(reader.blocks) == 3  # the plan survives for the next connection


@pytest.mark.parametrize("table", ["hr", "co"])
async def test_short_response_is_a_decode_error_not_a_crash(table: str) -> None:
    ptype = "bool" if table == "co" else "uint16"
    points = [pt(f"{table}:{i}", ptype, tag=f"T{i}") for i in range(16)]
    plc = FakePlc()
    plc.load(points, {f"T{i}": 1 for i in range(16)})
    plc.short = True
    samples, _ = await BlockReader(device(points), plc.request).read_all()
    assert len(samples) == 16
    assert all(s.quality == BAD and "short response" in s.reason for s in samples)


async def test_reader_uses_device_limits() -> None:
    points = [pt(f"hr:{i}", tag=f"T{i}") for i in range(20)]
    plc = FakePlc()
    plc.load(points, {f"T{i}": i for i in range(20)})
    reader = BlockReader(device(points, max_registers=8, max_gap=0), plc.request)
    samples, _ = await reader.read_all()
    assert plc.calls == ["hr:0+8", "hr:8+8", "hr:16+4"]
    assert [s.raw for s in samples] == list(range(20))
