"""`hazgate simulate`: serves every PLC of a scenario until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from agent.sim.modbus import start_tcp
from agent.sim.scenario import load_scenario


async def serve(scenario_path: str, ready: asyncio.Event | None = None) -> None:
    """Serve every PLC of the scenario until cancelled or SIGTERM."""
    plcs = load_scenario(scenario_path)
    started = time.monotonic()
    stoppers: list = []  # servers and serial ports, stopped in reverse order
    try:
        if tcp_plcs := [p for p in plcs if p.protocol == "modbus-tcp"]:
            await start_tcp(tcp_plcs, started, stoppers)
        if ua_plcs := [p for p in plcs if p.protocol == "opcua"]:
            from agent.sim.opcua import start_opcua  # here: asyncua only for a scenario with OPC UA

            await start_opcua(ua_plcs, started, stoppers)
        if rtu_plcs := [p for p in plcs if p.protocol == "modbus-rtu"]:
            from agent.sim.rtu import start_rtu  # here: pyserial only for a scenario with RTU

            await start_rtu(rtu_plcs, started, stoppers)
        if ready:
            ready.set()
        stop = asyncio.Event()  # SIGTERM ends the simulator cleanly: a virtual serial port's link goes too
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        for stop_one in reversed(stoppers):
            await stop_one()
