"""Executes a read plan against any Modbus transport and decodes the answers into samples."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.model import BAD, GOOD, Sample
from drivers.base import DeviceSpec
from drivers.modbus import answer
from drivers.modbus.codec import BlockDecoder
from drivers.modbus.plan import Block, plan_blocks, split_block

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "device failure", 5: "acknowledge", 6: "device busy", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
REFUSED = (2, 3)  # codes that mean "not this address": worth splitting the block

Request = Callable[[str, int, int], Awaitable[Any]]


def checked_client(client: Any) -> Any:
    """`client` (a pymodbus client) decoding read answers with the classes `answer.check` needs."""
    for cls in answer.ANSWERS:
        client.register(cls)
    return client


async def read_table(client: Any, table: str, start: int, count: int, unit: int) -> Any:
    """One read of `table` (hr, ir, co, di): the only pymodbus request drivers make. The answer is
    checked against the request here (pymodbus 3.16.1 does not: see answer.py); WrongAnswer if
    it is not the answer to this request."""
    req = answer.request(table, start, count, unit)
    resp = await client.execute(False, req)
    answer.check(req, resp)
    return resp


class BlockReader:
    """Reads all points of a device block by block; refines the plan when blocks are refused."""

    def __init__(self, device: DeviceSpec, request: Request):
        self.device = device
        self.request = request
        o = device.options
        self.blocks: list[Block] = plan_blocks(device.points, o.max_gap, o.max_registers, o.max_bits)
        self.requests = 0  # requests sent, for diagnostics and benchmarks
        self._answered: list[tuple[str, int, bytes]] = []  # (table, start, register bytes) of the last read_all

    @property
    def words(self) -> dict[tuple[str, int], int]:
        """(table, address) -> word, as the last read_all got it (for the commissioning tools;
        built when asked, not on every poll)."""
        out: dict[tuple[str, int], int] = {}
        for table, start, data in self._answered:
            out.update(((table, start + i), w) for i, (w,) in enumerate(struct.iter_unpack(">H", data)))
        return out

    async def read_all(self) -> tuple[list[Sample], str | None]:
        """Return samples for every point and, if the link broke, why."""
        samples: list[Sample] = []
        refined: list[Block] = []
        pending = list(self.blocks)
        link_lost: str | None = None
        self._answered = []
        while pending:
            block = pending.pop(0)
            if link_lost:
                samples.extend(Sample(p, None, BAD, link_lost) for p in block.points)
                refined.append(block)
                continue
            try:
                self.requests += 1
                resp = await self.request(block.table, block.start, block.count)
            except (ModbusIOException, TimeoutError):
                samples.extend(Sample(p, None, BAD, "timeout") for p in block.points)
                refined.append(block)
                continue
            except (ConnectionException, OSError) as exc:
                link_lost = f"connection lost: {exc}"
                samples.extend(Sample(p, None, BAD, link_lost) for p in block.points)
                refined.append(block)
                continue
            except ModbusException as exc:
                samples.extend(Sample(p, None, BAD, f"modbus error: {exc}") for p in block.points)
                refined.append(block)
                continue
            if resp.isError():
                code = getattr(resp, "exception_code", 0)
                parts = split_block(block) if code in REFUSED else []
                if parts:
                    pending[0:0] = parts
                    continue
                reason = f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
                samples.extend(Sample(p, None, BAD, reason) for p in block.points)
                refined.append(block)
                continue
            samples.extend(self._decode(block, resp))
            refined.append(block)
        self.blocks = refined
        return samples, link_lost

    def _decode(self, block: Block, resp: Any) -> list[Sample]:
        out: list[Sample] = []
        if block.table in ("co", "di"):
            bits = resp.bits
            if len(bits) < block.count:
                return [Sample(p, None, BAD, "decode error: short response") for p in block.points]
            for p in block.points:
                out.append(Sample(p, bool(bits[p.location.index - block.start])))  # type: ignore[union-attr]
            return out
        data = getattr(resp, "payload", None)  # answer.HoldingRegistersAnswer, InputRegistersAnswer
        if data is None:
            data = struct.pack(f">{len(resp.registers)}H", *resp.registers)
        if len(data) < 2 * block.count:
            return [Sample(p, None, BAD, "decode error: short response") for p in block.points]
        self._answered.append((block.table, block.start, data))
        if block.decoder is None:
            block.decoder = BlockDecoder(block.start, block.points)
        values = block.decoder.values(data)
        if not block.decoder.slow:
            return list(map(Sample, block.points, values))
        return [Sample(p, None, BAD, f"decode error: {v}") if isinstance(v, Exception) else Sample(p, v, GOOD)
                for p, v in zip(block.points, values, strict=True)]
