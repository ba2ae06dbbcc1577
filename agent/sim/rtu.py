"""The simulated plant's Modbus RTU slaves: every unit of one serial port answered by one server.

A port is either an existing serial device (`port`, e.g. one end of a socat pair, or a USB
adapter wired to the gateway's) or a virtual one (`link`): the simulator then makes a pair of
pseudo-terminals, relays bytes between them itself, serves on one and links the other at
`link` for the gateway. Nothing outlives the simulator: no helper process, the link goes with it.
Or the port is a serial device server's (`port = "tcp://127.0.0.1:4001"`, or `udp://`): the units
answer RTU frames over TCP (UDP), as behind a Moxa NPort in TCP Server mode.

Faults per unit, to commission and test a gateway against a bad bus: `silent` (the unit never
answers) and `garble` (it answers with a broken CRC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusUdpServer

from agent.sim.modbus import PlcModel, build_device
from agent.sim.scenario import SimPlc
from drivers.modbus.rtu import port_problem

log = logging.getLogger("hazgate.simulate")
SERIAL_KEYS = ("baudrate", "parity", "stopbits", "bytesize")


class VirtualPort:
    """Two pseudo-terminals joined back to back (what `socat pty pty` does), owned by this process."""

    def __init__(self, link: str):
        self.link = Path(link)
        self.fds: list[int] = []
        self.loop = asyncio.get_running_loop()

    def open(self) -> str:
        """Create the pair; return the simulator's end. The gateway's end appears at `link`."""
        if self.link.is_symlink():
            self.link.unlink()  # left by an earlier simulator that was killed
        elif self.link.exists():
            raise OSError(f"{self.link} exists and is not a link; valid: a free path for the virtual port")
        m_gw, s_gw = os.openpty()
        m_sim, s_sim = os.openpty()
        self.fds = [m_gw, s_gw, m_sim, s_sim]
        for fd in (s_gw, s_sim):  # raw and no echo, as a serial line; we hold the slave ends open,
            tty.setraw(fd)        # so a gateway closing and reopening its end never breaks the relay
        for fd in (m_gw, m_sim):
            os.set_blocking(fd, False)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.ttyname(s_gw), self.link)
        self.loop.add_reader(m_gw, self._relay, m_gw, m_sim)
        self.loop.add_reader(m_sim, self._relay, m_sim, m_gw)
        return os.ttyname(s_sim)

    @staticmethod
    def _relay(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
            if data:
                os.write(dst, data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # nobody reads the other side: the bytes are lost, as on a wire
            pass

    def close(self) -> None:
        if not self.fds:
            return
        for fd in (self.fds[0], self.fds[2]):
            self.loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            if self.link.is_symlink() and os.readlink(self.link) == os.ttyname(self.fds[1]):
                self.link.unlink()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _faults(silent: set[int], garble: set[int]) -> Callable[[bool, bytes], bytes]:
    """What a silent or garbling unit puts on the line instead of its answer."""

    def trace(sending: bool, data: bytes) -> bytes:
        if sending and data:
            if data[0] in silent:
                return b""
            if data[0] in garble:
                return data[:-1] + bytes([data[-1] ^ 0x5A])  # a broken CRC
        return data

    return trace


async def start_rtu(plcs: list[SimPlc], started: float, stoppers: list[Callable[[], Awaitable[None]]]) -> None:
    """Serve every serial port of the scenario; each started port's stop goes into `stoppers`."""
    by_port: dict[str, list[SimPlc]] = {}
    for plc in plcs:
        by_port.setdefault(plc.options["link"] or str(plc.options["server"] or plc.options["serial_port"]), []).append(plc)
    for where, group in by_port.items():
        settings = {k: group[0].options[k] for k in SERIAL_KEYS}
        for plc in group[1:]:
            theirs = {k: plc.options[k] for k in SERIAL_KEYS}
            if theirs != settings:
                raise OSError(f"{plc.name} and {group[0].name} share {where} but not their serial settings "
                              f"({theirs} vs {settings}); valid: the same baudrate, parity, stopbits, bytesize")
        silent = {p.unit for p in group if p.options["fault"] == "silent"}
        garble = {p.unit for p in group if p.options["fault"] == "garble"}
        # a unit not in the scenario never answers (ignore_missing_devices)
        common = {"ignore_missing_devices": True, "trace_packet": _faults(silent, garble) if silent or garble else None}
        devices = [build_device(PlcModel(p, started)) for p in group]
        shown, server = where, group[0].options["server"]
        if server is not None:
            kind = ModbusTcpServer if server.scheme == "tcp" else ModbusUdpServer
            modbus = kind(devices, framer=FramerType.RTU, address=(server.host, server.port), **common)
            shown = f"{server} (a serial device server)"
        else:
            if group[0].options["link"]:
                vport = VirtualPort(where)
                sim_end = vport.open()
                stoppers.append(_async(vport.close))
                shown = f"{where} (virtual, via {sim_end})"
            else:
                sim_end = where
                if problem := port_problem(where, settings):
                    raise OSError(problem)
            modbus = ModbusSerialServer(devices, port=sim_end, reconnect_delay=0, **common, **settings)
        await modbus.serve_forever(background=True)
        stoppers.append(modbus.shutdown)
        units = ", ".join(f"{p.name} (unit {p.unit}{'' if p.options['fault'] == 'none' else ', ' + p.options['fault']})"
                          for p in group)
        log.info("serving Modbus RTU on %s: %s", shown, units)


def _async(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()

    return run
