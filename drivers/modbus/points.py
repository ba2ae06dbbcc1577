"""Point-table checks that only Modbus needs: the type fits the table, the point fits the
register space, and two points do not read the same register unless both say `overlap`."""

from __future__ import annotations

from agent.common.problems import Problems
from agent.model import Point
from drivers.modbus.address import BIT_TABLES, ModbusAddress


def check_point(point: Point) -> list[tuple[str, str]]:
    """(column, problem) pairs for one parsed point."""
    a: ModbusAddress = point.location
    ptype = point.type
    if a.table in BIT_TABLES and ptype != "bool":
        kind = "coils" if a.table == "co" else "discrete inputs"
        return [("type", f"{ptype} does not fit {a.table} ({kind} hold single bits); valid: bool")]
    if a.bit is not None and ptype != "bool":
        return [("type", f"{ptype} does not fit a single bit ({a}); valid: bool")]
    if a.index + a.width - 1 > 65535:
        return [("address", f"{ptype} at {a} runs past register 65535")]
    return []


def check_overlaps(points: list[Point], problems: Problems) -> None:
    """Two points of one device reading the same register are a mistake unless marked `overlap`."""
    owners: dict[tuple[str, int], list[Point]] = {}
    for p in points:
        a: ModbusAddress = p.location
        clash: tuple[Point, tuple[str, int]] | None = None
        for i in range(a.width):
            key = (a.table, a.index + i)
            for other in owners.get(key, []):
                b: ModbusAddress = other.location
                different_bits = a.bit is not None and b.bit is not None and a.bit != b.bit
                if clash is None and not different_bits and not (p.overlap and other.overlap):
                    clash = (other, key)
            owners.setdefault(key, []).append(p)
        if clash is not None:
            other, key = clash
            problems.add(
                p.file, p.line, "address",
                f"{p.tag} at {a} overlaps {other.tag} ({other.file}:{other.line}) on {key[0]}:{key[1]}; "
                "valid: separate registers, or overlap=yes on both points if intended",
            )
