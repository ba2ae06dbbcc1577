"""Read planning: a point table becomes as few Modbus requests as the protocol allows.

Neighbouring addresses of one table merge into one block while the block stays within the
protocol's limits (125 registers, 2000 bits) and the unread gap between two points stays
within `max_gap`. A block the device refuses is split in two; a refused single point is
reported on its own, so one bad address costs only its own points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model import Point
from drivers.modbus.address import BIT_TABLES
from drivers.modbus.codec import BlockDecoder


@dataclass
class Block:
    table: str
    start: int
    count: int
    points: list[Point] = field(default_factory=list)
    decoder: BlockDecoder | None = field(default=None, repr=False, compare=False)  # built on first read

    def __str__(self) -> str:
        return f"{self.table}:{self.start}+{self.count}"


def plan_blocks(points: list[Point], max_gap: int = 8, max_registers: int = 125, max_bits: int = 2000) -> list[Block]:
    """Group points into block reads; every point lands in exactly one block."""
    blocks: list[Block] = []
    by_table: dict[str, list[Point]] = {}
    for p in points:
        assert p.location is not None
        by_table.setdefault(p.location.table, []).append(p)
    for table in ("co", "di", "hr", "ir"):
        limit = max_bits if table in BIT_TABLES else max_registers
        current: Block | None = None
        for p in sorted(by_table.get(table, []), key=lambda q: q.location.index):  # type: ignore[union-attr]
            start, end = p.location.index, p.location.index + p.location.width  # type: ignore[union-attr]
            if current is not None:
                cur_end = current.start + current.count
                if start - cur_end <= max_gap and max(end, cur_end) - current.start <= limit:
                    current.count = max(end, cur_end) - current.start
                    current.points.append(p)
                    continue
                blocks.append(current)
            current = Block(table, start, end - start, [p])
        if current is not None:
            blocks.append(current)
    return blocks


def split_block(block: Block) -> list[Block]:
    """Split a refused block into two smaller ones covering its points (empty if it holds one)."""
    if len(block.points) < 2:
        return []
    ordered = sorted(block.points, key=lambda q: q.location.index)  # type: ignore[union-attr]
    half = len(ordered) // 2
    return [_cover(block.table, ordered[:half]), _cover(block.table, ordered[half:])]


def _cover(table: str, points: list[Point]) -> Block:
    start = min(p.location.index for p in points)  # type: ignore[union-attr]
    end = max(p.location.index + p.location.width for p in points)  # type: ignore[union-attr]
    return Block(table, start, end - start, list(points))
