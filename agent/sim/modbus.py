"""The simulated plant: Modbus TCP PLCs whose registers follow a scenario file (OPC UA servers
and Modbus RTU slaves: agent/simulate_opcua.py and agent/simulate_rtu.py)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.model import Point
from agent.sim.listen import listen_error
from agent.sim.scenario import SimPlc
from drivers.modbus.codec import encode

log = logging.getLogger("hazgate.simulate")
SPARE = 16  # valid registers served past the last point, so block reads with gaps succeed
TABLE_FC = {1: "co", 2: "di", 3: "hr", 4: "ir"}


class PlcModel:
    """Computes a PLC's register images on demand from its scenario signals."""

    def __init__(self, plc: SimPlc, started: float):
        self.plc = plc
        self.started = started
        self.by_table: dict[str, dict[int, list[Point]]] = defaultdict(lambda: defaultdict(list))
        for p in plc.points:
            self.by_table[p.location.table][p.location.index].append(p)  # type: ignore[union-attr]

    def value(self, p: Point, t: float):
        sig = self.plc.signals.get(p.tag)
        eng = sig.value(t) if sig else (False if p.type == "bool" else 0.0)
        return p.to_raw(eng)

    def refresh(self, table: str, start_address: int, address: int, count: int, regs: list[int]) -> None:
        """Write current values of the requested range into the server's register list."""
        t = time.monotonic() - self.started
        points = self.by_table.get(table, {})
        if table in ("co", "di"):
            for idx, pts in points.items():  # bit tables are small: refresh all of them
                reg, bit = divmod(idx, 16)
                if reg - start_address < len(regs):
                    word = regs[reg - start_address] & ~(1 << bit)
                    regs[reg - start_address] = word | (int(bool(self.value(pts[0], t))) << bit)
            return
        lo = max(0, address - 3)  # a multi-register point may start before the range
        for idx in range(lo, address + count):
            pts = points.get(idx)
            if not pts:
                continue
            word_bits = 0
            for p in pts:
                raw = self.value(p, t)
                if p.location.bit is not None:  # type: ignore[union-attr]
                    word_bits |= int(bool(raw)) << p.location.bit  # type: ignore[union-attr]
                    regs[idx - start_address] = word_bits
                    continue
                for i, word in enumerate(encode(raw, p.type, p.byte_order)):
                    if 0 <= idx + i - start_address < len(regs):
                        regs[idx + i - start_address] = word


def _register_blocks(model: PlcModel, table: str) -> list[SimData]:
    """Valid register ranges of a table: 0 up to the last point + SPARE, minus refused addresses."""
    points = model.plc.points
    end = max((p.location.index + p.location.width for p in points if p.location.table == table), default=0) + SPARE  # type: ignore[union-attr]
    refused = sorted(a.index for a in model.plc.refuse if a.table == table)
    blocks, start = [], 0
    for r in [*refused, end]:
        if r > start:
            blocks.append(SimData(start, count=r - start, values=0, datatype=DataType.REGISTERS))
        start = r + 1
    return blocks


def build_device(model: PlcModel) -> SimDevice:
    def bits(table: str) -> list[SimData]:
        end = max((p.location.index for p in model.plc.points if p.location.table == table), default=0)  # type: ignore[union-attr]
        return [SimData(0, count=end // 16 + 2, values=0, datatype=DataType.BITS)]

    async def action(fc, start_address, address, count, registers, values):  # noqa: ANN001
        table = TABLE_FC.get(fc)
        if table and values is None:
            model.refresh(table, start_address, address, count, registers)
        return None

    return SimDevice(
        model.plc.unit,
        simdata=(bits("co"), bits("di"), _register_blocks(model, "hr"), _register_blocks(model, "ir")),
        action=action,
    )


async def start_tcp(plcs: list[SimPlc], started: float, stoppers: list) -> None:
    """Serve the Modbus TCP PLCs, one server per host and port (several units on one)."""
    by_endpoint: dict[tuple[str, int], list[SimDevice]] = defaultdict(list)
    for plc in plcs:
        by_endpoint[(plc.host, plc.port)].append(build_device(PlcModel(plc, started)))
    for (host, port), devices in by_endpoint.items():
        server = ModbusTcpServer(devices, address=(host, port))
        names = ", ".join(p.name for p in plcs if (p.host, p.port) == (host, port))
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:  # pymodbus: RuntimeError("Could not start listen ...")
            raise listen_error(host, port, f"Modbus TCP ({names})", exc) from exc
        stoppers.append(server.shutdown)
        log.info("serving Modbus TCP on %s:%d: %s", host, port, names)
